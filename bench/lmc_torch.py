#!/usr/bin/env python3
"""PyTorch side of alloy-lmc's benchmark and format check (bench/lmc_bench.sh, bench/lmc_torch_check.sh).

  lmc_torch.py bench --threads N [--samples S]      training throughput, samples/s (JSON on stdout)
  lmc_torch.py export OUT [--epochs E] [--seed S]    train an MLP in PyTorch, save it in alloy-lmc's
                                                     layout, print its test loss/accuracy (JSON)

Same set-up as `alloy-lmc train`: 784-512-512-10 ReLU MLP, inputs pixels / 255, mean cross-entropy,
SGD lr 0.05 momentum 0.9, batch 128. Needs Debian's python3-torch and dataset-fashion-mnist only.
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


def make_model(layers):
    mods = []
    for i in range(len(layers) - 1):
        lin = torch.nn.Linear(layers[i], layers[i + 1])
        if i + 2 < len(layers):
            torch.nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
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
    args = ap.parse_args()

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
