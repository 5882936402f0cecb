// Validating safetensors header parser and the mmap-backed file (rules: alloy/core/safetensors.h and
// docs/format.md). Every check names the file and, where there is one, the tensor.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "alloy/core/error.h"
#include "alloy/core/safetensors.h"
#include "alloy/core/torch_checkpoint.h"
#include "alloy/core/utf8.h"
#include "header_json.h"
#include "reader_text.h"

namespace alloy {
namespace {

using detail::ParseAbort;
using detail::quote_name;
using detail::tensor_label;
using nlohmann::json;

[[noreturn]] void fail(ErrorCode code, const std::string& label, const std::string& message) {
  throw Error(code, label + ": " + message);
}


// A JSON integer literal that fits in 64 bits and is not negative. nlohmann stores such literals
// as number_unsigned; negative ones (and "-0") are number_integer, anything with a fraction or an
// exponent ("1.0", "1e2") or beyond 2^64 - 1 is number_float, and true/false are booleans: all
// refused.
bool get_unsigned(const json& value, uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  *out = value.get<uint64_t>();
  return true;
}

// "__metadata__" is metadata when it is an object of strings. One that is not, but carries a tensor
// entry's keys, is a tensor someone named "__metadata__": that gets its own code.
void parse_metadata(const json& value, const std::string& label, SafetensorsHeader* header) {
  if (!value.is_object()) fail(ErrorCode::kBadMetadata, label, "__metadata__ is not an object");
  const bool looks_like_tensor = value.contains("dtype") || value.contains("data_offsets");
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      if (looks_like_tensor) {
        fail(ErrorCode::kReservedName, label, "a tensor may not be named __metadata__");
      }
      fail(ErrorCode::kBadMetadata, label,
           "__metadata__ value for " + quote_name(key) + " is not a string");
    }
    header->metadata[key] = item.get<std::string>();
  }
}

TensorInfo parse_tensor(const std::string& name, const json& entry, const std::string& label) {
  // The tensor's label is built only for a message: a header may list a million tensors.
  const auto fail_tensor = [&](ErrorCode code, const std::string& message) {
    fail(code, label, tensor_label(name) + message);
  };
  if (name.empty()) fail(ErrorCode::kEmptyName, label, "a tensor has an empty name");
  if (!entry.is_object())
    fail_tensor(ErrorCode::kTensorNotObject, "entry is not an object");
  for (const auto& [key, unused] : entry.items()) {
    (void)unused;
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail_tensor(ErrorCode::kUnknownKey, "unexpected key " + quote_name(key));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) fail_tensor(ErrorCode::kMissingKey, std::string("missing '") + key + "'");
  }
  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail_tensor(ErrorCode::kBadDtypeType, "dtype is not a string");
  const auto parsed_dtype = dtype_from_name(dtype.get<std::string>());
  if (!parsed_dtype) {
    fail_tensor(ErrorCode::kUnknownDtype, "unknown dtype " + quote_name(dtype.get<std::string>()));
  }
  info.dtype = *parsed_dtype;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail_tensor(ErrorCode::kBadShape, "shape is not an array");
  for (const json& dim : shape) {
    uint64_t d = 0;
    if (!get_unsigned(dim, &d)) {
      fail_tensor(ErrorCode::kBadShape, "shape has a value that is not a non-negative integer");
    }
    info.shape.push_back(d);
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !get_unsigned(offsets[0], &info.data_begin) ||
      !get_unsigned(offsets[1], &info.data_end)) {
    fail_tensor(ErrorCode::kBadOffsets, "data_offsets must be two non-negative integers");
  }
  if (info.data_begin > info.data_end) {
    fail_tensor(ErrorCode::kOffsetsReversed, "data_offsets begin after they end");
  }

  uint64_t count = 1;
  for (uint64_t d : info.shape) {
    if (__builtin_mul_overflow(count, d, &count)) {
      fail_tensor(ErrorCode::kShapeOverflow, "element count overflows 64 bits");
    }
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(count, uint64_t{dtype_bits(info.dtype)}, &bits)) {
    fail_tensor(ErrorCode::kShapeOverflow, "byte size overflows 64 bits");
  }
  if (bits % 8 != 0) {
    fail_tensor(ErrorCode::kSubByteMisaligned, std::to_string(count) + " elements of " + dtype_name(info.dtype) +
             " do not fill whole bytes");
  }
  if (info.data_end - info.data_begin != bits / 8) {
    fail_tensor(ErrorCode::kSizeMismatch, "data_offsets span " + std::to_string(info.data_end - info.data_begin) +
             " bytes but shape and dtype need " + std::to_string(bits / 8));
  }
  return info;
}

}  // namespace

uint64_t TensorInfo::numel() const {
  uint64_t count = 1;
  for (uint64_t d : shape) count *= d;  // validated not to overflow when parsed
  return count;
}

long SafetensorsHeader::find(std::string_view name) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<long>(i);
  }
  return -1;
}

SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label) {
  if (size < 8)
    fail(ErrorCode::kFileTooSmall, label, "file is smaller than the 8-byte header length");
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | bytes[i];
  if (header_bytes < 2) fail(ErrorCode::kHeaderTooSmall, label, "header length below 2 bytes");
  if (header_bytes > kMaxHeaderBytes) {
    fail(ErrorCode::kHeaderTooLarge, label,
         "header length " + std::to_string(header_bytes) + " exceeds 100,000,000 bytes");
  }
  if (header_bytes > size - 8) {
    fail(ErrorCode::kHeaderOutOfBounds, label,
         "header length " + std::to_string(header_bytes) + " runs past the end of the file");
  }
  const uint8_t* text = bytes + 8;
  if (!is_valid_utf8(std::string_view(reinterpret_cast<const char*>(text), header_bytes)))
    fail(ErrorCode::kHeaderNotUtf8, label, "header is not valid UTF-8");
  // nlohmann's lexer takes a NUL byte for the end of input, so "{...}\0<anything>" would parse as
  // "{...}" while the reference (serde_json) refuses the trailing bytes. Valid JSON never holds a
  // raw NUL (inside strings it must be escaped as \u0000), so one anywhere is refused.
  if (detail::contains_nul(std::string_view(reinterpret_cast<const char*>(text), header_bytes))) {
    fail(ErrorCode::kHeaderNotJson, label, "header contains a NUL byte");
  }
  // The reference's InvalidHeaderStart: no leading whitespace, and nothing but an object.
  if (text[0] != '{') fail(ErrorCode::kHeaderNotObject, label, "header does not start with '{'");

  SafetensorsHeader header;
  header.header_bytes = header_bytes;
  try {
    detail::parse_header_entries(reinterpret_cast<const char*>(text),
                                 reinterpret_cast<const char*>(text + header_bytes),
                                 [&](const std::string& name, json&& entry) {
                                   if (name == "__metadata__") {
                                     parse_metadata(entry, label, &header);
                                   } else {
                                     header.tensors.push_back(parse_tensor(name, entry, label));
                                   }
                                 });
  } catch (const ParseAbort& abort) {
    fail(abort.code, label, abort.message);
  }

  // File order; zero-size tensors can share an offset, so the name breaks ties deterministically.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.data_begin, a.data_end, a.name) <
                     std::tie(b.data_begin, b.data_end, b.name);
            });
  uint64_t expected = 0;
  for (const auto& tensor : header.tensors) {
    if (tensor.data_begin < expected) {
      fail(ErrorCode::kOffsetOverlap, label,
           tensor_label(tensor.name) + "data overlaps the previous tensor");
    }
    if (tensor.data_begin > expected) {
      fail(ErrorCode::kOffsetGap, label,
           tensor_label(tensor.name) + "data starts at " + std::to_string(tensor.data_begin) +
               ", leaving a hole after offset " + std::to_string(expected));
    }
    expected = tensor.data_end;
  }
  const uint64_t available = size - 8 - header_bytes;
  if (expected > available) {
    const std::string who = header.tensors.empty() ? "" : tensor_label(header.tensors.back().name);
    fail(ErrorCode::kDataOutOfBounds, label,
         who + "data ends at " + std::to_string(expected) + " but the file holds only " +
             std::to_string(available) + " data bytes");
  }
  if (expected < available) {
    fail(ErrorCode::kTrailingBytes, label,
         std::to_string(available - expected) + " bytes after the last tensor");
  }
  return header;
}

uint64_t SafetensorsHeader::data_bytes() const {
  if (format == WeightsFormat::kSafetensors) return tensors.empty() ? 0 : tensors.back().data_end;
  uint64_t total = 0;
  for (const auto& tensor : tensors) total += tensor.nbytes();  // each fits in the file
  return total;
}

WeightsFormat SafetensorsFile::format_of(const std::filesystem::path& path) {
  const std::string extension = path.extension().string();
  return extension == ".bin" || extension == ".pt" || extension == ".pth" ? WeightsFormat::kTorchZip
                                                                          : WeightsFormat::kSafetensors;
}

SafetensorsFile::SafetensorsFile(const std::string& path, WeightsFormat format)
    : file_(path),
      header_(format == WeightsFormat::kTorchZip ? parse_torch_checkpoint(file_.data(), file_.size(), path)
                                                 : parse_safetensors(file_.data(), file_.size(), path)) {
  index_.reserve(header_.tensors.size());
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

long SafetensorsFile::index_of(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : static_cast<long>(it->second);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const long i = index_of(name);
  return i < 0 ? nullptr : &header_.tensors[static_cast<size_t>(i)];
}

const uint8_t* SafetensorsFile::data(const TensorInfo& tensor) const {
  return file_.data() + header_.data_start() + tensor.data_begin;
}

void SafetensorsFile::read(const TensorInfo& tensor, uint64_t offset, uint64_t length, void* dst) const {
  // offset + length <= nbytes for every caller; the tensor's span was checked against the file's
  // size when it was opened, so only a file that shrank since can fall short.
  file_.read(header_.data_start() + tensor.data_begin + offset, length, dst);
}

void SafetensorsFile::release(const TensorInfo& tensor) const {
  file_.release(header_.data_start() + tensor.data_begin, tensor.nbytes());
}

void SafetensorsFile::prefetch(const TensorInfo& tensor) const {
  file_.prefetch(header_.data_start() + tensor.data_begin, tensor.nbytes());
}

}  // namespace alloy
