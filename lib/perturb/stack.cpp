// Frankenmerge stacking: layers duplicated and reordered by a layer map, tensors renumbered,
// config.json's layer count rewritten (see alloy/perturb/perturb.h).
#include <charconv>

#include "alloy/core/error.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

// The layer of "model.layers.L.rest" and the rest, or -1 for a tensor outside the layers.
int split_layer_name(const std::string& name, std::string* rest) {
  static const std::string kPrefix = "model.layers.";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  const size_t dot = name.find('.', kPrefix.size());
  if (dot == std::string::npos) return -1;
  int layer = -1;
  const char* begin = name.data() + kPrefix.size();
  const auto [end, ec] = std::from_chars(begin, name.data() + dot, layer);
  if (ec != std::errc() || end != name.data() + dot || dot == kPrefix.size()) return -1;
  *rest = name.substr(dot + 1);
  return layer;
}

}  // namespace

PerturbPlan plan_layer_stack(const PerturbInput& input) {
  const Model& model = input.model;
  int layers = 0;
  std::string rest;
  for (const auto& t : model.tensors())
    layers = std::max(layers, split_layer_name(t.name(), &rest) + 1);
  if (input.arch) layers = input.arch->layers;
  const std::vector<int>& map = input.options.layer_map;
  for (int source : map) {
    if (source >= layers) {
      throw Error(ErrorCode::kInvalidArgument,
                  "perturb: --layer-map names layer " + std::to_string(source) + " but " +
                      model.path().string() + " has " + std::to_string(layers) + " layers (0.." +
                      std::to_string(layers - 1) + ")");
    }
  }
  PerturbPlan plan;
  // Embeddings (and anything else before the first layer tensor), the layers in map order, then
  // the rest, each group in the input's order.
  bool seen_layer = false;
  std::vector<PlannedTensor> before, after;
  for (const auto& t : model.tensors()) {
    if (split_layer_name(t.name(), &rest) >= 0) {
      seen_layer = true;
      continue;
    }
    (seen_layer ? after : before).push_back({t.name(), t.name(), {}});
  }
  plan.tensors = before;
  for (size_t i = 0; i < map.size(); ++i) {
    for (const auto& t : model.tensors()) {
      if (split_layer_name(t.name(), &rest) == map[i])
        plan.tensors.push_back({layer_prefix(int(i)) + rest, t.name(), {}});
    }
  }
  plan.tensors.insert(plan.tensors.end(), after.begin(), after.end());

  if (model.has_config()) {
    json config = model.config();
    config["num_hidden_layers"] = map.size();
    // Per-layer lists (e.g. transformers' layer_types) follow their layers.
    for (const char* key : {"layer_types"}) {
      if (config.contains(key) && config[key].is_array() && config[key].size() == size_t(layers)) {
        json remapped = json::array();
        for (int source : map) remapped.push_back(config[key][size_t(source)]);
        config[key] = remapped;
      }
    }
    plan.config = config;
  }
  plan.truth["layer_map"] = map;
  plan.truth["source_layers"] = layers;
  return plan;
}

}  // namespace alloy::detail
