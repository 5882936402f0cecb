// libFuzzer target: parse_shard_index over arbitrary text must accept only safe shard names or
// throw alloy::Error; never crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "alloy/core/error.h"
#include "alloy/core/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto index = alloy::parse_shard_index(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& [tensor, shard] : index.weight_map) {
      if (tensor.empty() || shard.empty() || shard[0] == '/') std::abort();
      if (shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos)
        std::abort();
      // No ".." path component may survive validation.
      size_t start = 0;
      while (start <= shard.size()) {
        const size_t slash = std::min(shard.find('/', start), shard.size());
        if (shard.compare(start, slash - start, "..") == 0) std::abort();
        start = slash + 1;
      }
    }
  } catch (const alloy::Error&) {
  }
  return 0;
}
