// The summary text of a merge verdict and the evidence it rests on.
#include <algorithm>
#include <cmath>
#include <vector>

#include "verdict.h"

namespace alloy::detail {
namespace {

// A recipe's parameters as the summary quotes them: "weight 0.6, density 0.5".
std::string parameters_text(const nlohmann::json& parameters) {
  std::string text;
  for (const char* name : {"weight", "density", "gamma", "epsilon"}) {
    const auto it = parameters.find(name);
    if (it == parameters.end() || !it->is_number()) continue;
    if (!text.empty()) text += ", ";
    text.append(name).append(" ").append(number_text(it->get<double>()));
  }
  return text;
}

// A sparse merge's summary. Its parameters are the recipe's: the plain fit blends whole tensors,
// so its weights are not the recipe's (a ties merge of 0.6 / 0.4 fits as 0.85 / 0.65 / -0.5 with
// the base) and its residual is the dropped deltas, not noise (2.9% of the weights' norm for a
// ties merge the recipe rebuilds bit for bit). What the recipe leaves unexplained is measured by
// its rebuild, and only where the masks are not random.
std::string sparse_summary(const AssayResult& r, const MajorEvidence& e) {
  std::string text = r.method + " merge of";
  for (const auto& m : r.recipe.value("models", nlohmann::json::array())) {
    const std::string parameters = parameters_text(m.value("parameters", nlohmann::json::object()));
    text.append(" ").append(m.value("model", std::string()));
    if (!parameters.empty()) text.append(" (").append(parameters).append(")");
  }
  if (r.recipe.contains("base_model") && r.recipe["base_model"].is_string())
    text += " onto " + r.recipe["base_model"].get<std::string>();
  text += "; every major component fits with z >= " + number_text(e.z_min);
  const auto rebuild = r.evidence.find("rebuild");
  if (has_random_masks(r.method)) {
    text +=
        "; whether it was trained further or noised cannot be measured (its masks are random, "
        "so no rebuild reproduces it)";
  } else if (rebuild != r.evidence.end() && rebuild->is_object() &&
             rebuild->contains("relative_error")) {
    const double error = (*rebuild)["relative_error"].get<double>();
    if (error > kRoundingLevel) {
      text += "; the recipe rebuilds the sampled tensors within " + number_text(100 * error, 2) +
              "% of their norm (" + number_text(100 * rebuild->value("exact_fraction", 0.0), 3) +
              "% bit-exact): further training, noise, or parameters not recovered exactly";
    }
  }
  return text;
}

}  // namespace

// |S - fit| / |C_ref|: what the recipe leaves unexplained, relative to the weights; at rounding
// level (~0.001 in bf16) for a clean merge, larger after added noise or further training.
void record_unexplained(VerdictContext& v) {
  const Weighted level = v.over_fitted([](const TensorAssay& t) { return t.residual * t.deviation; });
  if (!level.empty()) v.result.evidence["unexplained_level"] = level.median();
}

void summarise_merge(VerdictContext& v) {
  record_unexplained(v);
  AssayResult& r = v.result;
  const MajorEvidence e = major_evidence(v);
  r.evidence["z_min"] = e.z_min;
  r.evidence["log10_false_positive"] = e.log10_false_positive;
  if (is_sparse_method(r.method)) {
    r.evidence["summary"] = sparse_summary(r, e);
    return;
  }
  std::string text = r.method + " merge of";
  for (const auto& c : r.candidates) {
    if (c.involved) text += " " + c.path + " (weight " + std::to_string(c.weight) + ")";
  }
  // The merge was confirmed through the suspect's quantization grid (verdict_grid.cpp).
  const bool grid_confirmed =
      r.evidence.contains("grid_rebuild") && r.evidence["grid_rebuild"].value("confirmed", false);
  if (r.evidence.value("merge_signature", "") == "present") {
    double z_low = INFINITY, spread_high = 0;
    for (const auto& c : r.candidates) {
      if (c.involved && r.evidence["weight_z"].contains(c.path)) {
        z_low = std::min(z_low, std::fabs(r.evidence["weight_z"][c.path].get<double>()));
      }
    }
    // The spread is quoted over the components whose sameness was shown; the others are named.
    std::vector<std::string> untested;
    for (const auto& s : r.evidence["weight_spread"]) {
      if (s.value("sameness", "same") == "same") {
        spread_high = std::max(spread_high, s["spread"].get<double>());
      } else if (std::find(untested.begin(), untested.end(), s["component"].get<std::string>()) == untested.end()) {
        untested.push_back(s["component"].get<std::string>());  // by name: "experts" is inside "shared_experts"
      }
    }
    text += "; each weight is significant (|z| >= " + number_text(z_low) +
            ") and the same in every tensor of a component within a layer (spread at most " +
            number_text(spread_high, 2) + " of the weight; siblings vary by 0.3 or more)";
    if (!untested.empty()) {
      std::string list;
      for (const auto& name : untested) list += (list.empty() ? "" : ", ") + name;
      text += " where the fit could tell (not on " + list + ")";
    }
  } else if (grid_confirmed) {
    const auto& g = r.evidence["grid_rebuild"];
    text += "; confirmed through the suspect's " + r.evidence["quantization"]["format"].get<std::string>() +
            " grid (" + std::to_string(g["outside_blend"].get<uint64_t>()) + " of " +
            std::to_string(g["elements"].get<uint64_t>()) + " blended values outside the suspect's cells, against " +
            std::to_string(g["outside_reference"].get<uint64_t>()) + " for the reference alone)";
  } else {
    text += "; every major component fits with z >= " + number_text(e.z_min);
  }
  // What the recipe leaves unexplained beyond rounding (~0.001-0.002 of the norm in bf16).
  const double unexplained = r.evidence.value("unexplained_level", 0.0);
  if (unexplained > kRoundingLevel && grid_confirmed) {
    text += "; then rounded to that grid, which adds " + number_text(100 * unexplained, 2) +
            "% of the weights' norm that the recipe does not explain";
  } else if (unexplained > kRoundingLevel) {
    text += "; followed by further training or noise of about " + number_text(100 * unexplained, 2) +
            "% of the weights' norm, which the recipe does not explain";
    r.evidence["disguise_level"] = unexplained;
  }
  r.evidence["summary"] = text;
}

}  // namespace alloy::detail
