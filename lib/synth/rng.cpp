// Counter-based pseudo-normal numbers for alloy-synth (see alloy/synth/synth.h).
//
// Element i of stream (seed, stream) depends on nothing else, so any chunk of any tensor can be
// generated on its own, in parallel, with identical bits. The recipe, version 1:
//
//   key_lo = mix64(seed * G + 0x243F6A8885A308D3),  key_hi = mix64(key_lo ^ mix64(stream))
//   pair p (elements 2p and 2p+1): h = mix64(key_hi ^ mix64(key_lo + p * G))
//     (G = 0x9E3779B97F4A7C15, mix64 = splitmix64's finaliser; two rounds, so that two streams
//      never share a shifted run of values, which a single splitmix64 sequence per key would allow)
//   Box-Muller on h: u = (2 * (h >> 41) + 1) / 2^24 in (0, 1) (23 bits),
//                    angle = 2 pi * (h & 0x3FFFFFF) / 2^26 (26 bits),
//                    element 2p = sqrt(-2 ln u) cos(angle), element 2p+1 = sqrt(-2 ln u) sin(angle).
//
// ln, cos, sin and sqrt are our own polynomials and Newton steps in float32 using only +, -, * and
// /, which IEEE 754 rounds exactly; the argument reductions are integer operations. So the result does not depend on
// the C library (std::log, std::cos and std::normal_distribution differ between platforms). The one
// remaining hazard is the compiler fusing a * b + c into an FMA, which rounds once instead of twice:
// contraction is switched off for this file below (GCC's C++ modes otherwise default to
// -ffp-contract=fast, which fuses on targets with FMA, e.g. aarch64 or -march=haswell).
// |values| <= sqrt(2 * 24 ln 2) = 5.77: the tails beyond are cut (probability 8e-9 per value).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "alloy/core/random.h"
#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "alloy/synth/synth.h"

namespace alloy {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr size_t kPairBlock = 256;  // pairs hashed, then transformed, per inner block

inline uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct StreamKey {
  uint64_t lo, hi;
};

StreamKey stream_key(uint64_t seed, uint64_t stream) {
  const uint64_t lo = mix64(seed * kGolden + 0x243F6A8885A308D3ull);
  return {lo, mix64(lo ^ mix64(stream))};
}

// Natural log of k * 2^-24 for an odd integer k in [1, 2^24), in float32: k = m * 2^e with m in
// [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^9/9), s = (m - 1) / (m + 1),
// |s| <= 0.1716 (truncation error below 1e-9).
inline float log_of_odd_24(uint32_t k) {
  const uint32_t bits = float_to_bits(static_cast<float>(k));  // exact: k < 2^24
  int32_t exponent = static_cast<int32_t>(bits >> 23) - 127;
  uint32_t mantissa_bits = (bits & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  const uint32_t above_sqrt2 = (0x3FB504F3u - mantissa_bits) >> 31;  // m > sqrt(2), without a branch
  mantissa_bits -= above_sqrt2 << 23;                                  // m / 2
  exponent += static_cast<int32_t>(above_sqrt2);
  const float m = bits_to_float(mantissa_bits);
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  constexpr float kLn2 = 0.693147180559945309f;
  return static_cast<float>(exponent - 24) * kLn2 + 2.0f * s * series;
}

// sqrt(t) for t in [1e-7, 34], as t / sqrt(t) with 1 / sqrt(t) from the bit-trick estimate and
// three Newton steps (relative error about 1e-7). Not std::sqrt: its errno path (a branch for
// negative input) stops the loop from vectorising, and this is as deterministic.
inline float sqrt_positive(float t) {
  float y = bits_to_float(0x5F3759DFu - (float_to_bits(t) >> 1));
  const float half = 0.5f * t;
  y = y * (1.5f - half * y * y);
  y = y * (1.5f - half * y * y);
  y = y * (1.5f - half * y * y);
  return t * y;
}

// One block of Box-Muller pairs: out[2j], out[2j+1] for pairs first_pair + j, j < pairs.
void normal_pairs(const StreamKey& key, uint64_t first_pair, size_t pairs, float* out) {
  uint32_t radius_bits[kPairBlock], angle_bits[kPairBlock];
  for (size_t j = 0; j < pairs; ++j) {
    const uint64_t h = mix64(key.hi ^ mix64(key.lo + (first_pair + j) * kGolden));
    radius_bits[j] = static_cast<uint32_t>(h >> 41);          // 23 bits
    angle_bits[j] = static_cast<uint32_t>(h) & 0x03FFFFFFu;   // 2 bits of quadrant, 24 of angle
  }
  for (size_t j = 0; j < pairs; ++j) {
    const float radius = sqrt_positive(-2.0f * log_of_odd_24(2 * radius_bits[j] + 1));  // ln u < 0
    // angle = quadrant * pi/2 + a, a in [0, pi/2): Taylor series of cos and sin to a^12 and a^13
    // (error below 1e-8 on that interval), then a quarter-turn rotation chosen by the quadrant.
    const uint32_t quadrant = angle_bits[j] >> 24;
    constexpr float kStep = 1.57079632679489662f / 16777216.0f;  // (pi/2) / 2^24
    const float a = static_cast<float>(angle_bits[j] & 0x00FFFFFFu) * kStep;
    const float a2 = a * a;
    const float cos_a =
        1.0f + a2 * (-1.0f / 2 + a2 * (1.0f / 24 + a2 * (-1.0f / 720 + a2 * (1.0f / 40320 +
        a2 * (-1.0f / 3628800 + a2 * (1.0f / 479001600))))));
    const float sin_a =
        a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 + a2 * (1.0f / 362880 +
        a2 * (-1.0f / 39916800 + a2 * (1.0f / 6227020800.0f)))))));
    // (cos, sin) of quadrant*pi/2 + a: q=0 (c, s), q=1 (-s, c), q=2 (-c, -s), q=3 (s, -c); the
    // swap and the signs are bit operations, so the loop has no branches and vectorises.
    const uint32_t swap = 0u - (quadrant & 1u);
    const uint32_t c = float_to_bits(cos_a), s = float_to_bits(sin_a);
    const uint32_t x = (s & swap) | (c & ~swap), y = (c & swap) | (s & ~swap);
    const uint32_t x_sign = ((quadrant ^ (quadrant >> 1)) & 1u) << 31, y_sign = (quadrant >> 1) << 31;
    out[2 * j] = radius * bits_to_float(x ^ x_sign);
    out[2 * j + 1] = radius * bits_to_float(y ^ y_sign);
  }
}

}  // namespace

uint64_t synth_stream_id(std::string_view name) {
  return fnv1a(name);
}

void synth_normal(uint64_t seed, uint64_t stream, uint64_t first, size_t count, float* out, float std_dev,
                  float mean) {
  const StreamKey key = stream_key(seed, stream);
  parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
    float block[2 * kPairBlock];
    // Global element indices [first + b, first + e) come from pairs [first_pair, last_pair].
    const uint64_t begin = first + b, end = first + e;
    for (uint64_t pair = begin / 2; 2 * pair < end; pair += kPairBlock) {
      const uint64_t pairs = std::min<uint64_t>(kPairBlock, (end + 1) / 2 - pair);
      normal_pairs(key, pair, pairs, block);
      const uint64_t lo = std::max(begin, 2 * pair), hi = std::min(end, 2 * (pair + pairs));
      float* dst = out + (lo - first);
      const float* src = block + (lo - 2 * pair);
      for (uint64_t i = 0; i < hi - lo; ++i) dst[i] = mean + std_dev * src[i];
    }
  });
}

}  // namespace alloy
