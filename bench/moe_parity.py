#!/usr/bin/env python3
"""MoE experts: per-expert versus fused processing, the mergekit-parity study (issue 10, item 4).

Run with Debian's Python and python3-numpy (no other dependency; reference and cross-check only,
no test needs it):

    /usr/bin/python3 bench/moe_parity.py [--seed N] [--experts E] [--hidden H] [--inter I]

mergekit at commit a6e4028 (the one that made /work/shared/golden) loads MoE checkpoints through
Transformers v5's conversion mapping: a checkpoint that stores one tensor per expert
(`mlp.experts.N.gate_proj/up_proj/down_proj.weight`, or Mixtral's `block_sparse_moe.experts.N.w1/w3/w2`)
is read as the fused model-layout tensors `mlp.experts.gate_up_proj` [E, 2I, H] (per expert the gate
rows, then the up rows) and `mlp.experts.down_proj` [E, H, I], and each merge method then runs ONCE
on each fused tensor. alloy-merge runs the method on each tensor as stored, i.e. once per expert
and projection when the checkpoint stores experts apart. This script builds one synthetic MoE layer
(a base and two fine-tunes whose per-expert training strength differs, some experts barely
trained), runs the methods below both ways, and prints how far apart the two results are.

The formulas are written here from mergekit's behaviour as read (not copied) in
mergekit/sparsify.py, mergekit/merge_methods/{slerp,generalized_task_arithmetic,model_stock,
nuslerp,multislerp}.py at a6e4028. Notation: x_i the models' tensors, b the base, d_i = x_i - b,
w_i the weights, "the tensor" = whatever array the method is called on (one expert's [I, H] matrix,
or the fused [E, 2I, H] stack).

  linear           out = sum_i w_i x_i / sum_i w_i                              (element-wise)
  task_arithmetic  out = b + sum_i w_i d_i                                      (element-wise)
  slerp(t)         v0 = x_A, v1 = x_B; c = <v0/|v0|, v1/|v1|> over the WHOLE tensor;
                   |c| > 0.9995: out = (1-t) v0 + t v1; else theta = acos(c),
                   out = sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1
  ties             k = int(density * numel(tensor)); keep the k largest |d_i| of the WHOLE tensor;
                   s = sign(sum_i w_i d_i') (>= 0 counts as +); m_i = [sign(w_i d_i') == s];
                   out = b + sum_i w_i d_i' m_i / sum_i w_i m_i  (a zero divisor becomes 1)
  dare_ties        d_i' = d_i * bern(density) * r_i, r_i = sum|d_i| / sum|d_i kept| over the WHOLE
                   tensor (rescale = l1); sign election as ties; no normalisation: out = b + sum w d' m
  breadcrumbs_ties in ascending |d_i| over the WHOLE tensor drop the n_bot smallest and the
                   n_top = int(gamma N) largest (n_bot = N - int(density N) - n_top); ties' election,
                   no normalisation, no rescale
  della            within each fibre along dim 1 (a row [.., :] of a matrix; of a 3-D [E, 2I, H]
                   tensor the 2I axis for each (expert, column)), rank r in 1..L by ascending |d|,
                   p = (density - eps) + (r - 1)/(L - 1) * 2 eps, keep with probability p, l1 rescale
                   over the WHOLE tensor, ties' election, normalised as ties
  model_stock      (filter_wise false) o_i = x_i - b flattened over the WHOLE tensor;
                   c = mean over pairs of cos(o_i, o_j); t = N c / (1 + (N-1) c);
                   out = t * mean_i x_i + (1 - t) b.  filter_wise true: the same per row (last dim)
  nuslerp          (base given) out = b + slerp of d_A, d_B with t = w_B / (w_A + w_B), the angle
                   over the whole tensor (nuslerp_flatten, the default), else per fibre along dim 0
                   (nuslerp_row_wise: of a 3-D tensor that is the EXPERT axis), else per fibre
                   along the last dim ("rows": the same fibres in both layouts)
  multislerp       (base given) u_i = d_i/|d_i| over the WHOLE tensor; mu = normalise(sum w_i u_i);
                   tangent T = sum w_i (u_i - <u_i, mu> mu); res = mu cos|T| + T sin|T|/|T|;
                   out = b + res * sum_i w_i |d_i|   (w normalised to sum 1)

Random masks (dare_ties, della) use the SAME uniform draws in both layouts (drawn in the fused
layout and sliced per expert), so the figures show only what the grouping itself changes; in real
runs torch's draws also differ between the layouts (mergekit's masks are not reproducible anyway).
"""

