// The kept-set classification one element at a time (kept_sets.h), for any number of others, and
// the choice between it and the lanes form (kept_set_lanes.cpp). The rules and why they hold are
// in sparse_subsets.cpp's opening comment and docs/assay.md, "DARE densities and rules".
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "kept_sets.h"

namespace alloy::detail {

void KeptSetCounts::resize(size_t k) {
  kept.assign(k, 0);
  solo.assign(k, 0);
  normal = Eigen::MatrixXd::Zero(Eigen::Index(k), Eigen::Index(k + 1));
  const size_t pairs = k >= 3 ? k * (k - 1) / 2 : 0;
  pair_bins.assign(pairs * kLambdaBins, 0);
  pair_sums.assign(pairs * kLambdaBins, 0.0);
}

void KeptSetCounts::add(const KeptSetCounts& o) {
  for (size_t j = 0; j < kept.size(); ++j) kept[j] += o.kept[j], solo[j] += o.solo[j];
  classifiable += o.classifiable, matched += o.matched, opposite += o.opposite, sum += o.sum;
  none += o.none, between += o.between, lambda_num += o.lambda_num, lambda_den += o.lambda_den;
  normal += o.normal;
  for (size_t j = 0; j < pair_bins.size(); ++j)
    pair_bins[j] += o.pair_bins[j], pair_sums[j] += o.pair_sums[j];
}

namespace {

// Under a normalised combination with two others, both kept makes S - C_b = l u_1 + (1 - l) u_2
// (l = w_1 / (w_1 + w_2)): strictly between the two, away from both by more than `tol` (the larger
// of their tolerances). The plain sum u_1 + u_2 of same-sign deltas lies outside that interval, so
// such an element is never one the plain-sum kept sets matched.
void count_between(const double* u, double r, double tol, KeptSetCounts& part) {
  const double low = std::min(u[0], u[1]), high = std::max(u[0], u[1]);
  if (!(r > low + tol && r < high - tol)) return;
  ++part.between;
  part.lambda_num += (r - u[1]) * (u[0] - u[1]);
  part.lambda_den += (u[0] - u[1]) * (u[0] - u[1]);
}

// With three or more others an element whose kept set is the pair {i, j} is r = l u_i + (1 - l) u_j
// with l = w_i / (w_i + w_j), the same l for every such element: it lands in one bin of the pair's
// histogram. Elements kept in other sets that happen to lie between u_i and u_j spread over all
// bins, so the pair's l is the mode. `tol`: each other's kept_set_tolerance(u_j); a pair's is the
// larger.
void count_pairs_between(const double* u, size_t k, double r, const double* tol,
                         KeptSetCounts& part) {
  size_t pair = 0;
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = i + 1; j < k; ++j, ++pair) {
      const double tol_pair = std::max(tol[i], tol[j]);
      const double low = std::min(u[i], u[j]), high = std::max(u[i], u[j]);
      if (!(r > low + tol_pair && r < high - tol_pair)) continue;
      const double l = (r - u[j]) / (u[i] - u[j]);
      const size_t bin = std::min(size_t(l * double(kLambdaBins)), kLambdaBins - 1);
      ++part.pair_bins[pair * kLambdaBins + bin];
      part.pair_sums[pair * kLambdaBins + bin] += l;
    }
  }
}

// Under a normalised sign consensus (della) with three or more others, the kept deltas of the
// elected sign make a weighted mean: a value inside the range of that sign's deltas, away from
// both ends by more than the larger of their tolerances (kept_set_tolerance).
bool normalized_mean_of_one_sign(const double* u, size_t k, double r, double b, double eps,
                                 const KeptSetTolerance& t, double slack) {
  double low = std::numeric_limits<double>::infinity(), high = -low;
  size_t same = 0;
  for (size_t j = 0; j < k; ++j) {
    if ((u[j] > 0) != (r > 0) || u[j] == 0) continue;
    ++same, low = std::min(low, u[j]), high = std::max(high, u[j]);
  }
  if (same < 2) return false;
  const double tol = std::max(kept_set_tolerance(b, low, std::fabs(low), eps, t, slack),
                              kept_set_tolerance(b, high, std::fabs(high), eps, t, slack));
  return r > low + tol && r < high - tol;
}

// Sum of u over the set bits of `set`; under consensus only the entries whose sign agrees with
// the sign of that sum (mergekit's "sum" sign election; a zero sum keeps nothing).
[[gnu::always_inline]] inline double subset_sum(const double* u, size_t k, unsigned set,
                                                bool consensus) {
  double total = 0;
  for (size_t j = 0; j < k; ++j) total += (set >> j & 1u) ? u[j] : 0.0;
  if (!consensus) return total;
  double agreeing = 0;
  for (size_t j = 0; j < k; ++j) {
    if ((set >> j & 1u) && ((u[j] > 0 && total > 0) || (u[j] < 0 && total < 0))) agreeing += u[j];
  }
  return agreeing;
}

