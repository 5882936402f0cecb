// alloy/core/torch_checkpoint.h: a restricted reader for PyTorch's zip checkpoints (`torch.save`
// since 1.6; `pytorch_model.bin` and its shards). Nothing in the file is ever executed.
//
// Byte layout (a ZIP archive, APPNOTE 6.3; entries stored, not compressed; PyTorch pads each
// entry's local header so that its data starts on a 64-byte boundary):
//
//   <archive>/data.pkl        a pickle (protocol 2) of the state dict: {name: tensor, ...}, where
//                             each tensor is REDUCE(torch._utils._rebuild_tensor_v2,
//                             (storage, storage_offset, size, stride, requires_grad, hooks[, meta]))
//                             and each storage a persistent id ('storage', torch.<T>Storage, key,
//                             location, numel)
//   <archive>/data/<key>      the storage's bytes: numel elements of T, little-endian
//   <archive>/byteorder       optional: "little" (anything else is refused)
//   <archive>/version, .data/version, .format_version, .data/serialization_id  (not needed)
//   central directory, [ZIP64 end record and locator], end of central directory record
//
// The unpickler is a small stack machine that knows only the opcodes such a pickle uses (PROTO,
// FRAME, MARK, STOP, the empty containers, TUPLE/TUPLE1-3, BININT/BININT1/BININT2/LONG1,
// BINFLOAT, BINUNICODE/SHORT_BINUNICODE, NONE/NEWTRUE/NEWFALSE, the memo (BINPUT, LONG_BINPUT,
// MEMOIZE, BINGET, LONG_BINGET), APPEND(S), SETITEM(S), GLOBAL/STACK_GLOBAL, REDUCE, BINPERSID,
// BUILD on a dict) and only these globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and the typed storage classes torch.{Double,Float,Half,BFloat16,
// Long,Int,Short,Char,Byte,Bool,Float8_e4m3fn,Float8_e5m2}Storage. A global can only be called
// through REDUCE when it is one of the three callables; any other opcode or global is refused
// (kPickleForbidden) naming the file, the opcode or global, and its byte offset in data.pkl.
//
// Checks (each refusal names the file and, where there is one, the tensor): the zip's records lie
// inside the file and do not overlap; no encrypted or compressed entry; no duplicate entry name;
// exactly one data.pkl; each storage is an entry whose size is exactly numel x element size; a
// storage key used with one dtype only; each tensor's sizes and offset are non-negative integers,
// its strides row-major contiguous (strides of size-1 dimensions and of empty tensors are free),
// and (offset + numel) x element size, computed with overflow checks, fits in its storage; the
// pickle's top object is a dict of distinct non-empty UTF-8 names to tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "alloy/core/safetensors.h"

namespace alloy {

// data.pkl larger than this is refused (a 70B model's is a few megabytes).
inline constexpr uint64_t kMaxPickleBytes = 256ull << 20;

// Parses a whole PyTorch zip checkpoint held in memory (`bytes` is the entire file). The result's
// tensors carry file offsets (format kTorchZip, data_start() 0), sorted by offset then name; two
// tensors may share bytes (tied weights). `label` names the file in errors. Throws Error.
SafetensorsHeader parse_torch_checkpoint(const uint8_t* bytes, size_t size, const std::string& label);

// Whether the bytes start like a zip archive ("PK\3\4"), i.e. could be a PyTorch checkpoint.
bool looks_like_zip(const uint8_t* bytes, size_t size);

}  // namespace alloy
