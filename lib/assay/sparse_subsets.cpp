// DARE's kept sets, read element by element. Under dare_ties / dare_linear, S - C_b is the sum of
// a_i * delta_i over the candidates i whose entry was kept (a_i = w_i / density_i, the rescaled
// weight), minus, under sign consensus, those whose sign lost the vote. With the scales a_i known
// (approximately: the ratio histogram's mode, sparse.cpp), every element whose subset sums are far
// enough apart names its kept set. Counting those sets gives each candidate's density and, on
// opposite-sign elements, whether the plain sum (dare_linear) made some of them: sign consensus
// (dare_ties) never can.
//
// Unbiasedness: DARE keeps each entry independently of its value, so restricting the count to
// elements chosen by their values (well resolved, every delta of one sign, subset sums separated)
// leaves each candidate's keep rate unchanged. docs/assay.md, "DARE densities and rules".
#include <Eigen/Dense>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "alloy/core/dtype.h"
#include "internal.h"
#include "subchunks.h"

namespace alloy::detail {
namespace {

// How far the binned mode (0.02 wide bins) may be from a_i, as a share of |delta_i|.
constexpr double kScaleSlack = 0.015;
// With three or more others, the relative weight l = w_i / (w_i + w_j) of each pair is read as the
// mode of a histogram over (0, 1) in bins this many; a mode needs this many elements around it.
constexpr size_t kLambdaBins = 100;
constexpr uint64_t kLambdaMinCount = 8;

double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::BF16: return std::ldexp(1.0, -8);
    case DType::F16: return std::ldexp(1.0, -11);
    default: return std::ldexp(1.0, -24);
  }
}

struct Counts {
  std::vector<uint64_t> kept;  // [other]
  std::vector<uint64_t> solo;  // [other]: matched by that other alone
  uint64_t classifiable = 0, matched = 0, opposite = 0, sum = 0;
  uint64_t none = 0, between = 0;  // matched by no kept delta; (two others) strictly between u_1, u_2
  double lambda_num = 0, lambda_den = 0;  // sum (r - u_2)(u_1 - u_2), sum (u_1 - u_2)^2 over "between"
  // Three or more others: per pair (i < j, in pair_index order), the elements strictly between u_i
  // and u_j by bin of l = (r - u_j) / (u_i - u_j), and the sum of l per bin.
  std::vector<uint64_t> pair_bins;
  std::vector<double> pair_sums;
  Eigen::MatrixXd normal;      // [k x (k + 1)]: the normal equations for a, then the right-hand side
  void resize(size_t k) {
    kept.assign(k, 0);
    solo.assign(k, 0);
    normal = Eigen::MatrixXd::Zero(Eigen::Index(k), Eigen::Index(k + 1));
    const size_t pairs = k >= 3 ? k * (k - 1) / 2 : 0;
    pair_bins.assign(pairs * kLambdaBins, 0);
    pair_sums.assign(pairs * kLambdaBins, 0.0);
  }
  void add(const Counts& o) {
    for (size_t j = 0; j < kept.size(); ++j) kept[j] += o.kept[j], solo[j] += o.solo[j];
    classifiable += o.classifiable, matched += o.matched, opposite += o.opposite, sum += o.sum;
    none += o.none, between += o.between, lambda_num += o.lambda_num, lambda_den += o.lambda_den;
    normal += o.normal;
    for (size_t j = 0; j < pair_bins.size(); ++j) pair_bins[j] += o.pair_bins[j], pair_sums[j] += o.pair_sums[j];
  }
};

// Under a normalised combination with two others, both kept makes S - C_b = l u_1 + (1 - l) u_2
// (l = w_1 / (w_1 + w_2)): strictly between the two, away from both by more than `tol`. The plain
// sum u_1 + u_2 of same-sign deltas lies outside that interval, so such an element is never one
// the plain-sum kept sets matched.
void count_between(const double* u, double r, double tol, Counts& part) {
  const double low = std::min(u[0], u[1]), high = std::max(u[0], u[1]);
  if (!(r > low + tol && r < high - tol)) return;
  ++part.between;
  part.lambda_num += (r - u[1]) * (u[0] - u[1]);
  part.lambda_den += (u[0] - u[1]) * (u[0] - u[1]);
}

