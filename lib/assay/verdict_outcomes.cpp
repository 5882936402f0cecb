// The verdicts that name no merge method: copy, fine-tune and independent, and the layer-stacking
// merge (passthrough), which like a copy rests on bit-identical tensors rather than on a fit.
#include <algorithm>

#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kCopyDeviation = 0.002;  // |S - C| / |C| at bf16 re-rounding level

Weighted deviation_of_fits(const VerdictContext& v) {
  return v.over_fitted([](const TensorAssay& t) { return t.deviation; });
}

}  // namespace

void independent(VerdictContext& v, const std::string& why) {
  AssayResult& r = v.result;
  r.verdict = "independent";
  r.method.clear();
  r.base.reset();
  r.recipe = nlohmann::json::object();
  double best = 0;
  for (const auto& c : r.candidates) best = std::max(best, c.correlation);
  r.evidence["summary"] = why;
  r.evidence["max_correlation"] = best;
}

void fine_tune(VerdictContext& v, int base, const std::string& why) {
  AssayResult& r = v.result;
  const auto& c = v.candidate(base);
  if (!c.related) {
    independent(v, "no candidate correlates with the suspect beyond chance");
    return;
  }
  r.verdict = "fine-tune";
  r.base = base;
  v.candidate(base).involved = true;
  r.recipe = nlohmann::json::object();
  const MajorEvidence e = major_evidence(v);
  const Weighted deviation = deviation_of_fits(v);
  r.evidence["summary"] = "derived from " + c.path + " (median correlation " + std::to_string(c.correlation) +
                          ", relative deviation " + std::to_string(deviation.median()) +
                          "); not a merge of the candidates: " + why;
  r.evidence["z_min"] = e.z_min;
  r.evidence["log10_false_positive"] = e.log10_false_positive;
  r.evidence["deviation"] = deviation.median();
  record_unexplained(v);
}

bool try_copy(VerdictContext& v) {
  AssayResult& r = v.result;
  std::vector<uint64_t> exact(size_t(v.k), 0);
  for (const auto& t : r.tensors) {
    if (t.fitted && t.copy_of >= 0) exact[size_t(t.copy_of)] += t.numel;
  }
  const int copied = int(std::max_element(exact.begin(), exact.end()) - exact.begin());
  const bool bit_exact = exact[size_t(copied)] == v.fitted_numel;
  const int ref = bit_exact ? copied : majority_reference(v);
  const Weighted deviation = deviation_of_fits(v);
  if (!bit_exact && !(deviation.median() <= kCopyDeviation && v.candidate(ref).related)) return false;
  r.verdict = "copy";
  r.base = ref;
  v.candidate(ref).involved = true;
  r.recipe = nlohmann::json::object();
  r.evidence["summary"] = bit_exact ? "every compared tensor is bit-identical to " + v.candidate(ref).path
                                    : "every tensor equals " + v.candidate(ref).path +
                                          " up to rounding (median relative deviation " +
                                          std::to_string(deviation.median()) + ")";
  r.evidence["deviation"] = deviation.median();
  return true;
}

bool try_stacking(VerdictContext& v) {
  AssayResult& r = v.result;
  const int layers = count_layers(v.suspect);
  bool names_differ = true;
  for (const Model* m : v.models) names_differ &= count_layers(*m) != layers;
  uint64_t copies = 0;
  std::vector<int> sources;
  for (const auto& t : r.tensors) {
    if (t.fitted && t.copy_of >= 0) {
      copies += t.numel;
      if (std::find(sources.begin(), sources.end(), t.copy_of) == sources.end()) sources.push_back(t.copy_of);
    }
  }
  const bool mixed_copies = v.fitted_numel > 0 && copies == v.fitted_numel && sources.size() >= 2;
  if (!names_differ && !mixed_copies) return false;
  nlohmann::json layer_map;
  const bool sampled = v.options.sample_fraction > 0 && v.options.sample_fraction < 1;
  const nlohmann::json slices =
      detect_layer_stacking(v.suspect, v.models, v.options.candidates, &layer_map,
                            v.options.sample_fraction, v.options.sample_seed);
  if (slices.is_null()) {
    if (names_differ) v.note("the suspect's layer count differs from every candidate's and its layers are not copies");
    return false;
  }
  r.verdict = "merge";
  r.method = "passthrough";
  r.base.reset();
  std::vector<std::string> used;
  for (const auto& s : slices) used.push_back(s["sources"][0]["model"]);
  for (auto& c : r.candidates) c.involved = std::find(used.begin(), used.end(), c.path) != used.end();
  r.recipe = {{"merge_method", "passthrough"}, {"slices", slices}, {"dtype", torch_dtype_of(v.suspect)}};
  r.evidence["layer_map"] = layer_map;
  r.evidence["summary"] = "every decoder layer is a bit-identical copy of a candidate layer (" +
                          std::to_string(slices.size()) + " slices" +
                          (sampled ? "; compared on each tensor's sampled rows" : "") + ")";
  r.evidence["z_min"] = nullptr;
  r.evidence["log10_false_positive"] = nullptr;  // exact 64-bit fingerprints: chance ~2^-64 per layer
  confirm_by_rebuild(v, {r.recipe});
  return true;
}

}  // namespace alloy::detail
