// A sparse merge read as a dense one (see verdict.h): noise or further training on top of a TIES /
// DARE / DELLA / breadcrumbs merge removes the exact equalities that tell those methods from a
// linear blend, and the dense fit then reads it as task arithmetic or linear. What the noise does
// not remove is the merge's dependence on each delta's magnitude. In a dense merge plus
// isotropic noise the residual e = (S - B) - sum_c w_c delta_c is independent of every delta, so its
// regression slope on delta_c is 0 among the small deltas and among the large ones alike. A
// magnitude-trimmed merge drops the small deltas: there e carries -w_c delta_c (slope ~ -w_c), and
// the fit compensates among the large ones (slope > 0). The test compares the two slopes. A
// random drop (DARE, rescaled by 1/p) is symmetric in magnitude, so its slopes barely differ, but
// its residual is a multiple of delta itself (-w delta where dropped, w delta (1/p - 1) where kept):
// the mean |e| among the large deltas exceeds that among the small ones, where a dense merge's
// noise is the same in both. The test compares the two means as well.
#include <algorithm>
#include <cmath>
#include <vector>

#include "verdict.h"

namespace alloy::detail {
namespace {

// Rows read per tensor (evenly spaced) and the elements read in all, over the largest tensors.
constexpr uint64_t kRowsPerTensor = 64;
constexpr uint64_t kMaxElements = uint64_t(1) << 20;
// The slopes differ significantly (|z| >= 5) and by at least a fifth of the parent's weight
// (TIES at density 0.5: ~w; a rounding artefact of a dense merge: ~0).
constexpr double kSlopeZ = 5.0;
constexpr double kSlopeShare = 0.2;
// ... or the mean |e| of the large half exceeds the small half's by |z| >= 5 and by 10%.
constexpr double kSpreadRatio = 1.1;

struct SlopeSums {
  double ed[2] = {0, 0}, dd[2] = {0, 0};  // sum e * delta, sum delta^2 over the small [0] and large [1] half
  double a[2] = {0, 0}, aa[2] = {0, 0};   // sum |e|, sum e^2 per half
  uint64_t count[2] = {0, 0};
  double ee = 0;
  uint64_t n = 0;
};

}  // namespace

bool sparse_under_noise(VerdictContext& v, const std::vector<int>& involved, int base) {
  AssayResult& r = v.result;
  // At the rounding level there is no noise to hide a sparse merge's exact equalities, which the
  // sparse detectors read directly.
  if (!(r.evidence.value("unexplained_level", 0.0) > kRoundingLevel)) return false;
  // The residual is read against the base whether or not the dense reading gives it a weight: the
  // per-tensor weights are affine (sum 1), so S - sum_c w_c X_c = (S - B) - sum_{c != B} w_c (X_c - B),
  // and a DARE merge with weights summing to 1 (dare_linear 0.6 / 0.4) reads as a linear blend of
  // the parents alone.
  if (base < 0) return false;
  std::vector<int> parents;
  for (int c : involved) {
    if (c != base) parents.push_back(c);
  }
  if (parents.empty()) return false;
  std::vector<const TensorAssay*> tensors;
  for (const auto& t : r.tensors) {
    if (t.fitted && !t.aligned && t.numel >= 4096) tensors.push_back(&t);
  }
  std::stable_sort(tensors.begin(), tensors.end(), [](auto* a, auto* b) { return a->numel > b->numel; });
  std::vector<SlopeSums> sums(parents.size());
  uint64_t read = 0;
  std::vector<float> s, b, row;
  for (const TensorAssay* t : tensors) {
    if (read >= kMaxElements) break;
    const ModelTensor* st = v.suspect.find(t->name);
    const ModelTensor* bt = v.models[size_t(base)]->find(t->name);
    if (st == nullptr || bt == nullptr || bt->info->shape != st->info->shape) continue;
    std::vector<const ModelTensor*> pt;
    for (int c : parents) {
      const ModelTensor* x = v.models[size_t(c)]->find(t->name);
      if (x == nullptr || x->info->shape != st->info->shape) break;
      pt.push_back(x);
    }
    if (pt.size() != parents.size()) continue;
    const uint64_t cols = st->info->shape.back(), rows = st->info->numel() / cols;
    const uint64_t sampled = std::min(rows, kRowsPerTensor);
    const size_t n = size_t(sampled * cols);
    s.resize(n), b.resize(n), row.resize(size_t(cols));
    std::vector<std::vector<float>> deltas(parents.size(), std::vector<float>(n));
    for (uint64_t k = 0; k < sampled; ++k) {
      const size_t begin = size_t(k * rows / sampled * cols), at = size_t(k * cols);
      load_range(*st, begin, size_t(cols), s.data() + at);
      load_range(*bt, begin, size_t(cols), b.data() + at);
      for (size_t p = 0; p < parents.size(); ++p) {
        load_range(*pt[p], begin, size_t(cols), row.data());
        for (size_t i = 0; i < cols; ++i) deltas[p][at + i] = row[i] - b[at + i];
      }
    }
    // The residual of the tensor's own dense fit.
    std::vector<double> e(n);
    for (size_t i = 0; i < n; ++i) {
      double fit = 0;
      for (size_t p = 0; p < parents.size(); ++p) fit += t->weights[size_t(parents[p])] * double(deltas[p][i]);
      e[i] = double(s[i]) - double(b[i]) - fit;
    }
    for (size_t p = 0; p < parents.size(); ++p) {
      std::vector<float> magnitude(n);
      for (size_t i = 0; i < n; ++i) magnitude[i] = std::fabs(deltas[p][i]);
      std::nth_element(magnitude.begin(), magnitude.begin() + std::ptrdiff_t(n / 2), magnitude.end());
      const float median = magnitude[n / 2];
      SlopeSums& q = sums[p];
      for (size_t i = 0; i < n; ++i) {
        const double d = deltas[p][i];
        const int half = std::fabs(deltas[p][i]) > median;
        q.ed[half] += e[i] * d, q.dd[half] += d * d;
        q.a[half] += std::fabs(e[i]), q.aa[half] += e[i] * e[i], ++q.count[half];
        q.ee += e[i] * e[i];
      }
      q.n += n;
    }
    read += n;
  }
  rethrow_read_error();
  nlohmann::json table = nlohmann::json::array();
  bool sparse = false;
  for (size_t p = 0; p < parents.size(); ++p) {
    const SlopeSums& q = sums[p];
    if (q.n == 0 || q.dd[0] <= 0 || q.dd[1] <= 0) continue;
    const double sigma2 = q.ee / double(q.n);
    const double low = q.ed[0] / q.dd[0], high = q.ed[1] / q.dd[1];
    const double se = std::sqrt(sigma2 / q.dd[0] + sigma2 / q.dd[1]);
    const double z = se > 0 ? (high - low) / se : 0.0;
    const double weight = v.candidate(parents[p]).weight;
    const bool slopes = std::fabs(z) >= kSlopeZ && std::fabs(high - low) >= kSlopeShare * std::fabs(weight);
    // Mean |e| per half, and the z of their difference from each half's own variance of |e|.
    double mean[2], variance[2];
    for (int h = 0; h < 2; ++h) {
      const double m = double(std::max<uint64_t>(q.count[h], 1));
      mean[h] = q.a[h] / m;
      variance[h] = std::max(0.0, q.aa[h] / m - mean[h] * mean[h]) / m;
    }
    const double spread_se = std::sqrt(variance[0] + variance[1]);
    const double spread_z = spread_se > 0 ? (mean[1] - mean[0]) / spread_se : 0.0;
    const bool spread = spread_z >= kSlopeZ && mean[1] >= kSpreadRatio * mean[0];
    sparse |= slopes || spread;
    table.push_back({{"candidate", v.candidate(parents[p]).path}, {"slope_small", low}, {"slope_large", high},
                     {"z", z}, {"mean_abs_small", mean[0]}, {"mean_abs_large", mean[1]}, {"spread_z", spread_z},
                     {"elements", q.n}, {"magnitude_dependent", slopes || spread}});
  }
  if (table.empty()) return false;
  r.evidence["residual_by_magnitude"] = table;
  return sparse;
}

}  // namespace alloy::detail
