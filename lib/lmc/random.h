// Counter-based random numbers for the lmc library (private): a value depends only on (stream,
// index), never on threads or draw order.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace alloy::lmc::detail {

inline uint64_t mix_bits(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0, 1) with 53 random bits.
inline double uniform01(uint64_t stream, uint64_t index) {
  return double(mix_bits(stream + (index + 1) * 0x9E3779B97F4A7C15ull) >> 11) * 0x1.0p-53;
}
// Standard normal (Box-Muller on two uniforms of the pair of counters 2 index, 2 index + 1).
inline double normal(uint64_t stream, uint64_t index) {
  const double u1 = 1.0 - uniform01(stream, 2 * index);  // (0, 1]
  const double u2 = uniform01(stream, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace alloy::lmc::detail