import argparse
import math
import sys

import numpy as np

F = np.float32


# ----------------------------------------------------------------------------------------------
# The methods, each on one tensor of any shape (mergekit's per-tensor semantics).


def linear(base, xs, p):
    w = p["weights"]
    return sum(F(wi) * x for wi, x in zip(w, xs)) / F(sum(w))


def task_arithmetic(base, xs, p):
    return base + sum(F(wi) * (x - base) for wi, x in zip(p["weights"], xs))


def slerp(base, xs, p):
    t = p["t"]
    v0, v1 = xs
    a = v0.astype(np.float64).ravel()
    b = v1.astype(np.float64).ravel()
    c = float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    if abs(c) > 0.9995:
        return ((1 - t) * v0 + t * v1).astype(F)
    theta = math.acos(c)
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return (s0 * v0.astype(np.float64) + s1 * v1.astype(np.float64)).astype(F)


def _keep_top(delta, density):
    k = int(density * delta.size)
    order = np.argsort(-np.abs(delta).ravel(), kind="stable")
    mask = np.zeros(delta.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(delta.shape)


def _keep_outliers(delta, density, gamma):
    n = delta.size
    n_top = int(gamma * n)
    n_bot = n - int(density * n) - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    order = np.argsort(np.abs(delta).ravel(), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[n_bot:n - n_top]] = True
    return mask.reshape(delta.shape)


def _della_keep(delta, u, density, eps):
    shape = delta.shape
    d = delta if delta.ndim >= 2 else delta[None, :]
    uu = u if u.ndim >= 2 else u[None, :]
    length = d.shape[1]
    ranks = np.argsort(np.argsort(np.abs(d), axis=1, kind="stable"), axis=1, kind="stable") + 1
    rank_norm = np.clip((ranks - 1) / (length - 1), 0, 1)
    prob = (density - eps) + rank_norm * 2 * eps
    return (uu < prob).reshape(shape)


def _l1_rescale(delta, mask):
    kept = delta * mask
    before = np.abs(delta).astype(np.float64).sum()
    after = np.abs(kept).astype(np.float64).sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * F(before / after)


def _ties_family(base, xs, p, sparsify, rescale, normalize):
    w = p["weights"]
    deltas = []
    for i, x in enumerate(xs):
        d = x - base
        mask = sparsify(d, i)
        deltas.append(_l1_rescale(d, mask) if rescale else d * mask)
    wd = np.stack([F(wi) * d for wi, d in zip(w, deltas)])
    sign = np.where(wd.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(wd) == sign
    mixed = (wd * agree).sum(axis=0)
    if normalize:
        div = (np.array(w, dtype=F).reshape((-1,) + (1,) * base.ndim) * agree).sum(axis=0)
        div[div == 0] = 1
        mixed = mixed / div
    return (base + mixed).astype(F)


def ties(base, xs, p):
    return _ties_family(base, xs, p, lambda d, i: _keep_top(d, p["density"]), False, True)


def dare_ties(base, xs, p):
    return _ties_family(base, xs, p, lambda d, i: p["u"][i] < p["density"], True, False)


def breadcrumbs_ties(base, xs, p):
    return _ties_family(base, xs, p, lambda d, i: _keep_outliers(d, p["density"], p["gamma"]),
                        False, False)


def della(base, xs, p):
    return _ties_family(base, xs, p,
                        lambda d, i: _della_keep(d, p["u"][i], p["density"], p["epsilon"]),
                        True, True)


def model_stock(base, xs, p):
    filter_wise = p.get("filter_wise", False)
    b = base.astype(np.float64)
    if filter_wise:
        offs = [x.astype(np.float64) - b for x in xs]
        axis, keep = -1, True
    else:
        offs = [(x.astype(np.float64) - b).ravel() for x in xs]
        axis, keep = None, False
    cos = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            num = (offs[i] * offs[j]).sum(axis=axis, keepdims=keep)
            den = np.linalg.norm(offs[i], axis=axis, keepdims=keep) * \
                np.linalg.norm(offs[j], axis=axis, keepdims=keep)
            cos.append(np.clip(num / np.maximum(den, 1e-6), -1, 1))
    c = np.mean(cos, axis=0)
    n = len(xs)
    t = n * c / (1 + (n - 1) * c)
    avg = sum(x.astype(np.float64) for x in xs) / n
    return (t * avg + (1 - t) * b).astype(F)


def nuslerp(base, xs, p):
    w = p["weights"]
    t = w[1] / sum(w)
    v0 = (xs[0] - base).astype(np.float64)
    v1 = (xs[1] - base).astype(np.float64)
    shape = v0.shape
    mode = p.get("mode", "rows")
    if mode == "flatten":
        v0, v1 = v0.reshape(1, -1), v1.reshape(1, -1)
    elif mode == "row_wise":
        v0, v1 = np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)
    u0 = v0 / np.maximum(np.linalg.norm(v0, axis=-1, keepdims=True), 1e-7)
    u1 = v1 / np.maximum(np.linalg.norm(v1, axis=-1, keepdims=True), 1e-7)
    theta = np.arccos(np.clip((u0 * u1).sum(-1, keepdims=True), -1, 1))
    s = np.sin(theta)
    res = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.where(s == 0, 1, s)
    colinear = np.abs(s) < 1e-8
    res = np.where(colinear, (1 - t) * v0 + t * v1, res)
    if mode == "row_wise":
        res = np.swapaxes(res, 0, -1)
    return (base + res.reshape(shape)).astype(F)


def multislerp(base, xs, p):
    w = np.array(p["weights"], dtype=np.float64)
    w = w / w.sum()
    d = np.stack([(x - base).astype(np.float64).ravel() for x in xs])
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    unit = d / (norms + 1e-8)
    mean = (unit * w[:, None]).sum(0)
    mean = mean / np.linalg.norm(mean)
    tangent = ((unit - (unit @ mean)[:, None] * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tangent) + 1e-8
    res = mean * math.cos(tn) + tangent * (math.sin(tn) / tn)
    res = res * float((norms[:, 0] * w).sum())
    return (base + res.reshape(base.shape)).astype(F)


# ----------------------------------------------------------------------------------------------
# The two ways of applying a method to one MoE layer.


def per_expert(method, layer, params):
    """One call per expert and projection: gate [I, H], up [I, H], down [H, I]."""
    base, models = layer
    e_count, two_i, _ = base["gate_up"].shape
    inter = two_i // 2
    out = {"gate_up": np.empty_like(base["gate_up"]), "down": np.empty_like(base["down"])}
    for e in range(e_count):
        for name, rows in (("gate", slice(0, inter)), ("up", slice(inter, two_i))):
            sub = dict(params)
            if "u_gate_up" in params:
                sub["u"] = [u[e, rows] for u in params["u_gate_up"]]
            out["gate_up"][e, rows] = method(base["gate_up"][e, rows],
                                             [m["gate_up"][e, rows] for m in models], sub)
        sub = dict(params)
        if "u_down" in params:
            sub["u"] = [u[e] for u in params["u_down"]]
        out["down"][e] = method(base["down"][e], [m["down"][e] for m in models], sub)
    return out


def fused(method, layer, params):
    """One call per fused tensor, as mergekit a6e4028 does: gate_up [E, 2I, H], down [E, H, I]."""
    base, models = layer
    out = {}
    for name in ("gate_up", "down"):
        sub = dict(params)
        if "u_" + name in params:
            sub["u"] = params["u_" + name]
        out[name] = method(base[name], [m[name] for m in models], sub)
    return out


# ----------------------------------------------------------------------------------------------
# The synthetic layer.


def make_layer(rng, experts, hidden, inter, strength_a, strength_b, rho):
    """A base MoE layer and two fine-tunes. Fine-tune i changes expert e by
    strength_i[e] * std * (sqrt(rho) S + sqrt(1 - rho) N_i), S and N_i unit Laplace noise (S shared
    by both fine-tunes: siblings of one base agree in part), so the delta's size relative to the
    weights is strength_i[e]: some experts trained hard, some barely."""
    std = 0.02
    base = {"gate_up": rng.normal(0, std, (experts, 2 * inter, hidden)).astype(F),
            "down": rng.normal(0, std, (experts, hidden, inter)).astype(F)}
    shared = {name: rng.laplace(0, 1 / math.sqrt(2), arr.shape) for name, arr in base.items()}
    models = []
    for strength in (strength_a, strength_b):
        m = {}
        for name, arr in base.items():
            scale = (np.asarray(strength, dtype=np.float64) * std).reshape(
                (-1,) + (1,) * (arr.ndim - 1))
            own = rng.laplace(0, 1 / math.sqrt(2), arr.shape)
            delta = (math.sqrt(rho) * shared[name] + math.sqrt(1 - rho) * own) * scale
            m[name] = (arr + delta).astype(F)
        models.append(m)
    return base, models


def compare(layer, out_pe, out_fu):
    """Relative difference of the merges' changes: |D_fused - D_per_expert| / |D_per_expert| with
    D = out - base, over the layer and per expert; the same difference relative to the merged
    weights |out_per_expert|; the fraction of elements that differ."""
    base, _ = layer
    differ = total = 0
    w_den = 0.0
    e_count = base["gate_up"].shape[0]
    e_num = np.zeros(e_count)
    e_den = np.zeros(e_count)
    for name in ("gate_up", "down"):
        a = out_pe[name].astype(np.float64) - base[name]
        b = out_fu[name].astype(np.float64) - base[name]
        axes = tuple(range(1, a.ndim))
        e_num += ((a - b) ** 2).sum(axis=axes)
        e_den += (a ** 2).sum(axis=axes)
        w_den += float((out_pe[name].astype(np.float64) ** 2).sum())
        differ += int((out_pe[name] != out_fu[name]).sum())
        total += a.size
    num, den = e_num.sum(), e_den.sum()
    per_e = np.sqrt(e_num / np.maximum(e_den, 1e-300))
    return (math.sqrt(num / max(den, 1e-300)), per_e, math.sqrt(num / w_den),
            differ / total)


def kept_fraction(layer, density):
    """ties' kept share of each expert's deltas (model A's gate_up), per expert vs fused."""
    base, models = layer
    d = models[0]["gate_up"] - base["gate_up"]
    fused_mask = _keep_top(d, density)
    inter = d.shape[1] // 2
    pe = []
    for e in range(d.shape[0]):
        pe.append(np.mean([_keep_top(d[e, :inter], density).mean(),
                           _keep_top(d[e, inter:], density).mean()]))
    return np.array(pe), fused_mask.reshape(d.shape[0], -1).mean(axis=1)


def slerp_cosines(layer):
    base, models = layer
    a, b = models[0]["gate_up"].astype(np.float64), models[1]["gate_up"].astype(np.float64)
    cos = lambda x, y: float((x * y).sum() / (np.linalg.norm(x) * np.linalg.norm(y)))
    inter = a.shape[1] // 2
    return [cos(a[e, :inter], b[e, :inter]) for e in range(a.shape[0])], cos(a, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--inter", type=int, default=64)
    ap.add_argument("--rho", type=float, default=0.3,
                    help="share of the fine-tunes' delta variance they have in common")
    args = ap.parse_args()

    e = args.experts
    # Relative delta strength per expert: uneven (hard-trained, medium, barely trained) and even.
    uneven_a = [0.10, 0.08, 0.05, 0.03, 0.02, 0.01, 0.003, 0.001][:e] + [0.01] * max(0, e - 8)
    uneven_b = [0.02, 0.10, 0.01, 0.05, 0.003, 0.08, 0.001, 0.03][:e] + [0.01] * max(0, e - 8)
    scenarios = [("uneven", uneven_a, uneven_b), ("even", [0.05] * e, [0.05] * e)]

    methods = [
        ("linear 0.5/0.5", linear, {"weights": [0.5, 0.5]}),
        ("task_arithmetic", task_arithmetic, {"weights": [0.5, 0.5]}),
        ("slerp t=0.5", slerp, {"t": 0.5}),
        ("ties d=0.5", ties, {"weights": [0.5, 0.5], "density": 0.5}),
        ("dare_ties d=0.5", dare_ties, {"weights": [0.5, 0.5], "density": 0.5, "rand": True}),
        ("breadcrumbs_ties", breadcrumbs_ties,
         {"weights": [0.5, 0.5], "density": 0.5, "gamma": 0.01}),
        ("della d=0.5 e=0.15", della,
         {"weights": [0.5, 0.5], "density": 0.5, "epsilon": 0.15, "rand": True}),
        ("model_stock", model_stock, {}),
        ("model_stock filter_wise", model_stock, {"filter_wise": True}),
        ("nuslerp (default flatten)", nuslerp, {"weights": [0.5, 0.5], "mode": "flatten"}),
        ("nuslerp rows", nuslerp, {"weights": [0.5, 0.5], "mode": "rows"}),
        ("nuslerp row_wise", nuslerp, {"weights": [0.5, 0.5], "mode": "row_wise"}),
        ("multislerp (base)", multislerp, {"weights": [0.5, 0.5]}),
    ]

    print(f"MoE layer: {e} experts, hidden {args.hidden}, intermediate {args.inter}; "
          f"gate_up [{e}, {2 * args.inter}, {args.hidden}], down [{e}, {args.hidden}, {args.inter}]; "
          f"shared delta share rho {args.rho}; seed {args.seed}")
    print("D = merged - base; dD = D(fused) - D(per expert); expert columns: |dD|/|D| of the "
          "expert most and least changed")
    for label, sa, sb in scenarios:
        rng = np.random.default_rng(args.seed)
        layer = make_layer(rng, e, args.hidden, args.inter, sa, sb, args.rho)
        u_rng = np.random.default_rng(args.seed + 1000)
        draws = {"u_gate_up": [u_rng.random(layer[0]["gate_up"].shape) for _ in range(2)],
                 "u_down": [u_rng.random(layer[0]["down"].shape) for _ in range(2)]}
        print(f"\nscenario '{label}': relative delta strength per expert, A {sa}, B {sb}")
        print(f"{'method':26s} {'|dD|/|D|':>10s} {'max expert':>11s} {'min expert':>11s} "
              f"{'|dD|/|W|':>10s} {'elements differing':>19s}")
        for name, fn, params in methods:
            p = dict(params)
            if p.pop("rand", False):
                p.update(draws)
            out_pe = per_expert(fn, layer, p)
            out_fu = fused(fn, layer, p)
            rel, per_e, rel_w, frac = compare(layer, out_pe, out_fu)
            print(f"{name:26s} {rel:10.2e} {per_e.max():11.2e} {per_e.min():11.2e} "
                  f"{rel_w:10.2e} {100 * frac:18.1f}%")
        pe, fu = kept_fraction(layer, 0.5)
        print("ties kept share of A's gate_up deltas, per expert processing: "
              + " ".join(f"{x:.2f}" for x in pe))
        print("ties kept share of A's gate_up deltas, fused processing:      "
              + " ".join(f"{x:.2f}" for x in fu))
        cos_e, cos_f = slerp_cosines(layer)
        print("slerp cos(A, B) of each expert's gate: " + " ".join(f"{c:.5f}" for c in cos_e)
              + f"; fused gate_up: {cos_f:.5f} (lerp above 0.9995)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
