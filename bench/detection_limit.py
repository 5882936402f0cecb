#!/usr/bin/env python3
"""Detection limit of alloy-assay against a disguise, at several model sizes (issue 11).

Reads the robustness.csv of `robustness --limit` runs (one per model size), finds per family,
transform and parent delta the disguise strength at which the share of points called `merge`
falls to 0.5 (log-linear interpolation between the last setting with accuracy >= 0.5 and the
first below it), compares it with the prediction from the statistics, and writes a table
(markdown, stdout) and an SVG plot.

Prediction. Fitting the suspect's deviation y = w1 d1 + w2 d2 + e by least squares, with e a
disguise of norm k * ||m - b|| spread over the n elements of a tensor, the standard error of the
weight is se(w) = (||e|| / sqrt(n)) / ||d1 - d2||, so z(w) = w / se(w) = w * sqrt(n) * ||d1 - d2|| / ||e||.
With independent parent deltas of size delta, ||d1 - d2|| = sqrt(2) delta ||W|| and
||m - b|| = sqrt(w1^2 + w2^2) delta ||W|| = 0.714 delta ||W||, so z = 0.429 * sqrt(2) * sqrt(n) / (0.714 k)
for the smaller weight: it falls like 1/k and grows like sqrt(n), and delta cancels. The assay pools
the tensors of a component, so n is the component's parameter count: at a fixed verdict bar z*,
the limit k* = 0.85 sqrt(n) / z* grows like sqrt(parameters). For finetune, whose strength f is
relative to ||W||, k = f / (0.714 delta), so f* = 0.714 delta k* grows the same way. This script
predicts each larger size's limit from the smallest size's measured limit times
sqrt(P_large / P_small) (P: the model's parameters, counted from the architecture the bench
generates), and prints the absolute per-tensor value for reference.

Usage: bench/detection_limit.py OUT.svg HIDDEN=DIR [HIDDEN=DIR ...]   (DIR: a robustness --limit output)
"""
import csv
import math
import sys
from collections import defaultdict

DELTAS = [0.005, 0.01, 0.02, 0.05, 0.1]
COLORS = ["#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3"]
TRANSFORMS = ["noise-deviation", "finetune"]


