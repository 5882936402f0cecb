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
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "alloy/core/dtype.h"
#include "internal.h"
#include "kept_sets.h"
#include "subchunks.h"

namespace alloy::detail {
namespace {

// A pair's relative weight l (three or more others) needs this many elements around its mode.
constexpr uint64_t kLambdaMinCount = 8;

double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::BF16: return std::ldexp(1.0, -8);
    case DType::F16: return std::ldexp(1.0, -11);
    default: return std::ldexp(1.0, -24);
  }
}

// The relative weights w_i (summing to 1) of three or more others from their pairs' modes:
// log w_i - log w_j = log(l_ij / (1 - l_ij)) by least squares, with sum log w = 0. Empty when some
// pair has no clear mode (too few elements: its weights are not read).
std::vector<double> weights_from_pairs(const KeptSetCounts& total, size_t k) {
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
void normalized_estimates(const KeptSetCounts& total, size_t k, SubsetStats& out) {
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

// One sweep per other over a sub-chunk's elements, each delta computed once for both tests (two
// sweeps, one per test, were a tenth of a ties merge's assay CPU):
//  - resolved[i] = 1 where every other resolves element i (its delta nonzero and at least 1/8 of
//    |C_b|): the elements the kept-set classification reads (kept_sets.h);
//  - all_kept[i] = 1 where every other's delta is nonzero, above its threshold and of one sign
//    with the others': the elements of the weight ratios (add_ratio_sums).
// In vectors: tested one element at a time, with an exit at whichever candidate fails first, the
// tests' unpredictable branches were most of the pass's time, and most elements fail them.
// `first_positive` is scratch: the first other's sign per element. A test whose reader is off
// (no kept sets beyond four others, no ratios with one) is left out of the sweep: with one other
// writing all_kept was ~0.7% of a two-candidate assay's CPU.
//
// One other's sweep; the first other's sets the flags, the later ones' clear them.
template <bool kResolved, bool kAllKept, bool kFirst>
[[gnu::always_inline]] inline void mark_other(const float* b, const float* c, double t,
                                              size_t count, uint8_t* resolved, uint8_t* all_kept,
                                              uint8_t* first_positive) {
  for (size_t i = 0; i < count; ++i) {
    const double d = double(c[i]) - double(b[i]);
    if constexpr (kResolved) {
      const uint8_t r = uint8_t((d != 0) & (std::fabs(d) >= 0.125 * std::fabs(double(b[i]))));
      resolved[i] = kFirst ? r : uint8_t(resolved[i] & r);
    }
    if constexpr (kAllKept) {
      const uint8_t kept = uint8_t((std::fabs(d) > t) & (d != 0));
      if constexpr (kFirst) {
        all_kept[i] = kept;
        first_positive[i] = uint8_t(d > 0);
      } else {
        all_kept[i] &= uint8_t(kept & ((d > 0) == first_positive[i]));
      }
    }
  }
}

template <bool kResolved, bool kAllKept>
[[gnu::always_inline]] inline void mark_sweep(const float* b, const float* const* others,
                                              const double* threshold, size_t k, size_t count,
                                              uint8_t* resolved, uint8_t* all_kept,
                                              uint8_t* first_positive) {
  if (k == 0) return;
  mark_other<kResolved, kAllKept, true>(b, others[0], threshold[0], count, resolved, all_kept,
                                        first_positive);
  for (size_t j = 1; j < k; ++j)
    mark_other<kResolved, kAllKept, false>(b, others[j], threshold[j], count, resolved, all_kept,
                                           first_positive);
}

// resolved or all_kept may be null: that test is not made.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default"))) void mark_elements(
    const float* b, const float* const* others, const double* threshold, size_t k, size_t count,
    uint8_t* resolved, uint8_t* all_kept, uint8_t* first_positive) {
  if (resolved && all_kept)
    mark_sweep<true, true>(b, others, threshold, k, count, resolved, all_kept, first_positive);
  else if (resolved)
    mark_sweep<true, false>(b, others, threshold, k, count, resolved, all_kept, first_positive);
  else if (all_kept)
    mark_sweep<false, true>(b, others, threshold, k, count, resolved, all_kept, first_positive);
}

// The weight ratios, given sparse_statistics' thresholds: over the elements where every other is
// kept (|delta_j| > threshold_j) and all agree in sign, S - C_b = sum_j l_j delta_j with
// l_j = w_j / sum w; with the last other as pivot, the normal equations of
// r - delta_k = sum_{j<k} l_j (delta_j - delta_k) (rounding noise in the response only, no
// errors-in-variables bias). A part's sums are a (k-1) x k column-major block: the normal matrix,
// then the right-hand side. Read beside the kept sets, in the same pass over the elements (a pass
// of its own read every input once more). Two or more others.
std::vector<double> zero_ratio_sums(size_t k) {
  return std::vector<double>((k - 1) * k, 0.0);
}

// Adds the elements of a sub-chunk that all_kept marks, in increasing order; `in`: the base, the
// suspect, then the k others. `positions` is scratch for the marked elements' indices.
void add_ratio_sums(const float* const* in, size_t k, const uint8_t* all_kept, size_t count,
                    uint32_t* positions, std::vector<double>& part) {
  const size_t p = k - 1;
  const float* b = in[0];
  const float* s = in[1];
  std::vector<double> d(k);
  const size_t m = kept_positions(all_kept, count, positions);
  for (size_t t = 0; t < m; ++t) {
    const size_t i = positions[t];
    const double r = double(s[i]) - double(b[i]);
    for (size_t j = 0; j < k; ++j) d[j] = double(in[2 + j][i]) - double(b[i]);
    const double pivot = d[k - 1];
    for (size_t a = 0; a < p; ++a) {
      const double ua = d[a] - pivot;
      for (size_t c = 0; c < p; ++c) part[a + c * p] += ua * (d[c] - pivot);
      part[a + p * p] += ua * (r - pivot);
    }
  }
}

// The ratios l_j (summing to 1) from the sums of every part, into ratio_weights (k entries;
// untouched when no element was kept by every other).
void solve_ratio_sums(const std::vector<double>& sums, size_t k,
                      std::vector<double>& ratio_weights) {
  using Matrix = Eigen::MatrixXd;
  const Eigen::Index p = Eigen::Index(k - 1);
  const Eigen::Map<const Matrix> normal(sums.data(), p, p + 1);
  const Matrix m = normal.leftCols(p);
  if (!(m.trace() > 0)) return;
  const Eigen::VectorXd l =
      (m + 1e-12 * m.trace() * Matrix::Identity(p, p)).ldlt().solve(normal.col(p));
  double rest = 1;
  for (Eigen::Index a = 0; a < p; ++a) ratio_weights[size_t(a)] = l(a), rest -= l(a);
  ratio_weights[size_t(p)] = rest;
}

// The classification reads the resolved elements of a sub-chunk compacted, this many elements of
// it at a time: the compacted rows of the base, the suspect and up to four others stay in the
// core's L1 cache (24 KiB).
constexpr size_t kWindow = 1024;
constexpr size_t kCompactedRows = 2 + kMaxSubsetCandidates;

// A thread's buffers for scan_part, reused by every part it runs: no fresh pages per part.
struct ScanScratch {
  std::vector<uint8_t> resolved = std::vector<uint8_t>(kDefaultGrain),
                       all_kept = std::vector<uint8_t>(kDefaultGrain),
                       first_positive = std::vector<uint8_t>(kDefaultGrain);
  std::vector<uint32_t> positions = std::vector<uint32_t>(kDefaultGrain + 16);
  std::vector<float> compacted = std::vector<float>(kCompactedRows * (kWindow + 16));
};
ScanScratch& scan_scratch() {
  static thread_local ScanScratch scratch;
  return scratch;
}

// The elements [begin, end) of the tensor, a sub-chunk at a time, for the base, the suspect and
// the others: `window(at)` gets the elements every other resolves (with `windows`), compacted
// kWindow at a time, in order; `ratios(in, all_kept, count, positions)` each sub-chunk's rows
// (base, suspect, others) with the elements every other keeps with one sign marked (with
// `with_ratios`).
template <class Window, class Ratios>
void scan_part(const TensorViews& views, int base, const std::vector<int>& others,
               const SparseStats& sparse, const std::vector<bool>& used, size_t begin, size_t end,
               bool windows, bool with_ratios, Window&& window, Ratios&& ratios) {
  const size_t k = others.size();
  ScanScratch& scratch = scan_scratch();
  float* rows[kCompactedRows];  // base, suspect, then the others: the resolved elements
  for (size_t v = 0; v < kCompactedRows; ++v)
    rows[v] = scratch.compacted.data() + v * (kWindow + 16);
  std::vector<const float*> in(k + 2);  // base, suspect, then the others
  for_each_subchunk(
      views, begin, end,
      [&](const std::vector<float*>& x, size_t count) {
        in[0] = x[base], in[1] = x[0];
        for (size_t j = 0; j < k; ++j) in[2 + j] = x[others[j]];
        mark_elements(in[0], in.data() + 2, sparse.threshold.data(), k, count,
                      windows ? scratch.resolved.data() : nullptr,
                      with_ratios ? scratch.all_kept.data() : nullptr,
                      scratch.first_positive.data());
        if (windows) {
          for (size_t w = 0; w < count; w += kWindow) {
            const size_t size = std::min(kWindow, count - w);
            const float* at[kCompactedRows];
            for (size_t v = 0; v < k + 2; ++v) at[v] = in[v] + w;
            const size_t m = compact_resolved(scratch.resolved.data() + w, size, at, k + 2, rows);
            window(ResolvedValues{rows[0], rows[1], rows + 2, m});
          }
        }
        if (with_ratios)
          ratios(in.data(), scratch.all_kept.data(), count, scratch.positions.data());
      },
      used);
}

// scan_part over every part of the tensor, in parallel: `window(part, at)` and `ratios(part, in,
// all_kept, count, positions)` add to a part started from `init`, and the parts are combined with
// Part::add in part order (thread-independent sums).
template <class Part, class Window, class Ratios>
Part reduce_scans(const TensorViews& views, int base, const std::vector<int>& others,
                  const SparseStats& sparse, const std::vector<bool>& used, bool windows,
                  bool with_ratios, const Part& init, Window&& window, Ratios&& ratios) {
  const uint64_t n = views.numel;
  return parallel_reduce(
      n, part_grain(n), init,
      [&](size_t begin, size_t end) {
        Part part = init;
        scan_part(
            views, base, others, sparse, used, begin, end, windows, with_ratios,
            [&](const ResolvedValues& at) { window(part, at); },
            [&](const float* const* in, const uint8_t* all_kept, size_t count,
                uint32_t* positions) { ratios(part, in, all_kept, count, positions); });
        return part;
      },
      [](Part acc, const Part& part) {
        acc.add(part);
        return acc;
      });
}

// The scales the classification uses, and its tolerances: with kFittedScaleCandidates others or
// more, fitted over the elements that name their kept set (fit_kept_scales) where enough do, with
// kFittedScaleTolerance; else the mode's, with kModeScaleTolerance.
std::pair<std::vector<double>, KeptSetTolerance> classification_scales(
    const TensorViews& views, int base, const std::vector<int>& others, const SparseStats& sparse,
    const std::vector<bool>& used, double eps) {
  const size_t k = others.size();
  if (k < kFittedScaleCandidates) return {sparse.kept_scale, kModeScaleTolerance};
  KeptScaleFit init;
  init.resize(k);
  const KeptScaleFit total = reduce_scans(
      views, base, others, sparse, used, true, false, init,
      [&](KeptScaleFit& part, const ResolvedValues& at) {
        fit_kept_scales(k, at, sparse.kept_scale.data(), eps, part);
      },
      [](KeptScaleFit&, const float* const*, const uint8_t*, size_t, uint32_t*) {});
  if (total.rows < kFittedScaleMinRows) return {sparse.kept_scale, kModeScaleTolerance};
  return {solve_kept_scales(total.normal, sparse.kept_scale), kFittedScaleTolerance};
}

}  // namespace

