// The byte layout of a safetensors file as alloy writes it (see alloy/core/writer.h for the rules).
#include <algorithm>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "alloy/core/error.h"
#include "writer_internal.h"

namespace alloy {
namespace {

// Files are addressed with off_t; keep every size well inside it.
constexpr uint64_t kMaxFileBytes = uint64_t{std::numeric_limits<int64_t>::max()} / 2;

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// The JSON text of a string, or Error naming `what` when it is not valid UTF-8.
std::string json_string(const std::string& text, const std::string& what) {
  try {
    return nlohmann::json(text).dump();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorCode::kInvalidArgument, what + " is not valid UTF-8");
  }
}

// Deterministic order within a file: larger dtype alignment first, then name.
void sort_file_order(const std::vector<TensorSpec>& specs, std::vector<size_t>* members) {
  std::sort(members->begin(), members->end(), [&](size_t a, size_t b) {
    const unsigned align_a = dtype_info(specs[a].dtype).alignment;
    const unsigned align_b = dtype_info(specs[b].dtype).alignment;
    if (align_a != align_b) return align_a > align_b;
    return specs[a].name < specs[b].name;
  });
}

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t count = 1;
  for (uint64_t d : shape) {
    if (!checked_mul(count, d, &count)) {
      throw Error(ErrorCode::kShapeOverflow, "tensor '" + name + "': element count overflows");
    }
  }
  uint64_t total_bits = 0;
  if (!checked_mul(count, dtype_bits(dtype), &total_bits)) {
    throw Error(ErrorCode::kShapeOverflow, "tensor '" + name + "': byte size overflows");
  }
  if (total_bits % 8 != 0) {
    throw Error(ErrorCode::kSubByteMisaligned, "tensor '" + name + "': " + std::to_string(count) +
                                                   " elements of " + dtype_name(dtype) +
                                                   " do not fill whole bytes");
  }
  return total_bits / 8;
}

namespace detail {

std::vector<uint64_t> validate_specs(const std::vector<TensorSpec>& specs) {
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  sizes.reserve(specs.size());
  uint64_t total = 0;
  for (const auto& spec : specs) {
    if (spec.name.empty())
      throw Error(ErrorCode::kEmptyName, "cannot write a tensor with an empty name");
    if (spec.name == "__metadata__") {
      throw Error(ErrorCode::kReservedName, "cannot write a tensor named __metadata__");
    }
    json_string(spec.name, "tensor name '" + spec.name + "'");
    if (!names.insert(spec.name).second) {
      throw Error(ErrorCode::kDuplicateTensor, "tensor '" + spec.name + "' declared twice");
    }
    sizes.push_back(spec.nbytes());
    if (__builtin_add_overflow(total, sizes.back(), &total) || total > kMaxFileBytes) {
      throw Error(ErrorCode::kShapeOverflow,
                  "tensor '" + spec.name + "': the tensors' total byte size overflows");
    }
  }
  return sizes;
}

std::string file_header(const std::vector<TensorSpec>& specs, std::vector<size_t>* members,
                        const std::vector<uint64_t>& sizes, const std::map<std::string, std::string>& metadata,
                        std::vector<uint64_t>* begins) {
  sort_file_order(specs, members);
  const std::vector<size_t>& order = *members;
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [key, value] : meta) {
    if (!first) header += ",";
    first = false;
    header += json_string(key, "metadata key '" + key + "'") + ":" +
              json_string(value, "metadata value of '" + key + "'");
  }
  header += "}";
  uint64_t offset = 0;
  for (size_t index : order) {
    const TensorSpec& spec = specs[index];
    header += "," + json_string(spec.name, "tensor name") + ":{\"dtype\":\"" +
              dtype_name(spec.dtype) + "\",\"shape\":[";
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      if (d) header += ",";
      header += std::to_string(spec.shape[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + sizes[index]) + "]}";
    (*begins)[index] = offset;
    offset += sizes[index];
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

}  // namespace detail
}  // namespace alloy
