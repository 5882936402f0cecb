// Filling a hash cache (alloy/core/hash_cache.h) for tests that then run a tool with --hash-cache.
// The tools do not store files changed in the last 2 seconds, and tests write their models just
// before: this stores them with no settling time instead of sleeping.
#pragma once

#include <chrono>
#include <filesystem>

#include "alloy/core/hash_cache.h"
#include "alloy/core/sha256.h"

namespace alloy::test {

// Stores the sha256 of every regular file directly in each of `folders`.
inline void prime_hash_cache(const std::filesystem::path& cache_dir,
                             const std::vector<std::filesystem::path>& folders) {
  HashCache cache(cache_dir, std::chrono::nanoseconds(0));
  for (const auto& folder : folders) {
    for (const auto& entry : std::filesystem::directory_iterator(folder)) {
      if (!entry.is_regular_file()) continue;
      const MappedFile file(entry.path().string());
      cache.store(file.identity(), sha256_file(entry.path()));
    }
  }
}

}  // namespace alloy::test
