// The verdict's false-positive bounds: per component, the median z of its tensors and a bound on
// the chance that unrelated weights reach it; over the major components, the weakest of them.
#include <algorithm>
#include <cmath>
#include <limits>

#include "verdict.h"

namespace alloy::detail {
namespace {

// log10 of C(n, h) p^h: a bound on the chance that at least h of n independent null tensors reach
// z, with p = exp(-z^2 / 2) (sub-Gaussian null) or p = 1 / (1 + z^2) (Cantelli, any null with
// that scale).
double log10_bound(size_t n, size_t h, double z, bool distribution_free) {
  if (h == 0) return 0;
  const double log_choose = (std::lgamma(double(n) + 1) - std::lgamma(double(h) + 1) - std::lgamma(double(n - h) + 1)) /
                            std::log(10.0);
  const double log_p = distribution_free ? -std::log10(1 + z * z) : -z * z / (2 * std::log(10.0));
  return std::min(0.0, log_choose + double(h) * log_p);
}

// The component `name` over its fitted tensors (tensors == 0 when it has none).
ComponentAssay component_evidence(const VerdictContext& v, const std::string& name) {
  ComponentAssay comp;
  comp.name = name;
  Weighted z, cos;
  std::vector<Weighted> w{size_t(v.k)};
  std::vector<double> zs;
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.component != name) continue;
    ++comp.tensors;
    comp.numel += t.numel;
    z.add(t.z, double(t.numel));
    zs.push_back(t.z);
    cos.add(t.cos_fit, double(t.numel));
    for (int c = 0; c < v.k; ++c) w[size_t(c)].add(t.weights[size_t(c)], double(t.numel));
  }
  if (comp.tensors == 0) return comp;
  comp.z = z.median();
  comp.cos_fit_mean = cos.mean();
  comp.cos_fit_min = 1;
  for (const auto& [value, weight] : cos.values) comp.cos_fit_min = std::min(comp.cos_fit_min, value);
  for (int c = 0; c < v.k; ++c) {
    comp.weight_mean.push_back(w[size_t(c)].mean());
    comp.weight_std.push_back(w[size_t(c)].std_dev());
  }
  // At least h = ceil(n/2) tensors reach the median z (unweighted count, to be safe).
  std::sort(zs.begin(), zs.end());
  const double z_half = zs[(zs.size() - 1) / 2];
  const size_t h = zs.size() - (zs.size() - 1) / 2;
  comp.log10_false_positive = log10_bound(zs.size(), h, std::max(z_half, 0.0), false);
  comp.log10_false_positive_distribution_free = log10_bound(zs.size(), h, std::max(z_half, 0.0), true);
  return comp;
}

}  // namespace

void aggregate_components(VerdictContext& v) {
  for (const auto& name : assay_component_names()) {
    ComponentAssay comp = component_evidence(v, name);
    if (comp.tensors > 0) v.result.components.push_back(std::move(comp));
  }
}

MajorEvidence major_evidence(const VerdictContext& v) {
  double z_min = std::numeric_limits<double>::infinity(), bound = -std::numeric_limits<double>::infinity();
  for (const auto& c : v.result.components) {
    if (double(c.numel) < kMajorComponent * double(v.fitted_numel)) continue;
    z_min = std::min(z_min, c.z);
    bound = std::max(bound, c.log10_false_positive);
  }
  if (!std::isfinite(z_min)) z_min = 0, bound = 0;
  return {z_min, bound};
}

bool strong_evidence(VerdictContext& v) {
  const MajorEvidence e = major_evidence(v);
  v.result.evidence["z_min"] = e.z_min;
  v.result.evidence["log10_false_positive"] = e.log10_false_positive;
  return e.z_min >= kMergeZ && e.log10_false_positive <= kMergeLog10Bound;
}

}  // namespace alloy::detail