def params(family, h, layers=4, vocab=256):
    # bench/robustness.cpp base_options: 4 heads, 2 kv heads (head_dim h/4), intermediate 2h; MoE: 4
    # routed experts of width h, a shared expert of width h and its gate, a router; untied lm_head.
    attention = h * h + 2 * h * (h // 2) + h * h
    if family == "moe":
        mlp = 4 * 3 * h * h + 3 * h * h + 4 * h + h
    else:
        mlp = 3 * h * (2 * h)
    return layers * (attention + mlp + 2 * h) + 2 * vocab * h + h


def limit(points):
    """points: [(strength, accuracy)] sorted by strength -> (value, kind) with kind '', '<' or '>'."""
    if not points:
        return None, ""
    if points[0][1] < 0.5:
        return points[0][0], "<"
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if a0 >= 0.5 > a1:
            t = (a0 - 0.5) / (a0 - a1)
            return math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))), ""
    return points[-1][0], ">"


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    out_svg = argv[1]
    runs = []
    for arg in argv[2:]:
        hidden, _, directory = arg.partition("=")
        runs.append((int(hidden), directory))
    runs.sort()
    # (hidden, family, transform, delta) -> strength -> [correct...]
    acc = defaultdict(lambda: defaultdict(list))
    for hidden, directory in runs:
        with open(directory + "/robustness.csv") as f:
            for row in csv.DictReader(f):
                if row["transform"] not in TRANSFORMS:
                    continue
                key = (hidden, row["family"], row["transform"], float(row["delta"]))
                acc[key][float(row["strength"])].append(row["correct"] == "true")
    limits = {}
    for key, by_s in acc.items():
        pts = sorted((s, sum(v) / len(v)) for s, v in by_s.items())
        limits[key] = limit(pts)
    sizes = [h for h, _ in runs]
    h0 = sizes[0]
    print("| transform | family | delta | " + " | ".join(
        f"hidden {h} ({params('dense', h) / 1e6:.2f}M dense)" for h in sizes) + " | predicted for " +
          ", ".join(str(h) for h in sizes[1:]) + " from hidden " + str(h0) + " |")
    print("|---|---|---|" + "---|" * len(sizes) + "---|")
    for t in TRANSFORMS:
        for fam in ("dense", "moe"):
            for d in DELTAS:
                cells, base = [], limits.get((h0, fam, t, d))
                for h in sizes:
                    v, kind = limits.get((h, fam, t, d), (None, ""))
                    cells.append("" if v is None else f"{kind}{v:.3g}")
                pred = []
                for h in sizes[1:]:
                    if base and base[0] is not None and base[1] == "":
                        pred.append(f"{base[0] * math.sqrt(params(fam, h) / params(fam, h0)):.3g}")
                    else:
                        pred.append("-")
                print(f"| {t} | {fam} | {d * 100:g}% | " + " | ".join(cells) + " | " + ", ".join(pred) + " |")
    print()
    n = 128 * 256
    print(f"Absolute per-tensor reference (n = {n}, a 128 x 256 MLP matrix, bar z* = 5): "
          f"k* = 0.429 * sqrt(2) * sqrt(n) / (0.714 * 5) = {0.429 * math.sqrt(2) * math.sqrt(n) / (0.714 * 5):.0f}")

    # SVG: one panel per transform; x = parameters (log), y = limit (log); measured solid (circles
    # dense, squares MoE), predicted dashed from the smallest size.
    W, H = 1020, 520
    pw, ph, top = 400, 340, 70
    lefts = [90, 590]
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="sans-serif" font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">detection limit: '
         'disguise at which accuracy falls to 0.5, against model size</text>',
         f'<text x="{W / 2}" y="40" text-anchor="middle" fill="#555">solid: measured (circles dense, squares MoE); '
         f'dashed: predicted from hidden {h0} x sqrt(parameter ratio); colour = parent delta</text>']
    xs = [params("dense", h) for h in sizes] + [params("moe", h) for h in sizes]
    xlo, xhi = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    for p, t in enumerate(TRANSFORMS):
        x0 = lefts[p]
        vals = [v for (h, fam, tt, d), (v, k) in limits.items() if tt == t and v]
        ylo = math.floor(math.log10(min(vals))) if vals else -2
        yhi = math.ceil(math.log10(max(vals) * 2.2)) if vals else 2
        if yhi <= ylo:
            yhi = ylo + 1
        X = lambda v: x0 + (math.log10(v) - xlo) / (xhi - xlo) * pw
        Y = lambda v: top + ph - (math.log10(v) - ylo) / (yhi - ylo) * ph
        s.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        label = "noise, x ||merge - base||" if t == "noise-deviation" else "further fine-tune, x ||W||"
        s.append(f'<text x="{x0 + pw / 2}" y="{top - 8}" text-anchor="middle" font-weight="bold">{t} ({label})</text>')
        for e in range(ylo, yhi + 1):
            y = Y(10 ** e)
            s.append(f'<line x1="{x0 - 4}" y1="{y}" x2="{x0}" y2="{y}" stroke="#333"/>')
            s.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{10 ** e:g}</text>')
        for h in sizes:
            for fam in ("dense", "moe"):
                x = X(params(fam, h))
                s.append(f'<line x1="{x}" y1="{top + ph}" x2="{x}" y2="{top + ph + 4}" stroke="#333"/>')
            s.append(f'<text x="{X(params("dense", h))}" y="{top + ph + 18}" text-anchor="middle">hidden {h}</text>')
        s.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 36}" text-anchor="middle">parameters (log; dense left, MoE '
                 'right of each size)</text>')
        for di, d in enumerate(DELTAS):
            for fam in ("dense", "moe"):
                pts = []
                for h in sizes:
                    v, kind = limits.get((h, fam, t, d), (None, ""))
                    if v is not None and kind == "":
                        pts.append((X(params(fam, h)), Y(v)))
                        if fam == "dense":
                            s.append(f'<circle cx="{pts[-1][0]}" cy="{pts[-1][1]}" r="4" fill="{COLORS[di]}"/>')
                        else:
                            s.append(f'<rect x="{pts[-1][0] - 4}" y="{pts[-1][1] - 4}" width="8" height="8" '
                                     f'fill="white" stroke="{COLORS[di]}" stroke-width="1.5"/>')
                if len(pts) > 1:
                    s.append('<polyline fill="none" stroke="' + COLORS[di] + '" stroke-width="2" points="' +
                             " ".join(f"{a},{b}" for a, b in pts) + '"/>')
                base = limits.get((h0, fam, t, d))
                if base and base[0] is not None and base[1] == "":
                    pp = [(X(params(fam, h)), Y(base[0] * math.sqrt(params(fam, h) / params(fam, h0)))) for h in sizes]
                    s.append('<polyline fill="none" stroke="' + COLORS[di] + '" stroke-width="1.5" '
                             'stroke-dasharray="6,4" points="' + " ".join(f"{a},{b}" for a, b in pp) + '"/>')
    lx = 90
    for di, d in enumerate(DELTAS):
        s.append(f'<line x1="{lx}" y1="{H - 30}" x2="{lx + 24}" y2="{H - 30}" stroke="{COLORS[di]}" stroke-width="3"/>')
        s.append(f'<text x="{lx + 30}" y="{H - 26}">parent delta {d * 100:g}%</text>')
        lx += 170
    s.append("</svg>")
    tmp = out_svg + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(s) + "\n")
    import os
    os.replace(tmp, out_svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
