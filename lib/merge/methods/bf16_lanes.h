// Helpers shared by the merge's AVX-512 kernels on bf16 rows (weighted_sum_lanes.cpp,
// task_vector_combine.cpp, l1_terms_lanes.cpp, bracket_bins_lanes.cpp). Include only where
// <immintrin.h> is available (x86-64 with GCC or clang); the functions are compiled for x86-64-v4
// and inlined into the kernels.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace alloy::detail::bf16_lanes {

// The kernels' helpers: compiled for x86-64-v4 and always inlined.
#define ALLOY_V4 __attribute__((target("arch=x86-64-v4"), always_inline)) inline

// round_to_bf16 (alloy/core/dtype.h) without its NaN exception: (u + 0x7FFF + bit 16), its last
// AND keeping the bits of `keep`: 0xFFFF0000 the rounded value, 0x7FFF0000 its magnitude (the sign
// cleared in the same instruction). A NaN whose low half is zero (a bf16 input widened, the
// default NaN 0xFFC00000, or one of those passed through an operation) stays a NaN, perhaps of
// another sign or payload, so on such values this gives the reference's bits wherever they are not
// NaNs and NaNs where the reference's are. The kernels make only the NaNs that reach an output (or
// a comparison of bits) the reference's 0x7FC00000.
// Its steps before that AND: the rounded bf16 value is the high half of each lane (a kernel that
// keeps only the high halves needs no AND).
ALLOY_V4 __m512i rounded_in_high_halves(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));
  const __m512i half_up = _mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF));
  return _mm512_mask_add_epi32(half_up, odd, half_up, _mm512_set1_epi32(1));
}
ALLOY_V4 __m512i round_bits_keeping_nan(__m512 x, uint32_t keep) {
  return _mm512_and_si512(rounded_in_high_halves(x), _mm512_set1_epi32(static_cast<int>(keep)));
}
ALLOY_V4 __m512 round_keeping_nan(__m512 x) {
  return _mm512_castsi512_ps(round_bits_keeping_nan(x, 0xFFFF0000u));
}
// The bits of |round_keeping_nan(x)|.
ALLOY_V4 __m512i round_magnitude_keeping_nan(__m512 x) {
  return round_bits_keeping_nan(x, 0x7FFF0000u);
}

// 32 bf16 values interleaved with zeros (vpunpcklwd / vpunpckhwd) put each value in the high half
// of a 32-bit lane, which is its float32 value: entries 0-3, 8-11, 16-19, 24-27 in the low vector
// and 4-7, 12-15, 20-23, 28-31 in the high one (vpackusdw of two such vectors' high halves puts
// them back in order). A 32-bit mask of the entries becomes the lanes' masks by pext with these.
constexpr uint32_t kLowHalfEntries = 0x0F0F0F0Fu, kHighHalfEntries = 0xF0F0F0F0u;
ALLOY_V4 __m512 widen_low(__m512i bits) {
  return _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), bits));
}
ALLOY_V4 __m512 widen_high(__m512i bits) {
  return _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), bits));
}

// Bits [entry, entry + lanes) of a mask of bit words (bit i % 64 of words[i / 64]), lanes <= 64,
// in the low bits: the next word is read only where the lanes reach it (the shift is then above
// 64 - lanes, never 0).
ALLOY_V4 uint64_t mask_bits_at(const uint64_t* words, size_t entry, size_t lanes) {
  const size_t w = entry >> 6, shift = entry & 63;
  uint64_t word = words[w] >> shift;
  if (((entry + lanes - 1) >> 6) != w) word |= words[w + 1] << (64 - shift);
  return word;
}

}  // namespace alloy::detail::bf16_lanes
