// The statistical signature of a merge in the per-tensor weights (docs/assay.md, "The merge
// signature"): a recipe gives every tensor of a component in one layer the same mixing weight, so
// the weights are significant and, within each (component, layer) cell, equal up to their standard
// errors. Siblings (fine-tunes trained on similar data) correlate with each other by an amount that
// changes from tensor to tensor, so their fitted weights spread far beyond the errors. Gradients
// over layers and per-component filters are allowed: only tensors of one cell are compared.
#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "verdict.h"

namespace alloy::detail {
namespace {

// The spread between the tensors of one cell beyond what their standard errors explain, as a
// share of the weight: merges measure 0.00-0.05 under noise up to 4x their deviation and further
// fine-tuning; correlated siblings 0.3-0.7 (tests/assay/test_assay_null.cpp, bench/robustness).
constexpr double kHomogeneousSpread = 0.15;
// Standard errors are floored so that an exact float32 merge (zero residual) has finite weights.
constexpr double kSeFloor = 1e-9;

struct CellSums {
  double sw = 0, swx = 0, swxx = 0, sww = 0;  // sum of 1/se^2, of w/se^2, of w^2/se^2, of 1/se^4
  uint64_t numel = 0;
  int tensors = 0;
  void add(double w, double se, uint64_t n) {
    const double iv = 1 / std::max(se * se, kSeFloor * kSeFloor);
    sw += iv, swx += iv * w, swxx += iv * w * w, sww += iv * iv;
    numel += n;
    ++tensors;
  }
  // DerSimonian-Laird: the between-tensor variance tau^2 = max(0, (Q - (m - 1)) / (S1 - S2 / S1)).
  double excess_variance() const {
    if (tensors < 2) return 0;
    const double q = std::max(0.0, swxx - swx * swx / sw);
    const double denominator = sw - sww / sw;
    return denominator > 0 ? std::max(0.0, (q - (tensors - 1)) / denominator) : 0.0;
  }
};

Signature record(VerdictContext& v, Signature s) {
  v.result.evidence["merge_signature"] = s == Signature::kPresent ? "present" : s == Signature::kAbsent ? "absent" : "untestable";
  return s;
}

}  // namespace

std::vector<WeightSignificance> weight_significance(const VerdictContext& v) {
  std::vector<WeightSignificance> out(size_t(v.k));
  for (int c = 0; c < v.k; ++c) {
    CellSums all;
    for (const auto& t : v.result.tensors) {
      if (t.fitted && std::isfinite(t.weights[size_t(c)])) all.add(t.weights[size_t(c)], t.weight_se[size_t(c)], t.numel);
    }
    if (all.sw > 0) out[size_t(c)] = {all.swx / all.sw, all.swx / std::sqrt(all.sw)};
  }
  return out;
}

std::vector<ComponentSpread> weight_spreads(const VerdictContext& v) {
  std::vector<ComponentSpread> out;
  for (const auto& comp : v.result.components) {
    if (double(comp.numel) < kMajorComponent * double(v.fitted_numel)) continue;
    for (int c = 0; c < v.k; ++c) {
      std::map<int, CellSums> cells;  // by layer; tensors outside the layers are cells of their own
      CellSums whole;
      int outside = 0;
      for (const auto& t : v.result.tensors) {
        if (!t.fitted || t.component != comp.name || !std::isfinite(t.weights[size_t(c)])) continue;
        const double w = t.weights[size_t(c)], se = t.weight_se[size_t(c)];
        whole.add(w, se, t.numel);
        cells[t.layer >= 0 ? t.layer : -1 - outside++].add(w, se, t.numel);
      }
      if (whole.sw <= 0) continue;
      const double mean = whole.swx / whole.sw;
      const double z = whole.swx / std::sqrt(whole.sw);
      // Only a weight the recipe clearly gives this component can be tested for sameness.
      if (std::fabs(mean) < kInvolvedWeight || std::fabs(z) < kMergeZ) continue;
      double tau2 = 0, numel = 0;
      int compared = 0;
      for (const auto& [layer, cell] : cells) {
        if (cell.tensors < 2) continue;
        tau2 += double(cell.numel) * cell.excess_variance();
        numel += double(cell.numel);
        compared += cell.tensors;
      }
      if (compared == 0) continue;
      out.push_back({comp.name, c, mean, std::sqrt(tau2 / numel) / std::fabs(mean), compared});
    }
  }
  return out;
}

Signature consistent_weights(VerdictContext& v, std::vector<int>* involved) {
  const auto significance = weight_significance(v);
  std::vector<int> kept;
  nlohmann::json z = nlohmann::json::object();
  for (int c : *involved) {
    z[v.candidate(c).path] = significance[size_t(c)].z;
    if (std::fabs(significance[size_t(c)].z) >= kMergeZ) kept.push_back(c);
  }
  v.result.evidence["weight_z"] = z;
  const auto spreads = weight_spreads(v);
  nlohmann::json table = nlohmann::json::array();
  const ComponentSpread* worst = nullptr;
  for (const auto& s : spreads) {
    table.push_back({{"component", s.component}, {"candidate", v.candidate(s.candidate).path},
                     {"weight", s.weight}, {"spread", s.spread}, {"tensors", s.tensors}});
    if (!worst || s.spread > worst->spread) worst = &s;
  }
  v.result.evidence["weight_spread"] = table;
  v.result.evidence["weight_spread_bar"] = kHomogeneousSpread;
  if (kept.size() < 2) {
    v.note("fewer than two candidates carry a weight significantly different from 0 (|z| >= " +
           std::to_string(int(kMergeZ)) + ")");
    return record(v, Signature::kAbsent);
  }
  if (worst && worst->spread > kHomogeneousSpread) {
    v.note("the weight of " + v.candidate(worst->candidate).path + " on " + worst->component +
           " changes from tensor to tensor within a layer by " + number_text(worst->spread, 2) +
           " of its value (a recipe gives them one weight; bar " + number_text(kHomogeneousSpread) +
           "): the correlation of siblings trained on similar data, not a merge");
    return record(v, Signature::kAbsent);
  }
  *involved = kept;
  if (spreads.empty()) {
    v.note("no layer has two compared tensors of one component: the sameness of the weights could not be tested");
    return record(v, Signature::kUntestable);
  }
  return record(v, Signature::kPresent);
}

}  // namespace alloy::detail