// With three or more others an element whose kept set is the pair {i, j} is r = l u_i + (1 - l) u_j
// with l = w_i / (w_i + w_j), the same l for every such element: it lands in one bin of the pair's
// histogram. Elements kept in other sets that happen to lie between u_i and u_j spread over all
// bins, so the pair's l is the mode.
void count_pairs_between(const double* u, size_t k, double r, double tol, Counts& part) {
  size_t pair = 0;
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = i + 1; j < k; ++j, ++pair) {
      const double low = std::min(u[i], u[j]), high = std::max(u[i], u[j]);
      if (!(r > low + tol && r < high - tol)) continue;
      const double l = (r - u[j]) / (u[i] - u[j]);
      const size_t bin = std::min(size_t(l * double(kLambdaBins)), kLambdaBins - 1);
      ++part.pair_bins[pair * kLambdaBins + bin];
      part.pair_sums[pair * kLambdaBins + bin] += l;
    }
  }
}

// The relative weights w_i (summing to 1) of three or more others from their pairs' modes:
// log w_i - log w_j = log(l_ij / (1 - l_ij)) by least squares, with sum log w = 0. Empty when some
// pair has no clear mode (too few elements: its weights are not read).
std::vector<double> weights_from_pairs(const Counts& total, size_t k) {
  const size_t pairs = k * (k - 1) / 2;
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(Eigen::Index(pairs + 1), Eigen::Index(k));
  Eigen::VectorXd b = Eigen::VectorXd::Zero(Eigen::Index(pairs + 1));
  size_t pair = 0;
  for (size_t i = 0; i < k; ++i) {
    for (size_t j = i + 1; j < k; ++j, ++pair) {
      const uint64_t* bins = total.pair_bins.data() + pair * kLambdaBins;
      const double* sums = total.pair_sums.data() + pair * kLambdaBins;
      const size_t mode = size_t(std::max_element(bins, bins + kLambdaBins) - bins);
      uint64_t count = 0;
      double sum = 0;
      for (size_t bin = mode == 0 ? 0 : mode - 1; bin <= std::min(mode + 1, kLambdaBins - 1); ++bin) {
        count += bins[bin], sum += sums[bin];
      }
      const double l = count ? sum / double(count) : 0.0;
      if (count < kLambdaMinCount || !(l > 0 && l < 1)) return {};
      a(Eigen::Index(pair), Eigen::Index(i)) = 1;
      a(Eigen::Index(pair), Eigen::Index(j)) = -1;
      b(Eigen::Index(pair)) = std::log(l / (1 - l));
    }
  }
  a.row(Eigen::Index(pairs)).setOnes();
  const Eigen::VectorXd x = a.colPivHouseholderQr().solve(b);
  std::vector<double> w(k);
  double total_w = 0;
  for (size_t j = 0; j < k; ++j) total_w += w[j] = std::exp(x(Eigen::Index(j)));
  for (double& v : w) v /= total_w;
  return w;
}

// The keep rates under a normalised combination (SubsetStats::normalized_density): independent
// masks make P(none) = prod (1 - d_i) and P(i alone) = d_i prod_{j != i} (1 - d_j), so
// d_i = solo_i / (solo_i + none) for any number of others; with two, "between" counts the
// elements both kept, and d_i = (solo_i + between) / (none + solo_1 + solo_2 + between).
void normalized_estimates(const Counts& total, size_t k, SubsetStats& out) {
  out.normalized_density.assign(k, std::numeric_limits<double>::quiet_NaN());
  out.normalized_weight = out.normalized_density;
  if (k == 2) {
    const double all = double(total.none + total.solo[0] + total.solo[1] + total.between);
    if (all == 0) return;
    for (size_t j = 0; j < 2; ++j) out.normalized_density[j] = double(total.solo[j] + total.between) / all;
    if (total.lambda_den > 0) {
      const double l = std::clamp(total.lambda_num / total.lambda_den, 0.0, 1.0);
      out.normalized_weight = {l, 1 - l};
    }
    return;
  }
  for (size_t j = 0; j < k; ++j) {
    const uint64_t seen = total.solo[j] + total.none;
    if (seen > 0) out.normalized_density[j] = double(total.solo[j]) / double(seen);
  }
  const std::vector<double> w = weights_from_pairs(total, k);
  if (!w.empty()) out.normalized_weight = w;
}

