// The architecture model: definitions from data/architectures/*.json (compiled in by CMake as
// architecture_data.cpp), and their application to one model's config.json and tensor names.
#include "alloy/core/architecture.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "architecture_data.h"

namespace alloy {
namespace {

struct RoleName {
  TensorRole role;
  const char* name;
};
constexpr RoleName kRoles[] = {
    {TensorRole::kEmbedding, "embedding"},
    {TensorRole::kLmHead, "lm_head"},
    {TensorRole::kNorm, "norm"},
    {TensorRole::kAttentionQ, "attention.q"},
    {TensorRole::kAttentionK, "attention.k"},
    {TensorRole::kAttentionV, "attention.v"},
    {TensorRole::kAttentionO, "attention.o"},
    {TensorRole::kAttentionQkv, "attention.qkv"},
    {TensorRole::kAttentionSinks, "attention.sinks"},
    {TensorRole::kAttentionQA, "attention.q_a"},
    {TensorRole::kAttentionQB, "attention.q_b"},
    {TensorRole::kAttentionKvA, "attention.kv_a"},
    {TensorRole::kAttentionKvB, "attention.kv_b"},
    {TensorRole::kMlpGate, "mlp.gate"},
    {TensorRole::kMlpUp, "mlp.up"},
    {TensorRole::kMlpDown, "mlp.down"},
    {TensorRole::kMlpGateUp, "mlp.gate_up"},
    {TensorRole::kExpertGate, "experts.gate"},
    {TensorRole::kExpertUp, "experts.up"},
    {TensorRole::kExpertDown, "experts.down"},
    {TensorRole::kExpertGateUp, "experts.gate_up"},
    {TensorRole::kExpertBias, "experts.bias"},
    {TensorRole::kRouter, "router"},
    {TensorRole::kRouterBias, "router.bias"},
    {TensorRole::kSharedExpertGate, "shared_expert.gate"},
    {TensorRole::kSharedExpertUp, "shared_expert.up"},
    {TensorRole::kSharedExpertDown, "shared_expert.down"},
    {TensorRole::kSharedExpertRouter, "shared_expert.router"},
    {TensorRole::kLinearAttentionIn, "linear_attention.in"},
    {TensorRole::kLinearAttentionOut, "linear_attention.out"},
    {TensorRole::kLinearAttentionConv, "linear_attention.conv"},
    {TensorRole::kLinearAttentionState, "linear_attention.state"},
    {TensorRole::kLinearAttentionNorm, "linear_attention.norm"},
    {TensorRole::kOther, "other"},
};

struct ViewName {
  TensorView view;
  const char* name;
};
constexpr ViewName kViews[] = {
    {TensorView::kPlain, "plain"},
    {TensorView::kNormOffsetOne, "norm_offset_one"},
    {TensorView::kGatedQ, "gated_q"},
    {TensorView::kFusedQkv, "fused_qkv"},
    {TensorView::kFusedGateUp, "fused_gate_up"},
    {TensorView::kExperts, "experts"},
    {TensorView::kExpertsFusedGateUp, "experts_fused_gate_up"},
    {TensorView::kExpertsInterleavedGateUp, "experts_interleaved_gate_up"},
};

[[noreturn]] void bad(const std::string& label, const std::string& what) {
  throw Error(ErrorCode::kBadConfig, "architecture definition " + label + ": " + what);
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& label, bool required) {
  if (!j.contains(key)) {
    if (required) bad(label, std::string("missing '") + key + "'");
    return "";
  }
  if (!j[key].is_string()) bad(label, std::string("'") + key + "' is not a string");
  return j[key].get<std::string>();
}

std::vector<std::string> string_list(const nlohmann::json& j, const char* key, const std::string& label) {
  std::vector<std::string> out;
  if (!j.contains(key)) return out;
  if (!j[key].is_array()) bad(label, std::string("'") + key + "' is not a list");
  for (const auto& v : j[key]) {
    if (!v.is_string()) bad(label, std::string("'") + key + "' holds a non-string");
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::vector<TensorDef> tensor_list(const nlohmann::json& j, const char* key, const std::string& label) {
  std::vector<TensorDef> out;
  if (!j.contains(key)) return out;
  if (!j[key].is_array()) bad(label, std::string("'") + key + "' is not a list");
  for (const auto& e : j[key]) {
    if (!e.is_object()) bad(label, std::string("an entry of '") + key + "' is not an object");
    const std::string where = label + " " + key;
    TensorDef t;
    t.name = string_field(e, "name", where, true);
    const std::string role = string_field(e, "role", where + " '" + t.name + "'", true);
    if (!role_from_name(role, &t.role)) bad(label, "tensor '" + t.name + "': unknown role '" + role + "'");
    const std::string view = string_field(e, "view", where, false);
    if (!view.empty() && !view_from_name(view, &t.view)) {
      bad(label, "tensor '" + t.name + "': unknown view '" + view + "'");
    }
    if (e.contains("optional")) {
      if (!e["optional"].is_boolean()) bad(label, "tensor '" + t.name + "': 'optional' is not a boolean");
      t.optional = e["optional"].get<bool>();
    }
    t.tied_to = string_field(e, "tied_to", where, false);
    for (const auto& [k, v] : e.items()) {
      if (k != "name" && k != "role" && k != "view" && k != "optional" && k != "tied_to") {
        bad(label, "tensor '" + t.name + "': unknown key '" + k + "'");
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

// "mlp.experts.{e}.up_proj.weight" against "mlp.experts.12.up_proj.weight": true, *expert = 12.
bool match_template(const std::string& pattern, std::string_view name, int* expert) {
  const size_t hole = pattern.find("{e}");
  if (hole == std::string::npos) return name == pattern;
  const std::string_view before(pattern.data(), hole), after(pattern.data() + hole + 3);
  if (name.size() <= before.size() + after.size()) return false;
  if (name.substr(0, before.size()) != before || name.substr(name.size() - after.size()) != after) return false;
  const std::string_view digits = name.substr(before.size(), name.size() - before.size() - after.size());
  if (digits.empty() || digits.size() > 6) return false;
  int value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  *expert = value;
  return true;
}


// The role a name suggests when no definition covers it (inferred models, unknown tensors).
TensorRole guess_role(std::string_view name) {
  const auto has = [&](const char* s) { return name.find(s) != std::string_view::npos; };
  if (has("lm_head")) return TensorRole::kLmHead;
  if (has("embed")) return TensorRole::kEmbedding;
  if (has("norm")) return TensorRole::kNorm;
  if (has("shared_expert")) {
    if (has("gate_proj")) return TensorRole::kSharedExpertGate;
    if (has("up_proj")) return TensorRole::kSharedExpertUp;
    if (has("down_proj")) return TensorRole::kSharedExpertDown;
    if (has("shared_expert_gate")) return TensorRole::kSharedExpertRouter;
  }
  if (has("experts")) {
    if (has("gate_up")) return TensorRole::kExpertGateUp;
    if (has("gate_proj") || has(".w1.")) return TensorRole::kExpertGate;
    if (has("up_proj") || has(".w3.")) return TensorRole::kExpertUp;
    if (has("down_proj") || has(".w2.")) return TensorRole::kExpertDown;
  }
  if (has("router") || has("mlp.gate.") || has("block_sparse_moe.gate.")) return TensorRole::kRouter;
  if (has("q_proj")) return TensorRole::kAttentionQ;
  if (has("k_proj")) return TensorRole::kAttentionK;
  if (has("v_proj")) return TensorRole::kAttentionV;
  if (has("o_proj")) return TensorRole::kAttentionO;
  if (has("qkv")) return TensorRole::kAttentionQkv;
  if (has("gate_up_proj")) return TensorRole::kMlpGateUp;
  if (has("gate_proj")) return TensorRole::kMlpGate;
  if (has("up_proj")) return TensorRole::kMlpUp;
  if (has("down_proj")) return TensorRole::kMlpDown;
  return TensorRole::kOther;
}

// The kind of a layer from its tensors, when the config has no per-layer list.
std::string derived_layer_type(const std::vector<std::string>& suffixes) {
  bool linear = false, mamba = false, attention = false;
  for (const auto& s : suffixes) {
    linear |= s.rfind("linear_attn.", 0) == 0;
    mamba |= s.rfind("mamba.", 0) == 0;
    attention |= s.rfind("self_attn.", 0) == 0 || s.rfind("attn.", 0) == 0 || s.rfind("attention.", 0) == 0;
  }
  if (linear) return "linear_attention";
  if (mamba) return "mamba";
  if (attention) return "attention";
  return suffixes.empty() ? "missing" : "other";
}

// The prefix "<P>layers." holding the most tensor names, for models without a usable definition.
std::string inferred_layer_prefix(const std::vector<std::string>& names) {
  std::map<std::string, size_t> counts;
  for (const auto& name : names) {
    size_t at = 0;
    while ((at = name.find("layers.", at)) != std::string::npos) {
      if (at == 0 || name[at - 1] == '.') {
        const std::string prefix = name.substr(0, at + 7);
        int index;
        std::string rest;
        if (split_indexed(name, prefix, &index, &rest)) {
          ++counts[prefix];
          break;
        }
      }
      at += 7;
    }
  }
  std::string best;
  size_t most = 0;
  for (const auto& [prefix, count] : counts) {
    if (count > most) best = prefix, most = count;  // ties: the lexicographically first
  }
  return best;
}

bool config_names(const nlohmann::json& config, const char* key, const std::vector<std::string>& wanted) {
  if (!config.is_object() || !config.contains(key)) return false;
  const auto& value = config[key];
  const auto matches = [&](const nlohmann::json& v) {
    return v.is_string() && std::find(wanted.begin(), wanted.end(), v.get<std::string>()) != wanted.end();
  };
  if (value.is_array()) return !value.empty() && matches(value[0]);
  return matches(value);
}

const ArchitectureDef* definition_for(const nlohmann::json& config) {
  const auto& defs = architecture_definitions();
  for (const auto& def : defs) {
    if (config_names(config, "architectures", def.architectures)) return &def;
  }
  for (const auto& def : defs) {
    if (config_names(config, "model_type", def.model_types)) return &def;
    if (config.is_object() && config.contains("text_config") &&
        config_names(config["text_config"], "model_type", def.model_types)) {
      return &def;
    }
  }
  return nullptr;
}

std::optional<int> config_int(const nlohmann::json* value) {
  if (!value || !value->is_number_integer()) return std::nullopt;
  const int64_t v = value->get<int64_t>();
  if (v < 0 || v > 1'000'000) return std::nullopt;
  return static_cast<int>(v);
}

}  // namespace

bool split_indexed(std::string_view name, std::string_view prefix, int* index, std::string* rest) {
  if (prefix.empty() || name.substr(0, prefix.size()) != prefix) return false;
  size_t i = prefix.size();
  int value = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - prefix.size() < 7) {
    value = value * 10 + (name[i] - '0');
    ++i;
  }
  const size_t digits = i - prefix.size();
  if (digits == 0 || digits > 6 || i >= name.size() || name[i] != '.' || i + 1 == name.size()) return false;
  *index = value;
  *rest = std::string(name.substr(i + 1));
  return true;
}

const char* role_name(TensorRole role) {
  for (const auto& r : kRoles) {
    if (r.role == role) return r.name;
  }
  return "other";
}

bool role_from_name(std::string_view name, TensorRole* out) {
  for (const auto& r : kRoles) {
    if (name == r.name) return *out = r.role, true;
  }
  return false;
}

const char* view_name(TensorView view) {
  for (const auto& v : kViews) {
    if (v.view == view) return v.name;
  }
  return "plain";
}

bool view_from_name(std::string_view name, TensorView* out) {
  for (const auto& v : kViews) {
    if (name == v.name) return *out = v.view, true;
  }
  return false;
}

const nlohmann::json* json_path(const nlohmann::json& object, std::string_view dotted) {
  const nlohmann::json* at = &object;
  while (!dotted.empty()) {
    const size_t dot = dotted.find('.');
    const std::string key(dotted.substr(0, dot));
    if (!at->is_object() || !at->contains(key)) return nullptr;
    at = &(*at)[key];
    dotted = dot == std::string_view::npos ? std::string_view() : dotted.substr(dot + 1);
  }
  return at;
}

ArchitectureDef parse_architecture_def(const nlohmann::json& j, const std::string& label) {
  if (!j.is_object()) bad(label, "not a JSON object");
  static const std::set<std::string> kKeys = {
      "family", "title", "architectures", "model_types", "text_config", "layer_prefixes", "layer_count_key",
      "layer_types_key", "layer_lists", "pre", "layer", "post", "submodels", "notes", "$comment"};
  for (const auto& [k, v] : j.items()) {
    if (!kKeys.count(k)) bad(label, "unknown key '" + k + "'");
  }
  ArchitectureDef def;
  def.family = string_field(j, "family", label, true);
  def.title = string_field(j, "title", label, true);
  def.architectures = string_list(j, "architectures", label);
  def.model_types = string_list(j, "model_types", label);
  def.text_config = string_field(j, "text_config", label, false);
  def.layer_prefixes = string_list(j, "layer_prefixes", label);
  if (def.layer_prefixes.empty()) bad(label, "'layer_prefixes' is missing or empty");
  for (const auto& p : def.layer_prefixes) {
    if (p.empty() || p.back() != '.') bad(label, "layer prefix '" + p + "' must end with '.'");
  }
  if (j.contains("layer_count_key")) def.layer_count_key = string_field(j, "layer_count_key", label, true);
  def.layer_types_key = string_field(j, "layer_types_key", label, false);
  if (j.contains("layer_lists")) {
    if (!j["layer_lists"].is_object()) bad(label, "'layer_lists' is not an object");
    for (const auto& [key, kind] : j["layer_lists"].items()) {
      LayerListDef list;
      list.key = key;
      const std::string k = kind.is_string() ? kind.get<std::string>() : "";
      if (k == "per_layer") {
        list.kind = LayerListDef::Kind::kPerLayer;
      } else if (k == "indices") {
        list.kind = LayerListDef::Kind::kIndices;
      } else if (k == "dense_prefix") {
        list.kind = LayerListDef::Kind::kDensePrefix;
      } else {
        bad(label, "layer list '" + key + "': kind must be per_layer, indices or dense_prefix");
      }
      def.layer_lists.push_back(list);
    }
  }
  def.pre = tensor_list(j, "pre", label);
  def.layer = tensor_list(j, "layer", label);
  def.post = tensor_list(j, "post", label);
  if (def.layer.empty()) bad(label, "'layer' lists no tensors");
  if (j.contains("submodels")) {
    if (!j["submodels"].is_array()) bad(label, "'submodels' is not a list");
    for (const auto& s : j["submodels"]) {
      if (!s.is_object()) bad(label, "a submodel is not an object");
      SubModelDef sub;
      sub.name = string_field(s, "name", label + " submodel", true);
      sub.prefix = string_field(s, "prefix", label + " submodel", true);
      sub.layer_prefix = string_field(s, "layer_prefix", label + " submodel", false);
      sub.layer_count_key = string_field(s, "layer_count_key", label + " submodel", false);
      sub.module = string_field(s, "module", label + " submodel", false);
      if (sub.prefix.empty()) bad(label, "submodel '" + sub.name + "' has an empty prefix");
      def.submodels.push_back(sub);
    }
  }
  def.notes = string_field(j, "notes", label, false);
  for (const auto& sub : def.submodels) {
    if (sub.module == "text_decoder" || sub.module == "default") {
      bad(label, "submodel '" + sub.name + "': module '" + sub.module + "' is the language model's name");
    }
  }
  return def;
}

std::string ArchitectureDef::text_module() const {
  const bool modular = std::any_of(submodels.begin(), submodels.end(), [](const SubModelDef& s) { return !s.module.empty(); });
  return modular ? "text_decoder" : "default";
}

std::vector<std::string> ArchitectureDef::module_names() const {
  std::vector<std::string> out = {text_module()};
  for (const auto& sub : submodels) {
    if (!sub.module.empty() && std::find(out.begin() + 1, out.end(), sub.module) == out.end()) out.push_back(sub.module);
  }
  return out;
}

const std::vector<ArchitectureDef>& architecture_definitions() {
  static const std::vector<ArchitectureDef> defs = [] {
    std::vector<ArchitectureDef> out;
    for (const auto& file : detail::architecture_files()) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(file.text);
      } catch (const nlohmann::json::exception& e) {
        bad(file.name, std::string("not JSON: ") + e.what());
      }
      out.push_back(parse_architecture_def(j, file.name));
    }
    return out;
  }();
  return defs;
}

const ArchitectureDef* find_architecture_def(std::string_view family) {
  for (const auto& def : architecture_definitions()) {
    if (def.family == family) return &def;
  }
  return nullptr;
}

const std::vector<std::string>& ModelArchitecture::layer_suffixes(int layer) const {
  static const std::vector<std::string> kNone;
  if (layer < 0 || static_cast<size_t>(layer) >= suffixes_.size()) return kNone;
  return suffixes_[static_cast<size_t>(layer)];
}

std::string ModelArchitecture::layer_mixer(int layer) const { return derived_layer_type(layer_suffixes(layer)); }

bool ModelArchitecture::split_layer(std::string_view name, int* layer, std::string* suffix) const {
  return split_indexed(name, layer_prefix_, layer, suffix);
}

const nlohmann::json& ModelArchitecture::text_config_of(const nlohmann::json& config) const {
  if (!text_config_.empty() && config.is_object() && config.contains(text_config_) &&
      config[text_config_].is_object()) {
    return config[text_config_];
  }
  return config;
}

TensorPlace ModelArchitecture::classify(std::string_view name) const {
  TensorPlace place;
  if (definition_) {
    for (const auto& sub : definition_->submodels) {
      if (name.substr(0, sub.prefix.size()) != sub.prefix) continue;
      place.submodel = sub.name;
      std::string rest;
      if (!split_indexed(name, sub.layer_prefix, &place.layer, &rest)) place.layer = -1;
      place.role = guess_role(name);
      place.known = true;
      return place;
    }
  }
  if (split_layer(name, &place.layer, &place.suffix)) {
    if (definition_) {
      for (const auto& t : definition_->layer) {
        int expert = -1;
        if (match_template(t.name, place.suffix, &expert)) {
          place.expert = expert;
          place.role = t.role;
          place.view = t.view;
          place.known = true;
          return place;
        }
      }
    }
    place.role = guess_role(place.suffix);
    return place;
  }
  if (definition_) {
    for (const auto* list : {&definition_->pre, &definition_->post}) {
      for (const auto& t : *list) {
        if (t.name == name) {
          place.role = t.role;
          place.view = t.view;
          place.known = true;
          return place;
        }
      }
    }
  }
  place.role = guess_role(name);
  return place;
}

std::string ModelArchitecture::tied_to(std::string_view name) const {
  if (definition_) {
    for (const auto* list : {&definition_->pre, &definition_->post}) {
      for (const auto& t : *list) {
        if (t.name == name) return t.tied_to;
      }
    }
    return "";
  }
  return name == "lm_head.weight" ? "model.embed_tokens.weight" : "";
}

std::string ModelArchitecture::lm_head() const {
  if (definition_) {
    for (const auto& t : definition_->post) {
      if (t.role == TensorRole::kLmHead) return t.name;
    }
  }
  return "lm_head.weight";
}

nlohmann::json ModelArchitecture::summary() const { return summary_; }

ModelArchitecture detect_architecture(const nlohmann::json& config, const std::vector<std::string>& names) {
  ModelArchitecture arch;
  arch.definition_ = definition_for(config);
  if (arch.definition_) {
    const ArchitectureDef& def = *arch.definition_;
    arch.text_config_ = def.text_config;
    arch.layer_prefix_.clear();
    for (const auto& prefix : def.layer_prefixes) {
      for (const auto& name : names) {
        int layer;
        std::string rest;
        if (split_indexed(name, prefix, &layer, &rest)) {
          arch.layer_prefix_ = prefix;
          break;
        }
      }
      if (!arch.layer_prefix_.empty()) break;
    }
    if (arch.layer_prefix_.empty()) {
      const std::string inferred = inferred_layer_prefix(names);
      if (!inferred.empty()) {
        arch.notice_ = "config.json names the " + def.title + " architecture, but no tensor is under its layer prefix '" +
                       def.layer_prefixes.front() + "'; layers inferred from the tensor names instead";
        arch.definition_ = nullptr;
        arch.text_config_.clear();
        arch.layer_prefix_ = inferred;
      } else {
        arch.layer_prefix_ = def.layer_prefixes.front();
      }
    }
  }
  if (!arch.definition_) {
    const std::string inferred = inferred_layer_prefix(names);
    if (!inferred.empty()) arch.layer_prefix_ = inferred;
    if (arch.notice_.empty()) {
      std::string what = "no architecture definition matches this model";
      const nlohmann::json* a = json_path(config, "architectures");
      if (a && a->is_array() && !a->empty() && (*a)[0].is_string()) {
        what = "architecture '" + (*a)[0].get<std::string>() + "' has no definition in alloy";
      } else if (!config.is_object() || config.empty()) {
        what = "no config.json architecture";
      }
      arch.notice_ = what + "; decoder layers inferred from the tensor names (prefix '" + arch.layer_prefix_ + "')";
    }
    if (config.is_object() && !config.contains("num_hidden_layers") && config.contains("text_config") &&
        config["text_config"].is_object()) {
      arch.text_config_ = "text_config";
    }
  }
  // Per-layer tensor sets, from the names.
  int highest = -1;
  for (const auto& name : names) {
    int layer;
    std::string suffix;
    if (!arch.split_layer(name, &layer, &suffix)) continue;
    if (static_cast<size_t>(layer) >= arch.suffixes_.size()) arch.suffixes_.resize(static_cast<size_t>(layer) + 1);
    arch.suffixes_[static_cast<size_t>(layer)].push_back(std::move(suffix));
    highest = std::max(highest, layer);
  }
  const nlohmann::json& text = arch.text_config_of(config);
  const std::string count_key = arch.definition_ ? arch.definition_->layer_count_key : "num_hidden_layers";
  arch.layer_count_ = config_int(json_path(text, count_key)).value_or(highest + 1);

  // Layer kinds: the config's list when it fits, else from the tensors.
  const std::string types_key = arch.definition_ ? arch.definition_->layer_types_key : "layer_types";
  const nlohmann::json* listed = types_key.empty() ? nullptr : json_path(text, types_key);
  if (listed && listed->is_array() && listed->size() == static_cast<size_t>(arch.layer_count_) &&
      std::all_of(listed->begin(), listed->end(), [](const nlohmann::json& v) { return v.is_string(); })) {
    for (const auto& v : *listed) arch.layer_types_.push_back(v.get<std::string>());
  } else {
    for (int l = 0; l < arch.layer_count_; ++l) arch.layer_types_.push_back(derived_layer_type(arch.layer_suffixes(l)));
  }

  // The summary alloy-inspect prints.
  nlohmann::json& s = arch.summary_;
  s["family"] = arch.family();
  s["title"] = arch.definition_ ? arch.definition_->title : "unknown (inferred from tensor names)";
  s["inferred"] = arch.inferred();
  if (!arch.notice_.empty()) s["notice"] = arch.notice_;
  s["layer_prefix"] = arch.layer_prefix_;
  s["text_config"] = arch.text_config_;
  s["layers"] = arch.layer_count_;
  nlohmann::json types = nlohmann::json::object();
  for (const auto& t : arch.layer_types_) types[t] = types.value(t, 0) + 1;
  s["layer_types"] = types;
  int experts = 0, moe_layers = 0;
  std::set<std::string> fused, unknown;
  std::map<std::string, int> submodels;
  std::vector<int> moe(static_cast<size_t>(std::max(arch.layer_count_, 0)), 0);
  bool has_lm_head = false, tie_known = false;
  for (const auto& name : names) {
    const TensorPlace p = arch.classify(name);
    if (!p.submodel.empty()) {
      ++submodels[p.submodel];
      continue;
    }
    if (p.role == TensorRole::kLmHead) has_lm_head = true;
    if (p.expert >= 0) experts = std::max(experts, p.expert + 1);
    if (p.view != TensorView::kPlain && p.view != TensorView::kNormOffsetOne) {
      fused.insert(std::string(role_name(p.role)) + " (" + view_name(p.view) + ")");
    }
    if (p.layer >= 0 && p.layer < arch.layer_count_ &&
        (p.role == TensorRole::kRouter || p.role == TensorRole::kExpertGateUp || p.expert >= 0)) {
      moe[static_cast<size_t>(p.layer)] = 1;
    }
    if (arch.definition_ && !p.known) unknown.insert(name);
  }
  for (int m : moe) moe_layers += m;
  if (arch.definition_) {
    for (const auto& t : arch.definition_->post) tie_known |= t.role == TensorRole::kLmHead && !t.tied_to.empty();
  }
  for (const char* key : {"num_experts", "num_local_experts", "n_routed_experts"}) {
    if (const auto n = config_int(json_path(text, key)); n && *n > 0) experts = std::max(experts, *n);
  }
  s["experts"] = experts;
  s["moe_layers"] = moe_layers;
  s["fused"] = fused;
  s["tied_embeddings"] = (tie_known || arch.inferred()) && !has_lm_head;
  s["submodels"] = submodels;
  s["unknown_tensors"] = unknown.size();
  if (!unknown.empty()) s["first_unknown_tensor"] = *unknown.begin();
  return arch;
}

ModelArchitecture detect_architecture(const Model& model) {
  std::vector<std::string> names;
  names.reserve(model.tensors().size());
  for (const auto& t : model.tensors()) names.push_back(t.name());
  return detect_architecture(model.config(), names);
}

}  // namespace alloy
