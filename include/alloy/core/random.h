// alloy/core/random.h: the two small, fully specified mixing functions that every seeded choice in
// alloy is built from, so that the same seed gives the same bytes with every compiler and standard
// library (std::uniform_int_distribution and std::hash are implementation-defined).
#pragma once

#include <cstdint>
#include <string_view>

namespace alloy {

// FNV-1a (64-bit) of the bytes: a stable id for a name (a tensor's, a stream's).
inline uint64_t fnv1a(std::string_view bytes) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// One step of splitmix64 (Steele, Lea and Flood 2014): advances `state` and returns the next
// 64 random bits.
inline uint64_t splitmix64_next(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace alloy
