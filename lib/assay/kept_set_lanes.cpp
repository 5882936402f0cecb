// The kept-set classification eight elements at a time (kept_sets.h), for one or two others: the
// one-by-one form's tests (kept_set_classify.cpp) as AVX-512 comparisons into lane masks, its
// counts as the masks' popcounts, and its sums of doubles added lane by lane in element order, so
// that both forms give the same counts and the same sums, bit for bit. Each step mirrors one
// operation of that form: the same roundings in the same order, a test that reads "not greater"
// there is "not greater" here (unordered included), and the same min and max on NaN. Elements one
// form did not add to a sum add +0.0 here, which leaves a sum that starts at +0.0 unchanged.
#include <bit>
#include <cstddef>
#include <cstdint>

#include "alloy/core/cpu_features.h"
#include "kept_sets.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every intrinsic that passes
// one warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define ALLOY_KEPT_SET_LANES 1
#endif

namespace alloy::detail {

#if ALLOY_KEPT_SET_LANES
namespace {

#define ALLOY_V4 __attribute__((target("arch=x86-64-v4")))

ALLOY_V4 inline __m512d load_lanes(const float* p, __mmask8 valid) {
  return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(valid, p));
}
ALLOY_V4 inline __m512d abs_lanes(__m512d x) {
  return _mm512_andnot_pd(_mm512_set1_pd(-0.0), x);
}
// |r - value| <= tol
ALLOY_V4 inline __mmask8 within(__m512d r, __m512d value, __m512d tol) {
  return _mm512_cmp_pd_mask(abs_lanes(_mm512_sub_pd(r, value)), tol, _CMP_LE_OQ);
}
// !(|r - value| > tol): also where either side is NaN
ALLOY_V4 inline __mmask8 not_beyond(__m512d r, __m512d value, __m512d tol) {
  return _mm512_cmp_pd_mask(abs_lanes(_mm512_sub_pd(r, value)), tol, _CMP_NGT_UQ);
}
ALLOY_V4 inline uint64_t lanes_in(__mmask8 m) {
  return uint64_t(std::popcount(unsigned(m)));
}

// sums[e] += terms[e]'s lanes 0, 1, ..., 7 in turn: the element order of the one-by-one form.
template <size_t E>
ALLOY_V4 inline void add_in_element_order(double* sums, const __m512d* terms) {
  alignas(64) double lanes[E][8];
  for (size_t e = 0; e < E; ++e) _mm512_store_pd(lanes[e], terms[e]);
  for (size_t l = 0; l < 8; ++l) {
    for (size_t e = 0; e < E; ++e) sums[e] += lanes[e][l];
  }
}

template <size_t K>
ALLOY_V4 void classify_lanes(const ResolvedValues& at, const double* scale, double eps,
                             KeptSetCounts& part) {
  constexpr unsigned sets = 1u << K;
  constexpr size_t entries = K * (K + 1);  // the normal equations, row by row
  double normal[entries], lambda[2] = {part.lambda_num, part.lambda_den};
  for (size_t j = 0; j < K; ++j) {
    for (size_t c = 0; c <= K; ++c)
      normal[j * (K + 1) + c] = part.normal(Eigen::Index(j), Eigen::Index(c));
  }
  uint64_t kept[K] = {}, solo[K] = {};
  const __m512d zero = _mm512_setzero_pd(), slack_share = _mm512_set1_pd(kScaleSlack);
  const __m512d four_eps = _mm512_set1_pd(4 * eps), two = _mm512_set1_pd(2.0);
  __m512d a[K];
  for (size_t j = 0; j < K; ++j) a[j] = _mm512_set1_pd(scale[j]);
  for (size_t i = 0; i < at.count; i += 8) {
    const size_t left = at.count - i;
    const __mmask8 valid = left >= 8 ? __mmask8(0xFF) : __mmask8((1u << left) - 1);
    const __m512d b = load_lanes(at.base + i, valid), s = load_lanes(at.suspect + i, valid);
    const __m512d r = _mm512_sub_pd(s, b);
    __m512d d[K], u[K], slack = zero;
    __mmask8 positive = 0, negative = 0;
    for (size_t j = 0; j < K; ++j) {
      d[j] = _mm512_sub_pd(load_lanes(at.others[j] + i, valid), b);
      u[j] = _mm512_mul_pd(a[j], d[j]);
      slack = _mm512_add_pd(slack, _mm512_mul_pd(slack_share, abs_lanes(d[j])));
      positive |= _mm512_cmp_pd_mask(u[j], zero, _CMP_GT_OQ);
      negative |= _mm512_cmp_pd_mask(u[j], zero, _CMP_LT_OQ);
    }
    const __m512d tol =
        _mm512_add_pd(_mm512_mul_pd(four_eps, _mm512_add_pd(abs_lanes(b), abs_lanes(s))), slack);
    // The subset sums, plain and under sign consensus.
    __m512d lin[sets];
    __mmask8 by_sum = 0, by_consensus = 0;
    for (unsigned set = 0; set < sets; ++set) {
      __m512d total = zero;
      for (size_t j = 0; j < K; ++j) total = _mm512_add_pd(total, (set >> j & 1u) ? u[j] : zero);
      lin[set] = total;
      __m512d agreeing = zero;
      for (size_t j = 0; j < K; ++j) {
        if (!(set >> j & 1u)) continue;
        const __mmask8 agrees = (_mm512_cmp_pd_mask(u[j], zero, _CMP_GT_OQ) &
                                 _mm512_cmp_pd_mask(total, zero, _CMP_GT_OQ)) |
                                (_mm512_cmp_pd_mask(u[j], zero, _CMP_LT_OQ) &
                                 _mm512_cmp_pd_mask(total, zero, _CMP_LT_OQ));
        agreeing = _mm512_mask_add_pd(agreeing, agrees, agreeing, u[j]);
      }
      by_sum |= within(r, total, tol);
      by_consensus |= within(r, agreeing, tol);
    }
    const __mmask8 opposite = positive & negative & valid;
    part.opposite += lanes_in(opposite);
    part.sum += lanes_in(opposite & by_sum & __mmask8(~by_consensus));
    // Same sign: classifiable where every two subset sums are apart; then the first kept set
    // that makes S.
    const __m512d two_tol = _mm512_mul_pd(two, tol);
    __mmask8 separated = valid & __mmask8(~(positive & negative));
    for (unsigned x = 0; x < sets; ++x) {
      for (unsigned y = x + 1; y < sets; ++y)
        separated &=
            _mm512_cmp_pd_mask(abs_lanes(_mm512_sub_pd(lin[x], lin[y])), two_tol, _CMP_GT_OQ);
    }
    part.classifiable += lanes_in(separated);
    __mmask8 unmatched = separated, first[sets];
    for (unsigned set = 0; set < sets; ++set) {
      first[set] = not_beyond(r, lin[set], tol) & unmatched;
      unmatched &= __mmask8(~first[set]);
    }
    part.matched += lanes_in(separated & __mmask8(~unmatched));
    part.none += lanes_in(first[0]);
    __mmask8 holds[K] = {};  // the matched elements whose kept set holds other j
    for (unsigned set = 1; set < sets; ++set) {
      for (size_t j = 0; j < K; ++j) holds[j] |= (set >> j & 1u) ? first[set] : __mmask8(0);
    }
    for (size_t j = 0; j < K; ++j) {
      solo[j] += lanes_in(first[1u << j]);
      kept[j] += lanes_in(holds[j]);
    }
    if (separated & __mmask8(~unmatched) & __mmask8(~first[0])) {
      __m512d terms[entries];
      for (size_t j = 0; j < K; ++j) {
        for (size_t c = 0; c < K; ++c)
          terms[j * (K + 1) + c] =
              _mm512_maskz_mov_pd(holds[j] & holds[c], _mm512_mul_pd(d[j], d[c]));
        terms[j * (K + 1) + K] = _mm512_maskz_mov_pd(holds[j], _mm512_mul_pd(d[j], r));
      }
      add_in_element_order<entries>(normal, terms);
    }
    if constexpr (K == 2) {  // strictly between u_1 and u_2 (count_between)
      const __m512d low = _mm512_min_pd(u[1], u[0]), high = _mm512_max_pd(u[1], u[0]);
      const __mmask8 between = unmatched &
                               _mm512_cmp_pd_mask(r, _mm512_add_pd(low, tol), _CMP_GT_OQ) &
                               _mm512_cmp_pd_mask(r, _mm512_sub_pd(high, tol), _CMP_LT_OQ);
      part.between += lanes_in(between);
      if (between) {
        const __m512d apart = _mm512_sub_pd(u[0], u[1]);
        const __m512d terms[2] = {
            _mm512_maskz_mov_pd(between, _mm512_mul_pd(_mm512_sub_pd(r, u[1]), apart)),
            _mm512_maskz_mov_pd(between, _mm512_mul_pd(apart, apart))};
        add_in_element_order<2>(lambda, terms);
      }
    }
  }
  for (size_t j = 0; j < K; ++j) {
    part.kept[j] += kept[j], part.solo[j] += solo[j];
    for (size_t c = 0; c <= K; ++c)
      part.normal(Eigen::Index(j), Eigen::Index(c)) = normal[j * (K + 1) + c];
  }
  part.lambda_num = lambda[0], part.lambda_den = lambda[1];
}

#undef ALLOY_V4

}  // namespace
#endif

bool classify_kept_sets_in_lanes(size_t k, const ResolvedValues& at, const double* scale,
                                 double eps, KeptSetCounts& part) {
#if ALLOY_KEPT_SET_LANES
  static const bool v4 = cpu_has_x86_64_v4();
  if (!v4) return false;
  if (k == 1) return classify_lanes<1>(at, scale, eps, part), true;
  if (k == 2) return classify_lanes<2>(at, scale, eps, part), true;
#else
  (void)k, (void)at, (void)scale, (void)eps, (void)part;
#endif
  return false;
}

}  // namespace alloy::detail