// Under a normalised sign consensus (della) with three or more others, the kept deltas of the
// elected sign make a weighted mean: a value inside the range of that sign's deltas.
bool normalized_mean_of_one_sign(const double* u, size_t k, double r, double tol) {
  double low = std::numeric_limits<double>::infinity(), high = -low;
  size_t same = 0;
  for (size_t j = 0; j < k; ++j) {
    if ((u[j] > 0) != (r > 0) || u[j] == 0) continue;
    ++same, low = std::min(low, u[j]), high = std::max(high, u[j]);
  }
  return same >= 2 && r > low + tol && r < high - tol;
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

// keep[i] = 1 where every other resolves element i (its delta nonzero and at least 1/8 of |C_b|),
// else 0: the test the classification below starts with, in the same double arithmetic, so the
// two agree element for element. A sweep per other in vectors: tested one element at a time, with
// an exit at whichever candidate fails first, the test's unpredictable branches were most of the
// pass's time, and most elements fail it.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default"))) void mark_resolved(
    const float* b, const float* const* deltas_of, size_t k, size_t count, uint8_t* keep) {
  for (size_t i = 0; i < count; ++i) keep[i] = 1;
  for (size_t j = 0; j < k; ++j) {
    const float* c = deltas_of[j];
    for (size_t i = 0; i < count; ++i) {
      const double d = double(c[i]) - double(b[i]);
      keep[i] &= uint8_t((d != 0) & (std::fabs(d) >= 0.125 * std::fabs(double(b[i]))));
    }
  }
}

// The resolved elements of one sub-chunk, as the classification reads them.
struct Resolved {
  const float* base;
  const float* suspect;
  const float* const* others;  // [other]
  const uint32_t* positions;   // the resolved elements, in increasing order
  size_t count;
};

// The kept-set classification of the resolved elements, in order, into `part`, for K others: K is
// a template parameter so that the loops over the others and the 2^K kept sets unroll (with k a
// run-time value they were most of a sparse merge's assay time).
template <size_t K>
void classify(const Resolved& at, const double* scale, double eps, Counts& part) {
  constexpr unsigned sets = 1u << K;
  double d[K], u[K], lin[sets];
  for (size_t t = 0; t < at.count; ++t) {  // the resolved elements, in order
    const size_t i = at.positions[t];
    const double b = at.base[i], s = at.suspect[i], r = s - b;
    double slack = 0;
    bool positive = false, negative = false;
    for (size_t j = 0; j < K; ++j) {
      d[j] = double(at.others[j][i]) - b;
      u[j] = scale[j] * d[j];
      slack += kScaleSlack * std::fabs(d[j]);
      positive |= u[j] > 0, negative |= u[j] < 0;
    }
    // Rounding of S and of the stored deltas, plus what the approximate scales may miss.
    const double tol = 4 * eps * (std::fabs(b) + std::fabs(s)) + slack;
    if (positive && negative) {
      // Every value sign consensus makes, the plain sum makes too (with the losers
      // dropped), so only the other direction is evidence: S made by the plain sum of kept
      // deltas of both signs, and by no kept set under consensus. Under dare_linear that
      // happens whenever deltas of both signs are kept; under dare_ties never.
      bool by_sum = false, by_consensus = false;
      for (unsigned set = 0; set < sets; ++set) {
        by_sum |= std::fabs(r - subset_sum(u, K, set, false)) <= tol;
        by_consensus |= std::fabs(r - subset_sum(u, K, set, true)) <= tol;
      }
      if (K >= 3 && !by_consensus) by_consensus = normalized_mean_of_one_sign(u, K, r, tol);
      ++part.opposite;
      part.sum += by_sum && !by_consensus;
      continue;
    }
    // Same sign: both rules agree. Classifiable when every two subset sums are apart.
    bool separated = true;
    for (unsigned a = 0; a < sets; ++a) lin[a] = subset_sum(u, K, a, false);
    for (unsigned a = 0; a < sets && separated; ++a) {
      for (unsigned c = a + 1; c < sets && separated; ++c)
        separated = std::fabs(lin[a] - lin[c]) > 2 * tol;
    }
    if (!separated) continue;
    ++part.classifiable;
    bool found = false;
    for (unsigned set = 0; set < sets; ++set) {
      if (std::fabs(r - lin[set]) > tol) continue;
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
    if (!found && K == 2) count_between(u, r, tol, part);
    if (!found && K >= 3) count_pairs_between(u, K, r, tol, part);
  }
}

void classify_kept_sets(size_t k, const Resolved& at, const double* scale, double eps,
                        Counts& part) {
  switch (k) {
    case 1:
      return classify<1>(at, scale, eps, part);
    case 2:
      return classify<2>(at, scale, eps, part);
    case 3:
      return classify<3>(at, scale, eps, part);
    default:
      return classify<4>(at, scale, eps, part);  // kMaxSubsetCandidates
  }
}
static_assert(kMaxSubsetCandidates == 4, "classify_kept_sets covers 1 to 4 others");

}  // namespace

