// linear's and slerp's bf16 weighted sums in AVX-512 registers: see weighted_sum_lanes.h.
//
// 32 bf16 elements are one 512-bit load, widened into float32 lanes in bf16_lanes.h's order
// (widen_low: 0-3, 8-11, 16-19, 24-27; widen_high: 4-7, 12-15, 20-23, 28-31). The merge is
// element-wise, so the order does not matter until the store, and vpackusdw of the two results'
// high halves puts the elements back in their order (it packs per 128-bit lane, low then high: the
// inverse).
#include "weighted_sum_lanes.h"

#include <cstdint>

#include "alloy/core/cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every cast that passes one
// warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "bf16_lanes.h"
#define ALLOY_LINEAR_AVX512 1
#endif

namespace alloy::detail {

#if ALLOY_LINEAR_AVX512
namespace {

using bf16_lanes::round_keeping_nan;

// The output's last steps: normalize, then NaNs made 0x7FC00000 (counted with the infinities).
template <LinearNormalize kNormalize>
ALLOY_V4 __m512 finish(__m512 sum, __m512 factor, size_t* bad) {
  __m512 o = round_keeping_nan(sum);
  if constexpr (kNormalize == LinearNormalize::kDivide)
    o = round_keeping_nan(_mm512_div_ps(o, factor));
  if constexpr (kNormalize == LinearNormalize::kMultiply)
    o = round_keeping_nan(_mm512_mul_ps(o, factor));
  // QNaN 0x01, +inf 0x08, -inf 0x10, SNaN 0x80. Rare: only then is anything replaced.
  if (const __mmask16 odd = _mm512_fpclass_ps_mask(o, 0x99); odd != 0) {
    *bad += static_cast<size_t>(__builtin_popcount(odd));
    o = _mm512_mask_mov_ps(o, _mm512_cmp_ps_mask(o, o, _CMP_UNORD_Q),
                           _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
  }
  return o;
}

// 32 elements from j (kWhole), or the `live` ones of them (the others read as 0, a finite value,
// and are not stored). kStream: out + j is 64-byte aligned, and whole groups are stored past the
// caches (vmovntdq). The output is a write-behind window that the kernel's copy into the page cache
// reads later, after other windows have gone through the caches. Stored the ordinary way, each of
// its lines is first read in (for ownership): on a 1 GB merge this kernel took 438-502 perf samples
// that way and 349-395 streamed, with no more in that copy.
// kBlend: slerp's s0 * a + s1 * b (two models, the products not rounded); else linear's
// 0 + rnd(w_0 * x_0) + ... (the sums start at +0, as the reference's).
template <size_t kModels, LinearNormalize kNormalize, bool kBlend, bool kWhole,
          bool kStream = false>
ALLOY_V4 size_t merge_32(const uint16_t* const* xs, const __m512* weight, __m512 factor, size_t j,
                         __mmask32 live, uint16_t* out) {
  __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (size_t m = 0; m < kModels; ++m) {
    const __m512i bits =
        kWhole ? _mm512_loadu_si512(xs[m] + j) : _mm512_maskz_loadu_epi16(live, xs[m] + j);
    const __m512 x_low = bf16_lanes::widen_low(bits), x_high = bf16_lanes::widen_high(bits);
    if constexpr (kBlend) {
      static_assert(kModels == 2);
      if (m == 0) {
        low = _mm512_mul_ps(weight[0], x_low), high = _mm512_mul_ps(weight[0], x_high);
      } else {
        low = _mm512_add_ps(low, _mm512_mul_ps(weight[1], x_low));
        high = _mm512_add_ps(high, _mm512_mul_ps(weight[1], x_high));
      }
    } else {
      low = _mm512_add_ps(low, round_keeping_nan(_mm512_mul_ps(weight[m], x_low)));
      high = _mm512_add_ps(high, round_keeping_nan(_mm512_mul_ps(weight[m], x_high)));
    }
  }
  size_t bad = 0;
  const __m512i o_low =
      _mm512_srli_epi32(_mm512_castps_si512(finish<kNormalize>(low, factor, &bad)), 16);
  const __m512i o_high =
      _mm512_srli_epi32(_mm512_castps_si512(finish<kNormalize>(high, factor, &bad)), 16);
  const __m512i packed = _mm512_packus_epi32(o_low, o_high);
  if constexpr (kWhole) {
    if constexpr (kStream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(out + j), packed);
    } else {
      _mm512_storeu_si512(out + j, packed);
    }
  } else {
    _mm512_mask_storeu_epi16(out + j, live, packed);
  }
  return bad;
}

template <size_t kModels, LinearNormalize kNormalize, bool kBlend = false>
__attribute__((target("arch=x86-64-v4"))) size_t merge_lanes(const uint16_t* const* xs,
                                                             const float* weights,
                                                             float factor_value, size_t len,
                                                             uint16_t* out) {
  __m512 weight[kModels];
  for (size_t m = 0; m < kModels; ++m) weight[m] = _mm512_set1_ps(weights[m]);
  const __m512 factor = _mm512_set1_ps(factor_value);
  const __mmask32 all = ~__mmask32{0};
  size_t bad = 0, j = 0;
  if (reinterpret_cast<uintptr_t>(out) % 64 == 0) {
    for (; j + 32 <= len; j += 32) {
      bad += merge_32<kModels, kNormalize, kBlend, true, true>(xs, weight, factor, j, all, out);
    }
    // The streamed stores are weakly ordered: they reach memory before anything this thread does
    // next (handing the window to the writer), as ordinary stores would.
    _mm_sfence();
  } else {
    for (; j + 32 <= len; j += 32) {
      bad += merge_32<kModels, kNormalize, kBlend, true>(xs, weight, factor, j, all, out);
    }
  }
  if (j < len) {
    const __mmask32 live = _bzhi_u32(~0u, static_cast<unsigned>(len - j));
    bad += merge_32<kModels, kNormalize, kBlend, false>(xs, weight, factor, j, live, out);
  }
  return bad;
}

using MergeLanesFn = size_t (*)(const uint16_t* const*, const float*, float, size_t, uint16_t*);

template <size_t kModels>
MergeLanesFn merge_lanes_for(LinearNormalize normalize) {
  switch (normalize) {
    case LinearNormalize::kDivide:
      return merge_lanes<kModels, LinearNormalize::kDivide>;
    case LinearNormalize::kMultiply:
      return merge_lanes<kModels, LinearNormalize::kMultiply>;
    default:
      return merge_lanes<kModels, LinearNormalize::kNone>;
  }
}

}  // namespace

bool can_weighted_sum_bf16_avx512(size_t models) {
  return models >= 1 && models <= kMaxLinearLanesModels && cpu_has_x86_64_v4();
}

size_t linear_bf16_avx512(const uint16_t* const* xs, const float* weights, size_t count,
                          LinearNormalize normalize, float factor, size_t len, uint16_t* out) {
  static constexpr MergeLanesFn (*kByCount[])(LinearNormalize) = {
      merge_lanes_for<1>, merge_lanes_for<2>, merge_lanes_for<3>, merge_lanes_for<4>};
  return kByCount[count - 1](normalize)(xs, weights, factor, len, out);
}

size_t slerp_blend_bf16_avx512(const uint16_t* a, const uint16_t* b, float s0, float s1, size_t len,
                               uint16_t* out) {
  const uint16_t* xs[2] = {a, b};
  const float weights[2] = {s0, s1};
  return merge_lanes<2, LinearNormalize::kNone, true>(xs, weights, 1.0f, len, out);
}

#else

bool can_weighted_sum_bf16_avx512(size_t) {
  return false;
}
size_t linear_bf16_avx512(const uint16_t* const*, const float*, size_t, LinearNormalize, float,
                          size_t, uint16_t*) {
  return 0;
}
size_t slerp_blend_bf16_avx512(const uint16_t*, const uint16_t*, float, float, size_t, uint16_t*) {
  return 0;
}

#endif

}  // namespace alloy::detail