// Sum of |u| over the set bits of `set`.
[[gnu::always_inline]] inline double subset_abs(const double* u, size_t k, unsigned set) {
  double total = 0;
  for (size_t j = 0; j < k; ++j) total += (set >> j & 1u) ? std::fabs(u[j]) : 0.0;
  return total;
}

// The classification of the elements of `at`, in order, into `part`, for K others: K is a template
// parameter so that the loops over the others and the 2^K kept sets unroll (with k a run-time
// value they were most of a sparse merge's assay time).
template <size_t K>
void classify(const ResolvedValues& at, const double* scale, double eps, const KeptSetTolerance& t,
              KeptSetCounts& part) {
  constexpr unsigned sets = 1u << K;
  double d[K], u[K], lin[sets], tol[sets];
  for (size_t i = 0; i < at.count; ++i) {
    const double b = at.base[i], s = at.suspect[i], r = s - b;
    double slack = 0;
    bool positive = false, negative = false;
    for (size_t j = 0; j < K; ++j) {
      d[j] = double(at.others[j][i]) - b;
      u[j] = scale[j] * d[j];
      slack += t.slack * std::fabs(d[j]);
      positive |= u[j] > 0, negative |= u[j] < 0;
    }
    if (positive && negative) {
      // Every value sign consensus makes, the plain sum makes too (with the losers
      // dropped), so only the other direction is evidence: S made by the plain sum of kept
      // deltas of both signs, and by no kept set under consensus. Under dare_linear that
      // happens whenever deltas of both signs are kept; under dare_ties never.
      bool by_sum = false, by_consensus = false;
      for (unsigned set = 0; set < sets; ++set) {
        const double plain = subset_sum(u, K, set, false), agreeing = subset_sum(u, K, set, true);
        const double set_abs = subset_abs(u, K, set);  // bounds the agreeing part's too
        by_sum |= std::fabs(r - plain) <= kept_set_tolerance(b, plain, set_abs, eps, t, slack);
        by_consensus |=
            std::fabs(r - agreeing) <= kept_set_tolerance(b, agreeing, set_abs, eps, t, slack);
      }
      if (K >= 3 && !by_consensus)
        by_consensus = normalized_mean_of_one_sign(u, K, r, b, eps, t, slack);
      ++part.opposite;
      part.sum += by_sum && !by_consensus;
      continue;
    }
    // Same sign: both rules agree. Classifiable when every two subset sums are farther apart
    // than their tolerances together.
    bool separated = true;
    for (unsigned a = 0; a < sets; ++a) {
      lin[a] = subset_sum(u, K, a, false);
      tol[a] = kept_set_tolerance(b, lin[a], subset_abs(u, K, a), eps, t, slack);
    }
    for (unsigned a = 0; a < sets && separated; ++a) {
      for (unsigned c = a + 1; c < sets && separated; ++c)
        separated = std::fabs(lin[a] - lin[c]) > tol[a] + tol[c];
    }
    if (!separated) continue;
    ++part.classifiable;
    bool found = false;
    for (unsigned set = 0; set < sets; ++set) {
      if (std::fabs(r - lin[set]) > tol[set]) continue;
      found = true;
      ++part.matched;
      if (set == 0) ++part.none;
      if (std::has_single_bit(set)) ++part.solo[size_t(std::countr_zero(set))];
      for (size_t j = 0; j < K; ++j) {
        if (!(set >> j & 1u)) continue;
        ++part.kept[j];
        for (size_t c = 0; c < K; ++c) {
          if (set >> c & 1u) part.normal(Eigen::Index(j), Eigen::Index(c)) += d[j] * d[c];
        }
        part.normal(Eigen::Index(j), Eigen::Index(K)) += d[j] * r;
      }
      break;
    }
    // A kept set of one is lin[1 << j] = 0 + u_j = u_j: its tolerance is u_j's.
    double tol_of[K];
    for (size_t j = 0; j < K; ++j) tol_of[j] = tol[1u << j];
    if (!found && K == 2) count_between(u, r, std::max(tol_of[0], tol_of[1]), part);
    if (!found && K >= 3) count_pairs_between(u, K, r, tol_of, part);
  }
}

}  // namespace

void classify_kept_sets_one_by_one(size_t k, const ResolvedValues& at, const double* scale,
                                   double eps, const KeptSetTolerance& tolerance,
                                   KeptSetCounts& part) {
  switch (k) {
    case 1:
      return classify<1>(at, scale, eps, tolerance, part);
    case 2:
      return classify<2>(at, scale, eps, tolerance, part);
    case 3:
      return classify<3>(at, scale, eps, tolerance, part);
    default:
      return classify<4>(at, scale, eps, tolerance, part);  // kMaxSubsetCandidates (internal.h)
  }
}

void classify_kept_sets(size_t k, const ResolvedValues& at, const double* scale, double eps,
                        const KeptSetTolerance& tolerance, KeptSetCounts& part) {
  if (!classify_kept_sets_in_lanes(k, at, scale, eps, tolerance, part))
    classify_kept_sets_one_by_one(k, at, scale, eps, tolerance, part);
}

}  // namespace alloy::detail
