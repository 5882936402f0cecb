// alloy/core/sha256.h: SHA-256 (FIPS 180-4) for provenance records.
//
// Uses the x86 SHA extensions when the CPU has them (about 2 GB/s), else a portable implementation;
// both are checked against the FIPS test vectors in tests/test_sha256.cpp.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace alloy {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> finish();   // the object is spent afterwards
  std::string finish_hex();

 private:
  uint32_t state_[8];
  uint8_t block_[64];
  size_t block_used_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const void* data, size_t size);
// Hashes a whole file (mmapped, streamed). Throws Error(kIo) naming the file.
std::string sha256_file(const std::filesystem::path& path);

namespace detail {
// Forces the portable implementation (tests compare both paths).
void sha256_force_portable(bool portable);
}

}  // namespace alloy
