// The summary text of a merge verdict and the evidence it rests on.
#include "verdict.h"

namespace alloy::detail {

// |S - fit| / |C_ref|: what the recipe leaves unexplained, relative to the weights; at rounding
// level (~0.001 in bf16) for a clean merge, larger after added noise or further training.
void record_unexplained(VerdictContext& v) {
  const Weighted level = v.over_fitted([](const TensorAssay& t) { return t.residual * t.deviation; });
  if (!level.empty()) v.result.evidence["unexplained_level"] = level.median();
}

void summarise_merge(VerdictContext& v) {
  record_unexplained(v);
  AssayResult& r = v.result;
  std::string text = r.method + " merge of";
  for (const auto& c : r.candidates) {
    if (c.involved) text += " " + c.path + " (weight " + std::to_string(c.weight) + ")";
  }
  const MajorEvidence e = major_evidence(v);
  r.evidence["z_min"] = e.z_min;
  r.evidence["log10_false_positive"] = e.log10_false_positive;
  text += "; every major component fits with z >= " + std::to_string(e.z_min);
  r.evidence["summary"] = text;
}

}  // namespace alloy::detail
