// The TIES family's bracketed histogram pass in AVX-512 registers: see bracket_bins_lanes.h.
//
// 32 entries per step, widened into two vectors of float32 lanes (bf16_lanes.h's widen_low and
// widen_high: the order does not matter to a histogram). The rounding leaves out the NaN test and
// its last AND also clears the sign (round_magnitude_keeping_nan), which gives the magnitude key
// with a zero low half; a NaN's key, at least 0x7FC00000 here (the subtraction quiets a signalling
// input, the rounding keeps the quiet bit), is clamped to 0x7FC00000, the reference's. The
// bracket's tests run on the keys, unsigned: bin > hi is key > (hi << 16 | 0xFFFF), and
// lo <= bin <= hi is key - (lo << 16) <= (hi - lo) << 16. The bins inside are packed in a register
// (vpcompressd) and shifted down there. About 12 vector instructions per 16 entries, where the
// portable loops took about 25.
#include "bracket_bins_lanes.h"

#include "alloy/core/cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every cast that passes one
// warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "bf16_lanes.h"
#define ALLOY_BRACKET_BINS_AVX512 1
#endif

namespace alloy::detail {

#if ALLOY_BRACKET_BINS_AVX512
namespace {

using bf16_lanes::kHighHalfEntries;
using bf16_lanes::kLowHalfEntries;
using bf16_lanes::round_magnitude_keeping_nan;
using bf16_lanes::widen_high;
using bf16_lanes::widen_low;

struct Bracket {
  __m512i above_limit, low, width;
};

// The magnitude keys of rnd(x - b) for float32 lanes x and b, a NaN's clamped to 0x7FC00000.
ALLOY_V4 __m512i keys_of(__m512 x, __m512 b) {
  return _mm512_min_epu32(round_magnitude_keeping_nan(_mm512_sub_ps(x, b)),
                          _mm512_set1_epi32(0x7FC00000));
}

// Sixteen keys, of which lanes `live` are entries: the count above and the bins inside.
ALLOY_V4 void sort_keys(const Bracket& bracket, __m512i keys, __mmask16 live, uint32_t* inside,
                        size_t& count, uint32_t& above) {
  above += static_cast<uint32_t>(
      __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(live, keys, bracket.above_limit)));
  const __mmask16 in =
      _mm512_mask_cmple_epu32_mask(live, _mm512_sub_epi32(keys, bracket.low), bracket.width);
  // Compressed in a register, then stored whole: the compress-to-memory form is microcoded and
  // slow on some cores (AMD Zen 4).
  _mm512_storeu_si512(inside + count, _mm512_srli_epi32(_mm512_maskz_compress_epi32(in, keys), 16));
  count += static_cast<size_t>(__builtin_popcount(in));
}

__attribute__((target("arch=x86-64-v4"))) size_t bracket_bins(const uint16_t* x, const uint16_t* b,
                                                              size_t len, uint32_t lo, uint32_t hi,
                                                              uint32_t* inside, uint32_t* above) {
  const Bracket bracket{_mm512_set1_epi32(static_cast<int>(hi << 16 | 0xFFFFu)),
                        _mm512_set1_epi32(static_cast<int>(lo << 16)),
                        _mm512_set1_epi32(static_cast<int>((hi - lo) << 16))};
  size_t count = 0;
  uint32_t over = 0;
  for (size_t j = 0; j < len; j += 32) {
    const size_t lanes = len - j < 32 ? len - j : 32;
    const __mmask32 live = _bzhi_u32(~0u, static_cast<unsigned>(lanes));
    const __m512i x_bits = _mm512_maskz_loadu_epi16(live, x + j);
    const __m512i b_bits = _mm512_maskz_loadu_epi16(live, b + j);
    // The lanes of bf16_lanes.h's widen_low and widen_high.
    const auto low_lanes = static_cast<__mmask16>(_pext_u32(live, kLowHalfEntries));
    const auto high_lanes = static_cast<__mmask16>(_pext_u32(live, kHighHalfEntries));
    sort_keys(bracket, keys_of(widen_low(x_bits), widen_low(b_bits)), low_lanes, inside, count,
              over);
    sort_keys(bracket, keys_of(widen_high(x_bits), widen_high(b_bits)), high_lanes, inside, count,
              over);
  }
  *above = over;
  return count;
}

}  // namespace

bool can_bracket_bins_bf16_avx512() {
  return cpu_has_x86_64_v4();
}

size_t bracket_bins_bf16_avx512(const uint16_t* x, const uint16_t* b, size_t len, uint32_t lo,
                                uint32_t hi, uint32_t* inside, uint32_t* above) {
  return bracket_bins(x, b, len, lo, hi, inside, above);
}

#else

bool can_bracket_bins_bf16_avx512() {
  return false;
}
size_t bracket_bins_bf16_avx512(const uint16_t*, const uint16_t*, size_t, uint32_t, uint32_t,
                                uint32_t*, uint32_t*) {
  return 0;
}

#endif

}  // namespace alloy::detail
