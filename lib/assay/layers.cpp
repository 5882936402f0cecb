// Layer stacking (passthrough frankenmerges): map each decoder layer of the suspect to a candidate
// layer whose tensors are bit-identical, by fingerprints of the raw bytes keyed by the tensor's
// name within the layer (the layers as the architecture model finds them: "model.layers.",
// "model.language_model.layers.", ...). Reads every candidate layer once (a sampled assay: the
// sampled rows of each tensor); run only when the names do not line up (different layer counts) or
// the per-tensor fit found exact copies.
#include <map>

#include "internal.h"

namespace alloy::detail {
namespace {

// layer -> (suffix -> fingerprint); sampled (fraction in (0, 1)): of the rows drawn for the suffix.
std::map<int, std::map<std::string, uint64_t>> layer_fingerprints(const Model& model,
                                                                  double fraction, uint64_t seed) {
  std::map<int, std::map<std::string, uint64_t>> out;
  const ModelArchitecture arch = detect_architecture(model);
  for (const auto& t : model.tensors()) {
    int layer;
    std::string suffix;
    if (!arch.split_layer(t.name(), &layer, &suffix)) continue;
    const std::vector<uint64_t> rows = sampled_rows(t.info->shape, fraction, seed, suffix);
    out[layer][suffix] = tensor_fingerprint(t, rows) ^ (uint64_t(t.info->dtype) << 56);
  }
  return out;
}

}  // namespace

int count_layers(const Model& model) {
  return named_layer_count(detect_architecture(model), model);
}

nlohmann::json detect_layer_stacking(const Model& suspect,
                                     const std::vector<const Model*>& candidates,
                                     const std::vector<std::string>& paths,
                                     nlohmann::json* layer_map, double sample_fraction,
                                     uint64_t sample_seed) {
  const auto wanted = layer_fingerprints(suspect, sample_fraction, sample_seed);
  if (wanted.empty()) return nullptr;
  std::vector<std::map<int, std::map<std::string, uint64_t>>> have;
  for (const Model* c : candidates)
    have.push_back(layer_fingerprints(*c, sample_fraction, sample_seed));
  // Each suspect layer -> (candidate, layer); prefer continuing the previous layer's run.
  std::vector<std::pair<int, int>> source;
  std::pair<int, int> previous{-1, -1};
  for (const auto& entry_of_layer : wanted) {
    // Named, not a structured binding: the lambda below captures it (clang before C++20's P1091).
    const int layer = entry_of_layer.first;
    const auto& tensors = entry_of_layer.second;
    if (layer != int(source.size())) return nullptr;  // a gap in the suspect's own layers
    std::pair<int, int> found{-1, -1};
    const auto matches = [&](int c, int m) {
      const auto it = have[size_t(c)].find(m);
      return it != have[size_t(c)].end() && it->second == tensors;
    };
    if (previous.first >= 0 && matches(previous.first, previous.second + 1)) {
      found = {previous.first, previous.second + 1};
    }
    for (int c = 0; c < int(have.size()) && found.first < 0; ++c) {
      for (const auto& entry : have[size_t(c)]) {
        if (matches(c, entry.first)) {
          found = {c, entry.first};
          break;
        }
      }
    }
    if (found.first < 0) return nullptr;
    source.push_back(found);
    previous = found;
  }
  nlohmann::json slices = nlohmann::json::array();
  *layer_map = nlohmann::json::array();
  for (size_t l = 0; l < source.size();) {
    size_t end = l + 1;
    while (end < source.size() && source[end].first == source[l].first &&
           source[end].second == source[end - 1].second + 1) {
      ++end;
    }
    const int c = source[l].first, first = source[l].second;
    slices.push_back({{"sources", {{{"model", paths[size_t(c)]}, {"layer_range", {first, first + int(end - l)}}}}}});
    for (size_t i = l; i < end; ++i) {
      layer_map->push_back({{"layer", i}, {"model", paths[size_t(c)]}, {"source_layer", source[i].second}});
    }
    l = end;
  }
  return slices;
}

}  // namespace alloy::detail
