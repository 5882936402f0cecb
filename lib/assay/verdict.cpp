// The verdict stage: aggregate the per-tensor fits, decide merge / fine-tune / copy / independent,
// name the method, write the recipe and confirm it by rebuilding sampled tensors. This file holds
// the order in which the outcomes are tried; verdict.h lists the units that decide each.
// docs/assay.md, "Verdicts", states every threshold used here and why.
#include <cmath>

#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kSparseEquality = 0.25;  // linear merges: ~0.08 from cancellations

void decide(VerdictContext& v) {
  aggregate_candidates(v);
  aggregate_components(v);
  v.result.evidence = {{"notes", nlohmann::json::array()}};
  if (v.fitted_numel == 0 || try_stacking(v)) {
    if (v.fitted_numel == 0 && v.result.verdict.empty()) independent(v, "no tensor of the suspect could be compared");
    return;
  }
  if (try_copy(v)) return;
  const int base = majority_reference(v);
  bool any_related = false;
  for (const auto& c : v.result.candidates) any_related |= c.related;
  if (!any_related) {
    independent(v, "no candidate correlates with the suspect beyond chance");
    return;
  }
  if (sparse_fraction(v) > kSparseEquality && try_sparse(v, base)) return;
  std::vector<int> involved;
  for (int c = 0; c < v.k; ++c) {
    if (std::fabs(v.candidate(c).weight) >= kInvolvedWeight) involved.push_back(c);
  }
  if (involved.size() >= 2 && strong_evidence(v) && explains_deviation(v)) {
    for (int c : involved) v.candidate(c).involved = true;
    if (involved.size() == 2 && try_slerp(v, involved)) return;
    dense_merge(v, involved, base);
    return;
  }
  fine_tune(v, base);
}

}  // namespace

void decide_verdict(AssayResult* result, const Model& suspect, const std::vector<const Model*>& candidates,
                    const AssayOptions& options) {
  VerdictContext context{*result, suspect, candidates, options, int(candidates.size())};
  decide(context);
}

}  // namespace alloy::detail
