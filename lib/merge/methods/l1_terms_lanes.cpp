// The L1 terms of a rescaled random mask in AVX-512 registers: see l1_terms_lanes.h.
//
// 32 entries per step, widened from the bf16 bits into two vectors of float32 lanes. The rounding
// of delta leaves out the NaN test (bf16_lanes.h's round_magnitude_keeping_nan, its last AND also
// clearing the sign): every value that is not a NaN gets the reference's bits, and a NaN stays a
// NaN. A NaN's magnitude is at least 0x7FC00000 here (the subtraction quiets a signalling input,
// and the rounding keeps the quiet bit), so the largest magnitude's bits, clamped to 0x7FC00000,
// are the reference's, and a NaN's exponent field is 255 either way. The sums take each magnitude
// into double lanes, eight per vector, in an order of their own: add_l1_run uses them only where
// every partial sum is exact. About 17 vector instructions per 16 entries, where the portable
// kernel's five loops took about 28 and stored every term.
#include "l1_terms_lanes.h"

#include <algorithm>

#include "alloy/core/cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every cast that passes one
// warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "bf16_lanes.h"
#define ALLOY_L1_TERMS_AVX512 1
#endif

namespace alloy::detail {

#if ALLOY_L1_TERMS_AVX512
namespace {

using bf16_lanes::kHighHalfEntries;
using bf16_lanes::kLowHalfEntries;
using bf16_lanes::mask_bits_at;
using bf16_lanes::round_magnitude_keeping_nan;
using bf16_lanes::widen_high;
using bf16_lanes::widen_low;

struct Lanes {
  __m512i min_nonzero, max_bits;  // min_nonzero: of magnitude - 1 (a zero wraps to the top)
  __m512d all_low, all_high, kept_low, kept_high;
};

// Sixteen magnitudes (float32 lanes) and their mask bits.
ALLOY_V4 void add_magnitudes(Lanes& s, __m512i magnitude, __mmask16 keep) {
  s.min_nonzero =
      _mm512_min_epu32(s.min_nonzero, _mm512_sub_epi32(magnitude, _mm512_set1_epi32(1)));
  s.max_bits = _mm512_max_epu32(s.max_bits, magnitude);
  const __m512 m = _mm512_castsi512_ps(magnitude);
  const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(m));
  const __m512d high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(m, 1));
  s.all_low = _mm512_add_pd(s.all_low, low);
  s.all_high = _mm512_add_pd(s.all_high, high);
  s.kept_low = _mm512_mask_add_pd(s.kept_low, static_cast<__mmask8>(keep), s.kept_low, low);
  s.kept_high =
      _mm512_mask_add_pd(s.kept_high, static_cast<__mmask8>(keep >> 8), s.kept_high, high);
}

// Entries [entry, entry + lanes), lanes <= 32, at x and b, widened in the order of bf16_lanes.h's
// widen_low / widen_high, the mask's bits gathered in that order. Lanes past `lanes` read +0, whose
// magnitude +0 changes no sum, no largest magnitude and no smallest nonzero one, whatever its mask
// bit.
ALLOY_V4 void add_entries(Lanes& s, const uint16_t* x, const uint16_t* b, const uint64_t* bits,
                          size_t entry, size_t lanes) {
  const __mmask32 live = _bzhi_u32(~0u, static_cast<unsigned>(lanes));
  const __m512i x_bits = _mm512_maskz_loadu_epi16(live, x),
                b_bits = _mm512_maskz_loadu_epi16(live, b);
  const auto keep = static_cast<uint32_t>(mask_bits_at(bits, entry, lanes));
  add_magnitudes(s,
                 round_magnitude_keeping_nan(_mm512_sub_ps(widen_low(x_bits), widen_low(b_bits))),
                 static_cast<__mmask16>(_pext_u32(keep, kLowHalfEntries)));
  add_magnitudes(s,
                 round_magnitude_keeping_nan(_mm512_sub_ps(widen_high(x_bits), widen_high(b_bits))),
                 static_cast<__mmask16>(_pext_u32(keep, kHighHalfEntries)));
}

__attribute__((target("arch=x86-64-v4"))) L1BlockTerms terms(const uint16_t* x, const uint16_t* b,
                                                             const uint64_t* bits, size_t first,
                                                             size_t len) {
  Lanes s{_mm512_set1_epi32(-1), _mm512_setzero_si512(), _mm512_setzero_pd(),
          _mm512_setzero_pd(),   _mm512_setzero_pd(),    _mm512_setzero_pd()};
  for (size_t j = 0; j < len; j += 32) {
    add_entries(s, x + j, b + j, bits, first + j, len - j < 32 ? len - j : 32);
  }
  // The lanes reduced through memory (GCC 12's _mm512_reduce_* warn of uninitialised reads).
  alignas(64) uint32_t min_nonzero[16], max_bits[16];
  alignas(64) double all[8], kept[8];
  _mm512_store_si512(min_nonzero, s.min_nonzero);
  _mm512_store_si512(max_bits, s.max_bits);
  _mm512_store_pd(all, _mm512_add_pd(s.all_low, s.all_high));
  _mm512_store_pd(kept, _mm512_add_pd(s.kept_low, s.kept_high));
  uint32_t smallest = 0xFFFFFFFFu, largest = 0;
  for (size_t k = 0; k < 16; ++k) {
    smallest = std::min(smallest, min_nonzero[k]);
    largest = std::max(largest, max_bits[k]);
  }
  L1BlockTerms result;
  result.min_exponent = smallest == 0xFFFFFFFFu ? 255u : (smallest + 1) >> 23;
  // Every NaN magnitude is at least 0x7FC00000 (see the top), and the reference's is that.
  result.max_bits = std::min(largest, 0x7FC00000u);
  for (size_t k = 0; k < 8; ++k) result.all += all[k], result.kept += kept[k];
  return result;
}

}  // namespace

bool can_l1_terms_bf16_avx512() {
  return cpu_has_x86_64_v4();
}

L1BlockTerms l1_terms_bf16_avx512(const uint16_t* x, const uint16_t* b, const uint64_t* bits,
                                  size_t first, size_t len) {
  return terms(x, b, bits, first, len);
}

#else

bool can_l1_terms_bf16_avx512() {
  return false;
}
L1BlockTerms l1_terms_bf16_avx512(const uint16_t*, const uint16_t*, const uint64_t*, size_t,
                                  size_t) {
  return {};
}

#endif

}  // namespace alloy::detail
