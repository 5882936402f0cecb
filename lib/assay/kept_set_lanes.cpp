// The kept-set classification eight elements at a time (kept_sets.h), for one to four others: the
// one-by-one form's tests (kept_set_classify.cpp) as AVX-512 comparisons into lane masks, its
// counts as the masks' popcounts, and its sums of doubles added lane by lane in element order, so
// that both forms give the same counts and the same sums, bit for bit. Each step mirrors one
// operation of that form: the same roundings in the same order, a test that reads "not greater"
// there is "not greater" here (unordered included), and the same min and max on NaN. Elements one
// form did not add to a sum add +0.0 here, which leaves a sum that starts at +0.0 unchanged.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>

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

// A KeptSetTolerance in lanes, with the unit roundoff.
struct LaneTolerance {
  __m512d eps, base, sum, kept, slack;
  bool with_kept;
};
ALLOY_V4 inline LaneTolerance lane_tolerance(double eps, const KeptSetTolerance& t) {
  return {_mm512_set1_pd(eps),    _mm512_set1_pd(t.base),  _mm512_set1_pd(t.sum),
          _mm512_set1_pd(t.kept), _mm512_set1_pd(t.slack), t.kept != 0};
}
// kept_set_tolerance (kept_sets.h): eps (base |b| + sum |b + v| [+ kept kept_abs]) + slack.
ALLOY_V4 inline __m512d tolerance_at(__m512d b, __m512d v, __m512d kept_abs, const LaneTolerance& t,
                                     __m512d slack) {
  __m512d rounding = _mm512_add_pd(_mm512_mul_pd(t.base, abs_lanes(b)),
                                   _mm512_mul_pd(t.sum, abs_lanes(_mm512_add_pd(b, v))));
  if (t.with_kept) rounding = _mm512_add_pd(rounding, _mm512_mul_pd(t.kept, kept_abs));
  return _mm512_add_pd(_mm512_mul_pd(t.eps, rounding), slack);
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

// Three or more others, opposite signs: where the deltas of r's sign (two or more, nonzero) have r
// strictly inside their range, a weighted mean of them (normalized_mean_of_one_sign).
template <size_t K>
ALLOY_V4 inline __mmask8 mean_of_one_sign(const __m512d* u, __m512d r, __m512d b,
                                          const LaneTolerance& t, __m512d slack) {
  const __m512d zero = _mm512_setzero_pd();
  const __mmask8 r_positive = _mm512_cmp_pd_mask(r, zero, _CMP_GT_OQ);
  __m512d low = _mm512_set1_pd(std::numeric_limits<double>::infinity());
  __m512d high = _mm512_set1_pd(-std::numeric_limits<double>::infinity());
  __mmask8 once = 0, twice = 0;  // lanes with at least one, two such deltas
  for (size_t j = 0; j < K; ++j) {
    const __mmask8 positive = _mm512_cmp_pd_mask(u[j], zero, _CMP_GT_OQ);
    const __mmask8 same =
        __mmask8(~(positive ^ r_positive)) & _mm512_cmp_pd_mask(u[j], zero, _CMP_NEQ_UQ);
    low = _mm512_mask_min_pd(low, same, u[j], low);     // std::min(low, u): u < low ? u : low
    high = _mm512_mask_max_pd(high, same, u[j], high);  // std::max(high, u): u > high ? u : high
    twice |= once & same;
    once |= same;
  }
  // std::max(tolerance at low, at high): the second where the first is less, else the first.
  const __m512d tol = _mm512_max_pd(tolerance_at(b, high, abs_lanes(high), t, slack),
                                    tolerance_at(b, low, abs_lanes(low), t, slack));
  return twice & _mm512_cmp_pd_mask(r, _mm512_add_pd(low, tol), _CMP_GT_OQ) &
         _mm512_cmp_pd_mask(r, _mm512_sub_pd(high, tol), _CMP_LT_OQ);
}

// Three or more others: the unmatched classifiable elements strictly between u_i and u_j, per pair
// (i < j), into the pair's histogram of l = (r - u_j) / (u_i - u_j) and its sums per bin, lane by
// lane in element order (count_pairs_between); `tol`: each other's tolerance, a pair's the larger.
template <size_t K>
ALLOY_V4 inline void count_pairs_between(const __m512d* u, __m512d r, const __m512d* tol,
                                         __mmask8 unmatched, KeptSetCounts& part) {
  constexpr size_t pairs = K * (K - 1) / 2;
  if (!unmatched) return;
  __mmask8 between[pairs];
  alignas(64) double l[pairs][8];
  alignas(32) uint32_t bin[pairs][8];
  __mmask8 any = 0;
  size_t pair = 0;
  for (size_t i = 0; i < K; ++i) {
    for (size_t j = i + 1; j < K; ++j, ++pair) {
      const __m512d low = _mm512_min_pd(u[j], u[i]), high = _mm512_max_pd(u[j], u[i]);
      const __m512d tol_pair = _mm512_max_pd(tol[j], tol[i]);
      between[pair] = unmatched & _mm512_cmp_pd_mask(r, _mm512_add_pd(low, tol_pair), _CMP_GT_OQ) &
                      _mm512_cmp_pd_mask(r, _mm512_sub_pd(high, tol_pair), _CMP_LT_OQ);
      any |= between[pair];
      const __m512d ratio =
          _mm512_maskz_div_pd(between[pair], _mm512_sub_pd(r, u[j]), _mm512_sub_pd(u[i], u[j]));
      _mm512_store_pd(l[pair], ratio);
      // l is inside (0, 1) on the lanes between: its bin converts without overflow.
      const __m256i b =
          _mm512_cvttpd_epu32(_mm512_mul_pd(ratio, _mm512_set1_pd(double(kLambdaBins))));
      _mm256_store_si256(reinterpret_cast<__m256i*>(bin[pair]),
                         _mm256_min_epu32(b, _mm256_set1_epi32(int(kLambdaBins - 1))));
    }
  }
  for (; any; any &= __mmask8(any - 1)) {
    const unsigned lane = unsigned(std::countr_zero(unsigned(any)));
    for (size_t p = 0; p < pairs; ++p) {
      if (!(between[p] >> lane & 1u)) continue;
      const size_t at = p * kLambdaBins + bin[p][lane];
      ++part.pair_bins[at];
      part.pair_sums[at] += l[p][lane];
    }
  }
}

template <size_t K>
ALLOY_V4 void classify_lanes(const ResolvedValues& at, const double* scale, double eps,
                             const KeptSetTolerance& tolerance, KeptSetCounts& part) {
  constexpr unsigned sets = 1u << K;
  constexpr size_t entries = K * (K + 1);  // the normal equations, row by row
  double normal[entries], lambda[2] = {part.lambda_num, part.lambda_den};
  for (size_t j = 0; j < K; ++j) {
    for (size_t c = 0; c <= K; ++c)
      normal[j * (K + 1) + c] = part.normal(Eigen::Index(j), Eigen::Index(c));
  }
  uint64_t kept[K] = {}, solo[K] = {};
  const __m512d zero = _mm512_setzero_pd();
  const LaneTolerance t = lane_tolerance(eps, tolerance);
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
      slack = _mm512_add_pd(slack, _mm512_mul_pd(t.slack, abs_lanes(d[j])));
      positive |= _mm512_cmp_pd_mask(u[j], zero, _CMP_GT_OQ);
      negative |= _mm512_cmp_pd_mask(u[j], zero, _CMP_LT_OQ);
    }
    // The subset sums, plain and under sign consensus, and the plain ones' tolerances.
    __m512d lin[sets], tol[sets];
    __mmask8 by_sum = 0, by_consensus = 0;
    for (unsigned set = 0; set < sets; ++set) {
      __m512d total = zero, total_abs = zero;
      for (size_t j = 0; j < K; ++j) total = _mm512_add_pd(total, (set >> j & 1u) ? u[j] : zero);
      if (t.with_kept) {  // subset_abs
        for (size_t j = 0; j < K; ++j)
          total_abs = _mm512_add_pd(total_abs, (set >> j & 1u) ? abs_lanes(u[j]) : zero);
      }
      lin[set] = total;
      tol[set] = tolerance_at(b, total, total_abs, t, slack);
      __m512d agreeing = zero;
      for (size_t j = 0; j < K; ++j) {
        if (!(set >> j & 1u)) continue;
        const __mmask8 agrees = (_mm512_cmp_pd_mask(u[j], zero, _CMP_GT_OQ) &
                                 _mm512_cmp_pd_mask(total, zero, _CMP_GT_OQ)) |
                                (_mm512_cmp_pd_mask(u[j], zero, _CMP_LT_OQ) &
                                 _mm512_cmp_pd_mask(total, zero, _CMP_LT_OQ));
        agreeing = _mm512_mask_add_pd(agreeing, agrees, agreeing, u[j]);
      }
      by_sum |= within(r, total, tol[set]);
      by_consensus |= within(r, agreeing, tolerance_at(b, agreeing, total_abs, t, slack));
    }
    if constexpr (K >= 3) by_consensus |= mean_of_one_sign<K>(u, r, b, t, slack);
    const __mmask8 opposite = positive & negative & valid;
    part.opposite += lanes_in(opposite);
    part.sum += lanes_in(opposite & by_sum & __mmask8(~by_consensus));
    // Same sign: classifiable where every two subset sums are farther apart than their
    // tolerances together; then the first kept set that makes S.
    __mmask8 separated = valid & __mmask8(~(positive & negative));
    for (unsigned x = 0; x < sets; ++x) {
      for (unsigned y = x + 1; y < sets; ++y)
        separated &= _mm512_cmp_pd_mask(abs_lanes(_mm512_sub_pd(lin[x], lin[y])),
                                        _mm512_add_pd(tol[x], tol[y]), _CMP_GT_OQ);
    }
    part.classifiable += lanes_in(separated);
    __mmask8 unmatched = separated, first[sets];
    for (unsigned set = 0; set < sets; ++set) {
      first[set] = not_beyond(r, lin[set], tol[set]) & unmatched;
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
    __m512d tol_of[K];  // a kept set of one: its tolerance is u_j's
    for (size_t j = 0; j < K; ++j) tol_of[j] = tol[1u << j];
    if constexpr (K == 2) {  // strictly between u_1 and u_2 (count_between)
      const __m512d low = _mm512_min_pd(u[1], u[0]), high = _mm512_max_pd(u[1], u[0]);
      const __m512d tol = _mm512_max_pd(tol_of[1], tol_of[0]);
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
    if constexpr (K >= 3) count_pairs_between<K>(u, r, tol_of, unmatched, part);
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
                                 double eps, const KeptSetTolerance& tolerance,
                                 KeptSetCounts& part) {
#if ALLOY_KEPT_SET_LANES
  static const bool v4 = cpu_has_x86_64_v4();
  if (!v4) return false;
  switch (k) {
    case 1:
      return classify_lanes<1>(at, scale, eps, tolerance, part), true;
    case 2:
      return classify_lanes<2>(at, scale, eps, tolerance, part), true;
    case 3:
      return classify_lanes<3>(at, scale, eps, tolerance, part), true;
    case 4:
      return classify_lanes<4>(at, scale, eps, tolerance, part), true;
  }
#else
  (void)k, (void)at, (void)scale, (void)eps, (void)tolerance, (void)part;
#endif
  return false;
}

}  // namespace alloy::detail
