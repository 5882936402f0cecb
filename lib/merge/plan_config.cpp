// Planner stage 5: the output's config.json, with the layer count and every per-layer list of the
// family following the output's layers (a passthrough that stacks or drops layers must not leave
// layer_types or mlp_only_layers describing the donor's layers).
#include <algorithm>
#include <set>

#include "plan_internal.h"

namespace alloy {
namespace {

// The lists alloy remaps for a model whose family it does not know.
const std::vector<LayerListDef>& default_layer_lists() {
  static const std::vector<LayerListDef> lists = {{"layer_types", LayerListDef::Kind::kPerLayer},
                                                  {"mlp_only_layers", LayerListDef::Kind::kIndices}};
  return lists;
}

[[noreturn]] void cannot_remap(const MergePlan& plan, const std::string& key, const std::string& why) {
  throw Error(ErrorCode::kRecipe, plan.recipe.where(plan.recipe.merge_method_position) + "config.json's '" + key +
                                      "' cannot follow the output's layers: " + why);
}

// The language model's config object of model `m` (its text_config where the family has one).
const nlohmann::json& source_text(const MergePlan& plan, size_t m) {
  return plan.architectures[m].text_config_of(plan.models[m]->config());
}

nlohmann::json remap_per_layer(const MergePlan& plan, const std::string& key) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& origin : plan.layer_origins) {
    const nlohmann::json& text = source_text(plan, origin.model);
    const nlohmann::json* list = text.contains(key) ? &text[key] : nullptr;
    if (!list || !list->is_array() || origin.layer >= static_cast<int>(list->size())) {
      cannot_remap(plan, key, "model '" + plan.model_names[origin.model] + "' has no entry for its layer " +
                                  std::to_string(origin.layer));
    }
    out.push_back((*list)[static_cast<size_t>(origin.layer)]);
  }
  return out;
}

std::set<int64_t> index_set(const MergePlan& plan, size_t model, const std::string& key) {
  std::set<int64_t> out;
  const nlohmann::json& text = source_text(plan, model);
  if (!text.contains(key)) return out;  // absent: no layer is listed
  if (!text[key].is_array()) cannot_remap(plan, key, "model '" + plan.model_names[model] + "' has no list there");
  for (const auto& v : text[key]) {
    if (!v.is_number_integer()) cannot_remap(plan, key, "model '" + plan.model_names[model] + "' lists a non-integer");
    out.insert(v.get<int64_t>());
  }
  return out;
}

nlohmann::json remap_indices(const MergePlan& plan, const std::string& key) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t j = 0; j < plan.layer_origins.size(); ++j) {
    const auto& origin = plan.layer_origins[j];
    if (index_set(plan, origin.model, key).count(origin.layer)) out.push_back(j);
  }
  return out;
}

// first_k_dense_replace: the output's dense layers must again be a prefix.
nlohmann::json remap_dense_prefix(const MergePlan& plan, const std::string& key) {
  int dense_prefix = 0;
  bool moe_seen = false;
  for (size_t j = 0; j < plan.layer_origins.size(); ++j) {
    const auto& origin = plan.layer_origins[j];
    const nlohmann::json& text = source_text(plan, origin.model);
    if (!text.contains(key) || !text[key].is_number_integer()) {
      cannot_remap(plan, key, "model '" + plan.model_names[origin.model] + "' has no integer there");
    }
    const bool dense = origin.layer < text[key].get<int64_t>();
    if (dense && moe_seen) {
      cannot_remap(plan, key, "output layer " + std::to_string(j) + " is dense (layer " + std::to_string(origin.layer) +
                                  " of '" + plan.model_names[origin.model] +
                                  "') but follows a routed-expert layer, which a dense-prefix count cannot describe");
    }
    moe_seen |= !dense;
    if (dense) ++dense_prefix;
  }
  return dense_prefix;
}

}  // namespace

nlohmann::json merged_config(const MergePlan& plan) {
  nlohmann::json config = plan.models[static_cast<size_t>(plan.config_donor)]->config();
  if (!config.is_object()) config = nlohmann::json::object();
  const ModelArchitecture& arch = plan.architectures[static_cast<size_t>(plan.config_donor)];
  const ArchitectureDef* def = arch.definition();
  const std::string& scope = arch.text_config();
  const bool nested = !scope.empty() && config.contains(scope) && config[scope].is_object();
  nlohmann::json& text = nested ? config[scope] : config;
  const std::string count_key = def ? def->layer_count_key : "num_hidden_layers";
  if (nested) {
    text[count_key] = plan.output_layers;
    if (config.contains(count_key)) config[count_key] = plan.output_layers;
  } else {
    config["num_hidden_layers"] = plan.output_layers;
    if (count_key != "num_hidden_layers") config[count_key] = plan.output_layers;
  }
  // Whole-model merges keep every layer in place: the lists stay as the donor has them.
  bool identity = plan.layer_origins.size() == static_cast<size_t>(arch.layer_count());
  for (size_t j = 0; identity && j < plan.layer_origins.size(); ++j) {
    identity = plan.layer_origins[j].layer == static_cast<int>(j);
  }
  const auto& lists = def ? def->layer_lists : default_layer_lists();
  for (const auto& list : lists) {
    if (!text.contains(list.key)) continue;
    if (identity && std::all_of(plan.layer_origins.begin(), plan.layer_origins.end(), [&](const LayerOrigin& o) {
          return o.model == static_cast<size_t>(plan.config_donor);
        })) {
      continue;
    }
    switch (list.kind) {
      case LayerListDef::Kind::kPerLayer: text[list.key] = remap_per_layer(plan, list.key); break;
      case LayerListDef::Kind::kIndices: text[list.key] = remap_indices(plan, list.key); break;
      case LayerListDef::Kind::kDensePrefix: text[list.key] = remap_dense_prefix(plan, list.key); break;
    }
  }
  // `modules:`: each merged module's own layer count ("vision_config.depth"), where the donor has it.
  for (const auto& [key, layers] : plan.module_layer_counts) {
    nlohmann::json* object = &config;
    std::string_view rest = key;
    for (size_t dot; object && (dot = rest.find('.')) != std::string_view::npos; rest.remove_prefix(dot + 1)) {
      const std::string part(rest.substr(0, dot));
      object = object->is_object() && object->contains(part) ? &(*object)[part] : nullptr;
    }
    if (object && object->is_object() && object->contains(std::string(rest))) (*object)[std::string(rest)] = layers;
  }
  return config;
}

}  // namespace alloy
