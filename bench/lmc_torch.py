#!/usr/bin/env python3
"""PyTorch side of alloy-lmc's benchmark and format check (bench/lmc_bench.sh, bench/lmc_torch_check.sh).

  lmc_torch.py bench --threads N [--samples S]      training throughput, samples/s (JSON on stdout)
  lmc_torch.py export OUT [--epochs E] [--seed S]    train an MLP in PyTorch, save it in alloy-lmc's
                                                     layout, print its test loss/accuracy (JSON)
  lmc_torch.py reference OUT_DIR [--seeds 1 2] [--init he|torch] [--threads N]
                                                     the classroom's exercises 1-2 in PyTorch + SciPy:
                                                     two seeds, the naive straight path and the path
                                                     after weight matching (Git Re-Basin, with
                                                     scipy.optimize.linear_sum_assignment), their
                                                     barriers (JSON on stdout; the models are saved
                                                     in OUT_DIR in alloy-lmc's layout)

Same set-up as `alloy-lmc train`: 784-512-512-10 ReLU MLP, inputs pixels / 255, mean cross-entropy,
SGD lr 0.05 momentum 0.9, batch 128, a new sample order every epoch. Needs Debian's python3-torch and
dataset-fashion-mnist (and python3-scipy for `reference`) only.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, rank = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 8
    dims = struct.unpack(">" + "I" * rank, raw[4:4 + 4 * rank])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load(split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(DATA, prefix + "-images-idx3-ubyte.gz")).reshape(-1, 784)
    y = read_idx(os.path.join(DATA, prefix + "-labels-idx1-ubyte.gz"))
    return torch.from_numpy(x.astype(np.float32) / np.float32(255.0)), torch.from_numpy(y.astype(np.int64))


def make_model(layers, init="hidden-he"):
    """init: "he" = alloy-lmc's init_mlp (He normal, std sqrt(2 / fan_in), on every layer; zero
    biases); "torch" = nn.Linear's default (uniform +-1/sqrt(fan_in) weights and biases);
    "hidden-he" = He normal on the hidden layers only, zero biases (the benchmark's model)."""
    mods = []
    for i in range(len(layers) - 1):
        lin = torch.nn.Linear(layers[i], layers[i + 1])
        if init == "he" or (init == "hidden-he" and i + 2 < len(layers)):
            torch.nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        if init != "torch":
            torch.nn.init.zeros_(lin.bias)
        mods.append(lin)
        if i + 2 < len(layers):
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def train_epochs(model, x, y, epochs, seed, limit=None, timed=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0] if limit is None else min(limit, x.shape[0])
    seconds = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        start = time.perf_counter()
        for b in range(0, n, 128):
            idx = order[b:b + 128]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - start
    return seconds, n * epochs


def save_alloy(model, out):
    os.makedirs(out, exist_ok=True)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    tensors = []
    for i, lin in enumerate(linears):
        tensors.append((f"layers.{i}.weight", lin.weight.detach().contiguous().numpy().astype("<f4")))
        tensors.append((f"layers.{i}.bias", lin.bias.detach().contiguous().numpy().astype("<f4")))
    header, offset, blobs = {}, 0, []
    for name, arr in tensors:
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"model_type": "mlp", "architectures": ["MLP"], "layer_sizes": sizes, "activation": "relu",
                   "exported_by": "bench/lmc_torch.py"}, f, indent=2)


def linears(model):
    return [m for m in model if isinstance(m, torch.nn.Linear)]


def get_params(model):
    """[(W [out, in], b [out])] as float64 numpy arrays."""
    return [(l.weight.detach().double().numpy().copy(), l.bias.detach().double().numpy().copy())
            for l in linears(model)]


def set_params(model, params):
    with torch.no_grad():
        for lin, (w, b) in zip(linears(model), params):
            lin.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float32)))


