#!/usr/bin/env python3
"""An independent safetensors checker that follows only the public format description.

It shares no code with alloy: 8-byte little-endian header length, a JSON object of tensors with
dtype/shape/data_offsets (plus optional __metadata__), offsets contiguous from 0, the buffer ending
at the last tensor. Prints {"tensors": {name: {"dtype", "shape", "sha256"}}, "metadata": {...}} as
JSON, or exits 1 with a reason.

Usage: spec_reader.py FILE [FILE ...]
"""
import hashlib
import json
import struct
import sys

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64,
        "U64": 64, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F8_E4M3": 8,
        "F8_E5M2": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6,
        "F6_E3M2": 6}


def check(path, out):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("too small")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > 100_000_000 or 8 + n > len(raw):
        raise ValueError("bad header length")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    buffer = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    entries = sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))
    position = 0
    for name, entry in entries:
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{name}: bad keys")
        begin, end = entry["data_offsets"]
        count = 1
        for d in entry["shape"]:
            count *= d
        if begin != position or end - begin != count * BITS[entry["dtype"]] // 8:
            raise ValueError(f"{name}: bad offsets")
        position = end
        out["tensors"][name] = {"dtype": entry["dtype"], "shape": entry["shape"],
                                "sha256": hashlib.sha256(buffer[begin:end]).hexdigest()}
    if position != len(buffer):
        raise ValueError("buffer does not end at the last tensor")
    out["metadata"].update(metadata)


def main():
    out = {"tensors": {}, "metadata": {}}
    try:
        for path in sys.argv[1:]:
            check(path, out)
    except (ValueError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        print(f"spec_reader: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