SubsetStats subset_statistics(const TensorViews& views, int base, const std::vector<int>& others,
                              const std::vector<double>& scale, const WeightRatioPass* ratios,
                              std::vector<double>* ratio_weights) {
  const size_t k = others.size();
  SubsetStats out;
  out.density.assign(k, std::numeric_limits<double>::quiet_NaN());
  out.scale = out.normalized_density = out.normalized_weight = out.density;
  bool kept_sets = k > 0 && k <= kMaxSubsetCandidates && views.numel > 0;
  for (double a : scale) kept_sets = kept_sets && std::isfinite(a) && a != 0;
  const bool with_ratios = ratios != nullptr && ratios->active() && views.numel > 0;
  if (!kept_sets && !with_ratios) return out;
  const double eps = unit_roundoff(views.inputs[0]->info->dtype);
  const std::vector<bool> used = used_vectors(views, base, others);
  // Both passes' sums per part, combined in part order: each adds what it added on its own.
  struct Sums {
    Counts counts;
    std::vector<double> ratios;
  };
  Sums init;
  if (kept_sets) init.counts.resize(k);
  if (with_ratios) init.ratios = ratios->zero();
  const uint64_t n = views.numel;
  const Sums sums = parallel_reduce(
      n, part_grain(n), init,
      [&](size_t begin, size_t end) {
        Sums part = init;
        // Reused by every part this thread runs: no fresh pages per part.
        static thread_local std::vector<uint8_t> keep(kDefaultGrain);
        static thread_local std::vector<uint32_t> resolved(kDefaultGrain + 16);
        for_each_subchunk(
            views, begin, end,
            [&](const std::vector<float*>& x, size_t count) {
              if (kept_sets) {
                const float* candidates[kMaxSubsetCandidates];
                for (size_t j = 0; j < k; ++j) candidates[j] = x[others[j]];
                mark_resolved(x[base], candidates, k, count, keep.data());
                const size_t m = kept_positions(keep.data(), count, resolved.data());
                classify_kept_sets(k, Resolved{x[base], x[0], candidates, resolved.data(), m},
                                   scale.data(), eps, part.counts);
              }
              if (with_ratios) ratios->add(x, count, part.ratios);
            },
            used);
        return part;
      },
      [](Sums acc, const Sums& part) {
        acc.counts.add(part.counts);
        for (size_t e = 0; e < acc.ratios.size(); ++e) acc.ratios[e] += part.ratios[e];
        return acc;
      });
  if (with_ratios) ratios->solve(sums.ratios, *ratio_weights);
  if (!kept_sets) return out;
  const Counts& total = sums.counts;
  out.classifiable = total.classifiable;
  out.matched_share = total.classifiable ? double(total.matched) / double(total.classifiable)
                                         : std::numeric_limits<double>::quiet_NaN();
  out.opposite = total.opposite;
  out.sum_votes = total.sum;
  normalized_estimates(total, k, out);
  if (total.matched == 0) return out;
  for (size_t j = 0; j < k; ++j) out.density[j] = double(total.kept[j]) / double(total.matched);
  // The scales by least squares over the matched elements (each row: r = sum over its kept set).
  const Eigen::Index p = Eigen::Index(k);
  const Eigen::MatrixXd m = total.normal.leftCols(p);
  if (m.trace() > 0) {
    const Eigen::VectorXd a = (m + 1e-12 * m.trace() * Eigen::MatrixXd::Identity(p, p)).ldlt().solve(total.normal.col(p));
    for (size_t j = 0; j < k; ++j) {
      if (total.kept[j] > 0) out.scale[j] = a(Eigen::Index(j));
    }
  }
  return out;
}

}  // namespace alloy::detail