def evaluate(model, x, y, chunk=10000):
    """Mean cross-entropy (natural log, accumulated in double) and accuracy."""
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            logits = model(x[s:s + chunk]).double()
            loss += torch.nn.functional.cross_entropy(logits, y[s:s + chunk], reduction="sum").item()
            correct += (logits.argmax(1) == y[s:s + chunk]).sum().item()
    return loss / x.shape[0], correct / x.shape[0]


def weight_matching(pa, pb, seed=0, max_iter=100):
    """Git Re-Basin weight matching (Ainsworth et al. 2023, Algorithm 1) for an MLP: one permutation
    per hidden layer; coordinate descent in a random order of the layers, each step a linear
    assignment problem (scipy.optimize.linear_sum_assignment) on the summed inner products of the
    unit's incoming weights and bias and outgoing weights, until a full pass improves nothing.
    Returns perms (perm[i] = B's unit put at position i) and the number of passes."""
    from scipy.optimize import linear_sum_assignment
    hidden = len(pa) - 1
    perms = [np.arange(pa[l][0].shape[0]) for l in range(hidden)]
    rng = np.random.default_rng(seed)
    passes = 0
    for _ in range(max_iter):
        passes += 1
        progress = False
        for l in rng.permutation(hidden):
            wa, ba = pa[l]
            wb, bb = pb[l]
            if l > 0:
                wb = wb[:, perms[l - 1]]  # B's inputs in the order of A's previous layer
            sim = wa @ wb.T + np.outer(ba, bb)
            wa_next, wb_next = pa[l + 1][0], pb[l + 1][0]
            if l + 1 < hidden:
                wb_next = wb_next[perms[l + 1], :]
            sim += wa_next.T @ wb_next
            _, col = linear_sum_assignment(sim, maximize=True)
            old = sim[np.arange(len(col)), perms[l]].sum()
            new = sim[np.arange(len(col)), col].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
            perms[l] = col
        if not progress:
            break
    return perms, passes


def permute(pb, perms):
    out = []
    for l, (w, b) in enumerate(pb):
        if l < len(perms):
            w, b = w[perms[l], :], b[perms[l]]
        if l > 0:
            w = w[:, perms[l - 1]]
        out.append((w, b))
    return out


def barrier(ts, values, drop=False):
    """max_t [L(t) - ((1 - t) L(0) + t L(1))] (drop: the largest fall below the line instead)."""
    worst = -float("inf")
    for t, v in zip(ts, values):
        line = (1 - t) * values[0] + t * values[-1]
        worst = max(worst, line - v if drop else v - line)
    return worst


def path(model, pa, pb, data, points):
    """Loss and accuracy on the straight line (1 - t) A + t B, interpolated in float64 and stored
    in float32 as alloy-lmc's linear merge does."""
    (x, y), (xt, yt) = data
    rows = []
    for i in range(points):
        t = i / (points - 1)
        set_params(model, [((1 - t) * wa + t * wb, (1 - t) * ba + t * bb) for (wa, ba), (wb, bb) in zip(pa, pb)])
        test_loss, test_acc = evaluate(model, xt, yt)
        train_loss, train_acc = evaluate(model, x, y)
        rows.append({"t": t, "test_loss": test_loss, "test_accuracy": test_acc,
                     "train_loss": train_loss, "train_accuracy": train_acc})
        print(f"  t = {t:.2f}: test loss {test_loss:.4f} accuracy {100 * test_acc:.2f}%", file=sys.stderr)
    ts = [r["t"] for r in rows]
    return {"points": rows,
            "loss_barrier": barrier(ts, [r["test_loss"] for r in rows]),
            "accuracy_barrier": barrier(ts, [r["test_accuracy"] for r in rows], drop=True),
            "train_loss_barrier": barrier(ts, [r["train_loss"] for r in rows]),
            "train_accuracy_barrier": barrier(ts, [r["train_accuracy"] for r in rows], drop=True)}