SubsetStats subset_statistics(const TensorViews& views, int base, const std::vector<int>& others,
                              const SparseStats& sparse) {
  const size_t k = others.size();
  SubsetStats out;
  out.density.assign(k, std::numeric_limits<double>::quiet_NaN());
  out.scale = out.normalized_density = out.normalized_weight = out.ratio_weights = out.density;
  bool kept_sets = k > 0 && k <= kMaxSubsetCandidates && views.numel > 0;
  for (double a : sparse.kept_scale) kept_sets = kept_sets && std::isfinite(a) && a != 0;
  const bool with_ratios = k >= 2 && views.numel > 0;
  if (!kept_sets && !with_ratios) return out;
  const double eps = unit_roundoff(views.inputs[0]->info->dtype);
  const std::vector<bool> used = used_vectors(views, base, others);
  // Named, not a structured binding: the lambda below captures them (clang 14 refuses bindings).
  std::vector<double> scale = sparse.kept_scale;
  KeptSetTolerance tolerance = kModeScaleTolerance;
  if (kept_sets)
    std::tie(scale, tolerance) = classification_scales(views, base, others, sparse, used, eps);
  // The kept sets' counts and the weight ratios' sums per part, combined in part order.
  struct Sums {
    KeptSetCounts counts;
    std::vector<double> ratios;
    void add(const Sums& part) {
      counts.add(part.counts);
      for (size_t e = 0; e < ratios.size(); ++e) ratios[e] += part.ratios[e];
    }
  };
  Sums init;
  if (kept_sets) init.counts.resize(k);
  if (with_ratios) init.ratios = zero_ratio_sums(k);
  const Sums sums = reduce_scans(
      views, base, others, sparse, used, kept_sets, with_ratios, init,
      [&](Sums& part, const ResolvedValues& at) {
        classify_kept_sets(k, at, scale.data(), eps, tolerance, part.counts);
      },
      [&](Sums& part, const float* const* in, const uint8_t* all_kept, size_t count,
          uint32_t* positions) { add_ratio_sums(in, k, all_kept, count, positions, part.ratios); });
  if (with_ratios) solve_ratio_sums(sums.ratios, k, out.ratio_weights);
  if (!kept_sets) return out;
  const KeptSetCounts& total = sums.counts;
  out.classifiable = total.classifiable;
  out.matched_share = total.classifiable ? double(total.matched) / double(total.classifiable)
                                         : std::numeric_limits<double>::quiet_NaN();
  out.opposite = total.opposite;
  out.sum_votes = total.sum;
  normalized_estimates(total, k, out);
  if (total.matched == 0) return out;
  for (size_t j = 0; j < k; ++j) out.density[j] = double(total.kept[j]) / double(total.matched);
  // The scales by least squares over the matched elements (each row: r = sum over its kept set).
  out.scale = solve_kept_scales(total.normal, out.scale);
  return out;
}

}  // namespace alloy::detail
