// The recovered recipe's helpers and the rebuild check: each hypothesis is merged again on sampled
// tensors exactly as alloy-merge would, and the one that rebuilds the suspect best is kept.
#include <algorithm>
#include <cmath>
#include <map>

#include "alloy/core/dtype.h"
#include "verdict.h"

namespace alloy::detail {
namespace {

// The largest fitted tensor of each component, then the largest others, each at most 2^20
// elements so that trying several hypotheses stays cheap whatever the model size.
std::vector<std::string> rebuild_sample(const VerdictContext& v) {
  const int most = v.options.rebuild_check_tensors;
  std::vector<const TensorAssay*> fitted;
  for (const auto& t : v.result.tensors) {
    if (t.fitted && !t.aligned && t.numel <= (uint64_t(1) << 20)) fitted.push_back(&t);
  }
  std::stable_sort(fitted.begin(), fitted.end(), [](auto* a, auto* b) { return a->numel > b->numel; });
  std::vector<std::string> names, seen;
  for (const auto* t : fitted) {
    if (std::find(seen.begin(), seen.end(), t->component) != seen.end()) continue;
    seen.push_back(t->component);
    names.push_back(t->name);
  }
  for (const auto* t : fitted) {
    if (int(names.size()) >= most) break;
    if (std::find(names.begin(), names.end(), t->name) == names.end()) names.push_back(t->name);
  }
  if (int(names.size()) > most) names.resize(size_t(most));
  return names;
}

// Every number under a "parameters" key rounded to `digits` decimals.
nlohmann::json snapped(nlohmann::json j, int digits, bool inside = false) {
  if (j.is_number_float() && inside) return round_digits(j.get<double>(), digits);
  if (j.is_object()) {
    for (auto& [key, value] : j.items()) value = snapped(value, digits, inside || key == "parameters");
  } else if (j.is_array()) {
    for (auto& value : j) value = snapped(value, digits, inside);
  }
  return j;
}

// The recipes to try, in order of preference: each hypothesis rounded to 1, 2 and 3 decimals
// (people write round numbers; in a half-precision compute dtype nearby values are the same
// number), then as measured; each also with float32 compute for a half-precision suspect.
std::vector<nlohmann::json> recipe_variants(const std::vector<nlohmann::json>& hypotheses,
                                            const std::string& out_dtype) {
  std::vector<nlohmann::json> variants;
  for (const auto& h : hypotheses) {
    for (int digits : {1, 2, 3, -1}) {
      const nlohmann::json recipe = digits < 0 ? h : snapped(h, digits);
      variants.push_back(recipe);
      if (out_dtype != "float32") {
        nlohmann::json f32 = recipe;
        f32["dtype"] = "float32";
        f32["out_dtype"] = out_dtype;
        variants.push_back(f32);
      }
    }
  }
  return variants;
}

// Strictly better only, so that earlier (rounder, first-listed) recipes win ties: more elements
// rebuilt exactly, else (when not all are) a clearly smaller error.
bool better_check(const nlohmann::json& check, const nlohmann::json& best) {
  if (best.is_null()) return true;
  const double exact = check["exact_fraction"].get<double>();
  const double best_exact = best["exact_fraction"].get<double>();
  return exact > best_exact + 1e-12 ||
         (std::fabs(exact - best_exact) <= 1e-12 && exact < 1.0 &&
          check["relative_error"].get<double>() < 0.999 * best["relative_error"].get<double>());
}

}  // namespace

std::string torch_dtype_of(const Model& model) {
  std::map<DType, uint64_t> bytes;
  for (const auto& t : model.tensors()) bytes[t.info->dtype] += t.info->nbytes();
  DType best = DType::F32;
  uint64_t most = 0;
  for (const auto& [d, b] : bytes) {
    if (b > most) most = b, best = d;
  }
  return dtype_torch_name(best);
}

double round_digits(double value, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(value * s) / s;
}

void confirm_by_rebuild(VerdictContext& v, const std::vector<nlohmann::json>& hypotheses) {
  if (v.options.rebuild_check_tensors <= 0) return;
  const auto names = rebuild_sample(v);
  nlohmann::json best_check, best_recipe;
  for (const auto& recipe : recipe_variants(hypotheses, torch_dtype_of(v.suspect))) {
    nlohmann::json check;
    try {
      check = rebuild_check(recipe, v.suspect, names);
    } catch (const std::exception& e) {
      v.note(std::string("rebuild check of a hypothesis failed: ") + e.what());
      continue;
    }
    if (!check.contains("exact_fraction")) continue;
    if (better_check(check, best_check)) best_check = check, best_recipe = recipe;
  }
  if (best_check.is_null()) return;
  v.result.recipe = best_recipe;
  best_check["merge_method"] = best_recipe["merge_method"];
  best_check["compute_dtype"] = best_recipe["dtype"];
  if (v.result.method == "dare_ties") best_check["note"] = "DARE masks are random: only the error is meaningful";
  v.result.evidence["rebuild"] = best_check;
}

}  // namespace alloy::detail
