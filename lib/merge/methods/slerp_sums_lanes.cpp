// slerp's sums on bf16 rows in AVX-512 registers: see slerp_sums_lanes.h.
//
// Two chunks a and b are summed side by side in vectors of eight double lanes: lanes 0-3 are chunk
// a's four lanes, lanes 4-7 chunk b's. One 512-bit load holds 32 bf16 values of a row; a permute of
// the words with zero-masking (vpermt2w) takes four of a's and four of b's values into the high
// halves of 32-bit lanes, which makes them float32 values, in the order [a j..j+3, b j..j+3,
// a j+4..j+7, b j+4..j+7], and widening each 256-bit half gives the eight doubles of one step of
// the lanes (elements j..j+3 of each chunk), then of the next. The adds of a lane stay one chain
// in index order; the eight lanes and the three sums are independent chains side by side.
#include "slerp_sums_lanes.h"

#include <array>
#include <cstdint>

#include "alloy/core/cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every cast that passes one
// warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "bf16_lanes.h"
#define ALLOY_SLERP_SUMS_AVX512 1
#endif

namespace alloy::detail {

#if ALLOY_SLERP_SUMS_AVX512
namespace {

// The word indices of the permutes: permute q (0-3) of a 32-element group fills 32-bit lane d with
// element 8q + 4 (g / 2) + d % 4 of chunk a (g = d / 4 even) or of chunk b (g odd, indices from 32
// up: the permute's second source) in its high word. The low words are zeroed by the mask.
constexpr std::array<std::array<uint16_t, 32>, 4> pair_indices() {
  std::array<std::array<uint16_t, 32>, 4> index{};
  for (size_t q = 0; q < 4; ++q) {
    for (size_t d = 0; d < 16; ++d) {
      const size_t g = d / 4, element = 8 * q + 4 * (g / 2) + d % 4;
      index[q][2 * d + 1] = static_cast<uint16_t>(g % 2 == 0 ? element : 32 + element);
    }
  }
  return index;
}
alignas(64) constexpr std::array<std::array<uint16_t, 32>, 4> kPairIndex = pair_indices();
constexpr __mmask32 kHighWords = 0xAAAAAAAAu;

struct Sums8 {
  __m512d xx, yy, xy;
};

// One step of every lane: x and y hold element j + (lane % 4) of chunk a (lanes 0-3) or b (4-7).
// A fused multiply-add: the product of two bf16 values (8-bit significands) is exact in double, so
// rounding x * y + s once is rounding s + (x * y) after an exact product, the reference's bits.
// (The build's -ffp-contract=off kept the multiply and the add apart: 0.261 -> 0.218 ns per
// element pair standalone.)
ALLOY_V4 void add_step(Sums8& s, __m512d x, __m512d y) {
  s.xx = _mm512_fmadd_pd(x, x, s.xx);
  s.yy = _mm512_fmadd_pd(y, y, s.yy);
  s.xy = _mm512_fmadd_pd(x, y, s.xy);
}

// The eight steps of elements [j, j + 32) of both chunks. A group past the rows' end (`live` of
// the 32 elements are read, the others are +0) adds +0 * +0 = +0 to its lanes, which leaves them
// as they were: a lane starts at +0 and a sum is -0 only when both its terms are, so no lane is
// ever -0, and x + +0 = x for every other x (NaNs included).
ALLOY_V4 void add_group(Sums8& s, const uint16_t* xa, const uint16_t* ya, const uint16_t* xb,
                        const uint16_t* yb, __mmask32 live) {
  const __m512i xa_bits = _mm512_maskz_loadu_epi16(live, xa),
                xb_bits = _mm512_maskz_loadu_epi16(live, xb);
  const __m512i ya_bits = _mm512_maskz_loadu_epi16(live, ya),
                yb_bits = _mm512_maskz_loadu_epi16(live, yb);
#pragma GCC unroll 4
  for (size_t q = 0; q < 4; ++q) {
    const __m512i index = _mm512_load_si512(kPairIndex[q].data());
    const __m512 x =
        _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(kHighWords, xa_bits, index, xb_bits));
    const __m512 y =
        _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(kHighWords, ya_bits, index, yb_bits));
    add_step(s, _mm512_cvtps_pd(_mm512_castps512_ps256(x)),
             _mm512_cvtps_pd(_mm512_castps512_ps256(y)));
    add_step(s, _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)),
             _mm512_cvtps_pd(_mm512_extractf32x8_ps(y, 1)));
  }
}

// (l0 + l1) + (l2 + l3) of the four lanes from `first` (0: chunk a, 4: chunk b).
ALLOY_V4 double lanes_total(__m512d sum, size_t first) {
  alignas(64) double lane[8];
  _mm512_store_pd(lane, sum);
  return (lane[first] + lane[first + 1]) + (lane[first + 2] + lane[first + 3]);
}

__attribute__((target("arch=x86-64-v4"))) void pair_sums(const uint16_t* xa, const uint16_t* ya,
                                                         const uint16_t* xb, const uint16_t* yb,
                                                         size_t len, double* partial_a,
                                                         double* partial_b) {
  Sums8 s{_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
  size_t j = 0;
  for (; j + 32 <= len; j += 32) add_group(s, xa + j, ya + j, xb + j, yb + j, ~__mmask32{0});
  if (j < len) {
    add_group(s, xa + j, ya + j, xb + j, yb + j, _bzhi_u32(~0u, static_cast<unsigned>(len - j)));
  }
  const __m512d sums[3] = {s.xx, s.yy, s.xy};
  for (size_t k = 0; k < 3; ++k) {
    partial_a[k] = lanes_total(sums[k], 0);
    if (partial_b != nullptr) partial_b[k] = lanes_total(sums[k], 4);
  }
}

}  // namespace

bool can_slerp_sums_bf16_avx512() {
  return cpu_has_x86_64_v4();
}

// One chunk alone is summed as the pair (x, y) twice: its lanes are one chain each either way, and
// that chain's latency, not the work beside it, is what a lone chunk waits on.
void slerp_sums_bf16_avx512(const uint16_t* x, const uint16_t* y, size_t len, double* partial) {
  pair_sums(x, y, x, y, len, partial, nullptr);
}

void slerp_pair_sums_bf16_avx512(const uint16_t* xa, const uint16_t* ya, const uint16_t* xb,
                                 const uint16_t* yb, size_t len, double* partial_a,
                                 double* partial_b) {
  pair_sums(xa, ya, xb, yb, len, partial_a, partial_b);
}

#else

bool can_slerp_sums_bf16_avx512() {
  return false;
}
void slerp_sums_bf16_avx512(const uint16_t*, const uint16_t*, size_t, double*) {}
void slerp_pair_sums_bf16_avx512(const uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*,
                                 size_t, double*, double*) {}

#endif

}  // namespace alloy::detail
