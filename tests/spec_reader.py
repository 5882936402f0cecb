#!/usr/bin/env python3
"""An independent safetensors checker that follows only the public format description.

It shares no code with alloy and uses only the standard library. Each file must be: an 8-byte
little-endian header length N (at most 100,000,000), N bytes of UTF-8 JSON holding one object with
no duplicate keys, whose optional "__metadata__" maps strings to strings and whose other entries are
objects with exactly "dtype" (a spec dtype name), "shape" (non-negative integers) and
"data_offsets" ([begin, end], begin <= end); sorted by offset, the tensors tile the data buffer from
0 with no holes or overlaps, each taking (elements x dtype bits) / 8 bytes, which must be a whole
number, and the buffer ends exactly at the last tensor.

Prints {"tensors": {name: {"dtype", "shape", "sha256", "file"}}, "metadata": {file: {...}}} as JSON
(sha256 of each tensor's bytes), or exits 1 with the reason on stderr.

Usage: spec_reader.py FILE [FILE ...]
"""
import hashlib
import json
import os
import struct
import sys

BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64,
        "U64": 64, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F8_E4M3": 8,
        "F8_E5M2": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6,
        "F6_E3M2": 6}


class Invalid(Exception):
    pass


def no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise Invalid(f"duplicate key {key!r}")
        out[key] = value
    return out


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check(path, out):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise Invalid("shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > 100_000_000 or 8 + n > len(raw):
        raise Invalid(f"bad header length {n}")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Invalid(f"header is not UTF-8 JSON: {e}")
    if not isinstance(header, dict):
        raise Invalid("header is not an object")
    buffer = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise Invalid("__metadata__ is not an object of strings")
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise Invalid(f"{name}: not an object with exactly dtype, shape, data_offsets")
        if entry["dtype"] not in BITS:
            raise Invalid(f"{name}: unknown dtype {entry['dtype']!r}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise Invalid(f"{name}: bad shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(o) for o in offsets):
            raise Invalid(f"{name}: bad data_offsets")
    position = 0
    for name, entry in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = entry["data_offsets"]
        count = 1
        for d in entry["shape"]:
            count *= d
        bits = count * BITS[entry["dtype"]]
        if bits % 8 != 0:
            raise Invalid(f"{name}: {bits} bits is not a whole number of bytes")
        if begin != position:
            raise Invalid(f"{name}: starts at {begin}, expected {position}")
        if end - begin != bits // 8:
            raise Invalid(f"{name}: {end - begin} bytes for {bits // 8} bytes of data")
        position = end
        if name in out["tensors"]:
            raise Invalid(f"{name}: in two files")
        out["tensors"][name] = {"dtype": entry["dtype"], "shape": entry["shape"],
                                "file": os.path.basename(path),
                                "sha256": hashlib.sha256(buffer[begin:end]).hexdigest()}
    if position != len(buffer):
        raise Invalid(f"data buffer is {len(buffer)} bytes but the tensors end at {position}")
    out["metadata"][os.path.basename(path)] = metadata


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = {"tensors": {}, "metadata": {}}
    for path in sys.argv[1:]:
        try:
            check(path, out)
        except (Invalid, OSError) as e:
            print(f"spec_reader: {path}: {e}", file=sys.stderr)
            return 1
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
