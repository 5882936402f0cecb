// The verdict's evidence: per-candidate statistics aggregated over the fitted tensors, and the
// questions the decisions ask of them (docs/assay.md, "Verdicts").
#include <algorithm>
#include <cmath>

#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kRelated = 0.2;  // median Pearson correlation: shares weights
// Independent derivations of an ancestor that is not among the candidates fit each other: with k
// sibling candidates the best affine fit is their centroid and cos_fit^2 = 1 - (1 + 1/k) / 2, from
// 0.5 (k = 1) towards 0.71. When the reference is shown to be the common ancestor of the other
// related candidates (their deltas from it are mutually near-orthogonal), siblings fit with
// cos_fit ~ sqrt(p/n), which the weights' significance and sameness already test, and the bar only
// guards against degenerate fits: a merge under noise k times its deviation keeps cos_fit about
// 1/sqrt(1 + k^2), so int4 rounding of a 1% merge (k ~ 10) measures 0.08 and 0.02 allows k ~ 50
// (bench/robustness). Otherwise a dense merge must explain at least 0.8.
constexpr double kDenseMergeCosFit = 0.02;
constexpr double kDenseMergeCosFitNoAncestor = 0.8;
constexpr double kAncestorCos = 0.25;

}  // namespace

double Weighted::mean() const {
  double s = 0, w = 0;
  for (const auto& [v, wt] : values) s += v * wt, w += wt;
  return w > 0 ? s / w : std::nan("");
}

double Weighted::std_dev() const {
  const double m = mean();
  double s = 0, w = 0;
  for (const auto& [v, wt] : values) s += (v - m) * (v - m) * wt, w += wt;
  return w > 0 ? std::sqrt(s / w) : std::nan("");
}

void aggregate_candidates(VerdictContext& v) {
  for (int c = 0; c < v.k; ++c) {
    const Weighted corr = v.over_fitted([c](const TensorAssay& t) { return t.correlation[size_t(c)]; });
    const Weighted weight = v.over_fitted([c](const TensorAssay& t) { return t.weights[size_t(c)]; });
    auto& out = v.candidate(c);
    out.correlation = corr.empty() ? 0 : corr.median();
    out.related = out.correlation > kRelated;
    out.weight = weight.empty() ? 0 : weight.mean();
    out.weight_std = weight.empty() ? 0 : weight.std_dev();
    out.density = 1;
  }
  for (const auto& t : v.result.tensors) v.fitted_numel += t.fitted ? t.numel : 0;
}

bool explains_deviation(VerdictContext& v) {
  const Weighted cos = v.over_fitted([](const TensorAssay& t) { return t.cos_fit; });
  const Weighted ancestor = v.over_fitted([](const TensorAssay& t) { return t.ancestor_cos; });
  // An ancestor is shown by two other candidates related to the suspect whose deltas from the
  // reference are near-orthogonal. A candidate that is unrelated to the suspect as a whole can
  // still pass the per-tensor correlation on a few tensors: it must not stand in for the second.
  const int reference = majority_reference(v);
  int others_related = 0;
  for (int c = 0; c < v.k; ++c) others_related += c != reference && v.candidate(c).related;
  const bool has_ancestor = others_related >= 2 && !ancestor.empty() && ancestor.median() < kAncestorCos;
  const double bar = has_ancestor ? kDenseMergeCosFit : kDenseMergeCosFitNoAncestor;
  const double median = cos.empty() ? 0 : cos.median();
  v.result.evidence["cos_fit_median"] = median;
  v.result.evidence["cos_fit_bar"] = bar;
  v.result.evidence["common_ancestor_among_candidates"] = has_ancestor;
  if (median >= bar) return true;
  v.note("the candidates explain only cos_fit " + std::to_string(median) + " of the suspect's deviation (bar " +
         std::to_string(bar) + "): siblings of a common ancestor fit each other that well");
  return false;
}

int majority_reference(const VerdictContext& v) {
  std::vector<double> votes(size_t(v.k), 0.0);
  for (const auto& t : v.result.tensors) {
    if (t.fitted && t.reference >= 0) votes[size_t(t.reference)] += double(t.numel);
  }
  return int(std::max_element(votes.begin(), votes.end()) - votes.begin());
}

double sparse_fraction(const VerdictContext& v) {
  Weighted f;
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.numel < 4096) continue;
    double e = t.equal_reference;
    for (double x : t.equal_candidate) e += x;
    f.add(e, double(t.numel));
  }
  return f.empty() ? 0 : f.mean();
}

double reference_equality_concentration(const VerdictContext& v) {
  Weighted reference;
  std::vector<Weighted> others(size_t(v.k));
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.numel < 4096) continue;
    reference.add(t.equal_reference, double(t.numel));
    for (size_t c = 0; c < t.equal_candidate.size(); ++c) {
      if (int(c) != t.reference) others[c].add(t.equal_candidate[c], double(t.numel));
    }
  }
  double most = 0;
  for (const auto& o : others) most = std::max(most, o.empty() ? 0.0 : o.mean());
  if (reference.empty()) return 0;
  return most > 0 ? reference.mean() / most : INFINITY;
}

}  // namespace alloy::detail
