// The TIES family's bracketed histogram pass in AVX-512 registers: see bracket_bins_lanes.h.
//
// 32 entries per step, widened into two vectors of float32 lanes (bf16_lanes.h's widen_low and
// widen_high: the order does not matter to a histogram) and subtracted there. Of the rounding only
// the high half of each lane is kept: one word permute (vpermt2w) gathers the 32 rounded bf16
// values as words, so the rounding needs no AND of its own, and the sign is cleared and a NaN's bin
// (at least 0x7FC0 here: the subtraction quiets a signalling input, the rounding keeps the quiet
// bit) clamped to 0x7FC0, the reference's, once for all 32. The bracket's tests then run on the
// 32 bins at once, unsigned: bin > hi, and lo <= bin <= hi as bin - lo <= hi - lo (a bin below lo
// wraps above 0x7FFF). The bins inside are packed in a register and stored whole: 32 words by one
// vpcompressw on CPUs with AVX-512 VBMI2, else each 16 widened to double words, packed by
// vpcompressd and narrowed back. About 11 vector instructions per 16 entries (VBMI2), where the
// double-word kernel before it took about 15 and the portable loops about 25.
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
using bf16_lanes::rounded_in_high_halves;
using bf16_lanes::widen_high;
using bf16_lanes::widen_low;

// The bins of 32 entries as words: those of widen_low's lanes in words 0-15, of widen_high's in
// words 16-31 (the odd words of the two vectors of rounded values).
ALLOY_V4 __m512i bins_of(__m512i x_bits, __m512i b_bits) {
  const __m512i low = rounded_in_high_halves(_mm512_sub_ps(widen_low(x_bits), widen_low(b_bits)));
  const __m512i high =
      rounded_in_high_halves(_mm512_sub_ps(widen_high(x_bits), widen_high(b_bits)));
  const __m512i odd_words =
      _mm512_setr_epi32(0x00030001, 0x00070005, 0x000B0009, 0x000F000D, 0x00130011, 0x00170015,
                        0x001B0019, 0x001F001D, 0x00230021, 0x00270025, 0x002B0029, 0x002F002D,
                        0x00330031, 0x00370035, 0x003B0039, 0x003F003D);
  const __m512i rounded = _mm512_permutex2var_epi16(low, odd_words, high);
  return _mm512_min_epu16(_mm512_and_si512(rounded, _mm512_set1_epi16(0x7FFF)),
                          _mm512_set1_epi16(0x7FC0));
}

// The steps of a call, 32 entries each: step j's bins and the mask of those inside the bracket
// [lo, hi], with the count of the entries above it kept in `above`.
struct Step {
  __m512i bins;
  __mmask32 inside;
};
struct Steps {
  const uint16_t* x;
  const uint16_t* b;
  size_t len;
  uint32_t lo, hi;
  uint32_t above = 0;

  // Entries [j, j + 32), those below len. (Inlined into a loop: the bracket's vectors are made
  // once.)
  ALLOY_V4 Step at(size_t j) {
    const size_t lanes = len - j < 32 ? len - j : 32;
    const __mmask32 live = _bzhi_u32(~0u, static_cast<unsigned>(lanes));
    const __m512i bins =
        bins_of(_mm512_maskz_loadu_epi16(live, x + j), _mm512_maskz_loadu_epi16(live, b + j));
    // The entries in bins_of's order.
    const __mmask32 entries =
        _pext_u32(live, kLowHalfEntries) | (_pext_u32(live, kHighHalfEntries) << 16);
    above += static_cast<uint32_t>(__builtin_popcount(
        _mm512_mask_cmpgt_epu16_mask(entries, bins, _mm512_set1_epi16(static_cast<short>(hi)))));
    const __m512i from_lo = _mm512_sub_epi16(bins, _mm512_set1_epi16(static_cast<short>(lo)));
    return {bins, _mm512_mask_cmple_epu16_mask(entries, from_lo,
                                               _mm512_set1_epi16(static_cast<short>(hi - lo)))};
  }
};

// The two kernels differ only in how they pack the bins inside (64 bytes stored per step, at
// inside + the count so far): one vpcompressw per 32 (AVX-512 VBMI2, which the x86-64-v4 level
// does not include), or each half widened to double words, packed by vpcompressd and narrowed
// back. Each returns the count and sets *above. (`steps` by value: the stores cannot alias it, as
// they could a caller's object, which would then be reloaded at every step.)
__attribute__((target("arch=x86-64-v4,avx512vbmi2"))) size_t pack_words(Steps steps,
                                                                        uint16_t* inside,
                                                                        uint32_t* above) {
  size_t count = 0;
  for (size_t j = 0; j < steps.len; j += 32) {
    const Step step = steps.at(j);
    _mm512_storeu_si512(inside + count, _mm512_maskz_compress_epi16(step.inside, step.bins));
    count += static_cast<size_t>(__builtin_popcount(step.inside));
  }
  *above = steps.above;
  return count;
}

// Words [16 kHalf, 16 kHalf + 16) of a step's bins that are inside, packed at out (32 bytes
// written) by way of double words; returns how many.
template <int kHalf>
ALLOY_V4 size_t pack_half_inside(const Step& step, uint16_t* out) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(step.bins, kHalf));
  const auto lanes = static_cast<__mmask16>(step.inside >> (16 * kHalf));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(lanes, wide)));
  return static_cast<size_t>(__builtin_popcount(lanes));
}

__attribute__((target("arch=x86-64-v4"))) size_t pack_double_words(Steps steps, uint16_t* inside,
                                                                   uint32_t* above) {
  size_t count = 0;
  for (size_t j = 0; j < steps.len; j += 32) {
    const Step step = steps.at(j);
    count += pack_half_inside<0>(step, inside + count);
    count += pack_half_inside<1>(step, inside + count);
  }
  *above = steps.above;
  return count;
}

}  // namespace

bool can_bracket_bins_bf16_avx512() {
  return cpu_has_x86_64_v4();
}

bool bracket_bins_packs_words() {
  return cpu_has_x86_64_v4() && cpu_has_avx512_vbmi2();
}

size_t bracket_bins_bf16_avx512(const uint16_t* x, const uint16_t* b, size_t len, uint32_t lo,
                                uint32_t hi, uint16_t* inside, uint32_t* above, bool words) {
  const Steps steps{x, b, len, lo, hi};
  return words && bracket_bins_packs_words() ? pack_words(steps, inside, above)
                                             : pack_double_words(steps, inside, above);
}

#else

bool can_bracket_bins_bf16_avx512() {
  return false;
}
bool bracket_bins_packs_words() {
  return false;
}
size_t bracket_bins_bf16_avx512(const uint16_t*, const uint16_t*, size_t, uint32_t, uint32_t,
                                uint16_t*, uint32_t*, bool) {
  return 0;
}

#endif

}  // namespace alloy::detail
