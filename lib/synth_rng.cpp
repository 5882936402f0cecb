// Counter-based pseudo-normal numbers: element i of stream (seed, stream) depends on nothing else,
// so any chunk of any tensor can be generated independently, in parallel, with identical bits.
#include "alloy/parallel.h"
#include "alloy/synth.h"

namespace alloy {
namespace {

inline uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t synth_stream_id(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

void synth_normal(uint64_t seed, uint64_t stream, uint64_t first, size_t count, float* out) {
  const uint64_t key = mix64(seed * 0x9E3779B97F4A7C15ull ^ mix64(stream));
  // The sum of four uniform 16-bit integers, centred and scaled to unit variance
  // (variance of one: (65536^2 - 1) / 12).
  constexpr float kScale = 1.0f / 37837.23f;  // 1 / sqrt(4 * (65536^2 - 1) / 12)
  parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const uint64_t h = mix64(key + (first + i) * 0x9E3779B97F4A7C15ull);
      const int32_t total = static_cast<int32_t>(h & 0xFFFF) + static_cast<int32_t>((h >> 16) & 0xFFFF) +
                            static_cast<int32_t>((h >> 32) & 0xFFFF) + static_cast<int32_t>(h >> 48) - 131070;
      out[i] = static_cast<float>(total) * kScale;
    }
  });
}

}  // namespace alloy