def reference(args):
    torch.set_num_threads(args.threads)
    layers = [784] + args.layers + [10]
    x, y = load("train")
    xt, yt = load("test")
    os.makedirs(args.out, exist_ok=True)
    doc = {"framework": "pytorch " + torch.__version__, "threads": args.threads, "layer_sizes": layers,
           "epochs": args.epochs, "lr": 0.05, "momentum": 0.9, "batch": 128, "init": args.init,
           "seeds": args.seeds, "endpoints": []}
    params = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = make_model(layers, args.init)
        start = time.perf_counter()
        train_epochs(model, x, y, args.epochs, seed)
        seconds = time.perf_counter() - start
        test_loss, test_acc = evaluate(model, xt, yt)
        train_loss, train_acc = evaluate(model, x, y)
        print(f"seed {seed}: test loss {test_loss:.4f} accuracy {100 * test_acc:.2f}% ({seconds:.0f} s)",
              file=sys.stderr)
        doc["endpoints"].append({"seed": seed, "test_loss": test_loss, "test_accuracy": test_acc,
                                 "train_loss": train_loss, "train_accuracy": train_acc,
                                 "train_seconds": seconds})
        save_alloy(model, os.path.join(args.out, f"torch_seed{seed}"))
        params.append(get_params(model))
    pa, pb = params
    start = time.perf_counter()
    perms, passes = weight_matching(pa, pb)
    doc["weight_matching"] = {"passes": passes, "seconds": time.perf_counter() - start,
                              "units_moved": int(sum((p != np.arange(len(p))).sum() for p in perms)),
                              "units": int(sum(len(p) for p in perms))}
    pb_wm = permute(pb, perms)
    model = make_model(layers, args.init)
    set_params(model, pb_wm)
    save_alloy(model, os.path.join(args.out, f"torch_seed{args.seeds[1]}_wm"))
    check_loss, _ = evaluate(model, xt, yt)
    doc["weight_matching"]["aligned_test_loss"] = check_loss  # B's function: B's loss up to rounding
    data = ((x, y), (xt, yt))
    print("naive path", file=sys.stderr)
    doc["naive"] = path(model, pa, pb, data, args.points)
    print("path after weight matching", file=sys.stderr)
    doc["weight_matched"] = path(model, pa, pb_wm, data, args.points)
    print(json.dumps(doc, indent=2))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--threads", type=int, required=True)
    b.add_argument("--samples", type=int, default=60000)
    e = sub.add_parser("export")
    e.add_argument("out")
    e.add_argument("--epochs", type=int, default=1)
    e.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("reference")
    r.add_argument("out")
    r.add_argument("--seeds", type=int, nargs=2, default=[1, 2])
    r.add_argument("--layers", type=int, nargs="+", default=[512, 512])
    r.add_argument("--epochs", type=int, default=8)
    r.add_argument("--init", choices=["he", "torch"], default="he")
    r.add_argument("--points", type=int, default=21)
    r.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    if args.cmd == "reference":
        return reference(args)

    if args.cmd == "bench":
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        x, y = load("train")
        model = make_model([784, 512, 512, 10])
        train_epochs(model, x, y, 1, 0, limit=2048)  # warm-up
        seconds, samples = train_epochs(model, x, y, 1, 1, limit=args.samples)
        print(json.dumps({"framework": "pytorch " + torch.__version__, "threads": args.threads,
                          "samples": samples, "seconds": seconds, "samples_per_second": samples / seconds}))
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(args.seed)
        x, y = load("train")
        xt, yt = load("test")
        model = make_model([784, 512, 512, 10])
        train_epochs(model, x, y, args.epochs, args.seed)
        with torch.no_grad():
            logits = model(xt).double()
            loss = torch.nn.functional.cross_entropy(logits, yt).item()
            acc = (logits.argmax(1) == yt).double().mean().item()
        save_alloy(model, args.out)
        print(json.dumps({"out": args.out, "test_loss": loss, "test_accuracy": acc}))


if __name__ == "__main__":
    sys.exit(main())
