// alloy-moe's recipe: mergekit-moe's YAML (mergekit/moe/config.py: MoEMergeConfig, Expert) with
// its checks (is_bad_config), every error naming the file, line and column.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/merge/moe.h"
#include "recipe_yaml.h"

namespace alloy {
namespace {

class MoeParser {
 public:
  explicit MoeParser(std::string label) : label_(std::move(label)) {}

  static RecipePosition at(const YAML::Node& node) {
    return {static_cast<int>(node.Mark().line) + 1, static_cast<int>(node.Mark().column) + 1};
  }
  [[noreturn]] void fail(const RecipePosition& pos, const std::string& message) const {
    std::string where = label_;
    if (pos.line > 0) where += ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column);
    throw Error(ErrorCode::kRecipe, where + ": " + message);
  }
  [[noreturn]] void fail(const YAML::Node& node, const std::string& message) const { fail(at(node), message); }

  // The keys of a mapping, each once and each one of `known`.
  std::vector<std::pair<std::string, YAML::Node>> fields(const YAML::Node& map, const std::vector<std::string>& known,
                                                         const std::string& what) const {
    if (!map.IsMap()) fail(map, what + " must be a mapping");
    std::vector<std::pair<std::string, YAML::Node>> out;
    std::set<std::string> seen;
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) fail(kv.first, "a key of " + what + " must be a plain word");
      const std::string key = kv.first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        fail(kv.first, "unknown key '" + key + "' in " + what + "; mergekit-moe knows: " + list);
      }
      if (!seen.insert(key).second) fail(kv.first, "'" + key + "' is given twice in " + what);
      out.emplace_back(key, kv.second);
    }
    return out;
  }

  std::string text(const YAML::Node& node, const std::string& what) const {
    if (!node.IsScalar()) fail(node, what + " must be a string");
    return node.Scalar();
  }
  // A model reference: a non-empty string.
  std::string model(const YAML::Node& node, const std::string& what) const {
    const std::string name = text(node, what);
    if (name.empty()) fail(node, what + " is empty");
    return name;
  }
  std::vector<std::string> prompts(const YAML::Node& node, const std::string& what) const {
    if (node.IsNull()) return {};
    if (!node.IsSequence()) fail(node, what + " must be a list of strings");
    std::vector<std::string> out;
    for (const auto& item : node) out.push_back(text(item, "each of " + what));
    return out;
  }
  double real(const YAML::Node& node, const std::string& what) const {
    double value = 0;
    if (!node.IsScalar() || !YAML::convert<double>::decode(node, value) || !std::isfinite(value)) {
      fail(node, what + " must be a finite number");
    }
    return value;
  }

  MoeExpert expert(const YAML::Node& node, const std::string& what) const {
    MoeExpert e;
    e.position = at(node);
    bool has_model = false;
    for (const auto& [key, value] :
         fields(node, {"source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale"}, what)) {
      if (key == "source_model") {
        e.source_model = model(value, what + ": source_model");
        has_model = true;
      } else if (key == "positive_prompts") {
        e.positive_prompts = prompts(value, what + ": positive_prompts");
      } else if (key == "negative_prompts") {
        e.negative_prompts = prompts(value, what + ": negative_prompts");
      } else if (key == "noise_scale") {
        if (!value.IsNull()) e.noise_scale = real(value, what + ": noise_scale");
      } else if (!value.IsNull()) {
        e.residual_scale = real(value, what + ": residual_scale");
      }
    }
    if (!has_model) fail(node, what + " has no source_model");
    return e;
  }

  std::vector<MoeExpert> experts(const YAML::Node& node, const std::string& what) const {
    if (node.IsNull()) return {};
    if (!node.IsSequence()) fail(node, what + " must be a list of entries with source_model");
    std::vector<MoeExpert> out;
    for (const auto& item : node) out.push_back(expert(item, what + " entry " + std::to_string(out.size())));
    return out;
  }

 private:
  std::string label_;
};

MoeGateMode gate_mode_from(const MoeParser& p, const YAML::Node& node) {
  const std::string name = p.text(node, "gate_mode");
  for (MoeGateMode mode : {MoeGateMode::kHidden, MoeGateMode::kHiddenAvg, MoeGateMode::kHiddenLast,
                           MoeGateMode::kCheapEmbed, MoeGateMode::kRandom, MoeGateMode::kUniformRandom}) {
    if (name == moe_gate_mode_name(mode)) return mode;
  }
  p.fail(node, "unknown gate_mode '" + name +
                   "'; one of hidden, hidden_avg, hidden_last, cheap_embed, random, uniform_random");
}

// mergekit's is_bad_config, with the entry each refusal is about.
void check_moe_recipe(const MoeParser& p, const MoeRecipe& r, const RecipePosition& experts_at,
                      const RecipePosition& k_at, bool allow_all_same) {
  if (r.experts.empty()) p.fail(experts_at, "experts is empty; a MoE needs at least one expert");
  if (r.experts_per_token < 1) p.fail(k_at, "experts_per_token must be >= 1");
  if (r.experts.size() < static_cast<size_t>(r.experts_per_token)) {
    p.fail(k_at, "experts_per_token is " + std::to_string(r.experts_per_token) + " but there are only " +
                     std::to_string(r.experts.size()) + " experts");
  }
  const bool random = r.gate_mode == MoeGateMode::kRandom || r.gate_mode == MoeGateMode::kUniformRandom;
  if (!random) {
    for (size_t i = 0; i < r.experts.size(); ++i) {
      if (r.experts[i].positive_prompts.empty()) {
        p.fail(r.experts[i].position, "expert " + std::to_string(i) + " has no positive_prompts, which gate_mode " +
                                          moe_gate_mode_name(r.gate_mode) + " needs");
      }
    }
    bool all_same_prompts = r.experts.size() > 1;
    for (const auto& e : r.experts) {
      all_same_prompts = all_same_prompts && e.positive_prompts == r.experts[0].positive_prompts &&
                         e.negative_prompts == r.experts[0].negative_prompts;
    }
    if (all_same_prompts) {
      p.fail(experts_at,
             "every expert has the same positive and negative prompts; the router could not tell them apart "
             "(give each expert prompts that show what should be routed to it)");
    }
  }
  if (!allow_all_same && r.experts.size() > 1) {
    const bool same = std::all_of(r.experts.begin(), r.experts.end(),
                                  [&](const MoeExpert& e) { return e.source_model == r.experts[0].source_model; });
    if (same) {
      p.fail(experts_at,
             "every expert is the same model: the MoE would compute the same as that model at a higher cost "
             "(for training afterwards, pass --i-understand-this-is-not-useful-without-training)");
    }
  }
  if (!r.shared_experts.empty()) {
    const bool any = std::any_of(r.shared_experts.begin(), r.shared_experts.end(),
                                 [](const MoeExpert& e) { return !e.positive_prompts.empty(); });
    for (const auto& e : r.shared_experts) {
      if (e.positive_prompts.empty() == any) {
        p.fail(e.position, "give prompts to every shared expert or to none, not a mix");
      }
    }
  }
}

}  // namespace

const char* moe_gate_mode_name(MoeGateMode mode) {
  switch (mode) {
    case MoeGateMode::kHidden: return "hidden";
    case MoeGateMode::kHiddenAvg: return "hidden_avg";
    case MoeGateMode::kHiddenLast: return "hidden_last";
    case MoeGateMode::kCheapEmbed: return "cheap_embed";
    case MoeGateMode::kRandom: return "random";
    case MoeGateMode::kUniformRandom: return "uniform_random";
  }
  return "?";
}

MoeRecipe parse_moe_recipe(const std::string& text, const std::string& label, bool allow_all_same) {
  const MoeParser p(label);
  const YAML::Node root = detail::load_guarded_yaml(text, label);
  MoeRecipe r;
  r.label = label;
  r.text = text;
  if (!root.IsMap()) p.fail({1, 1}, "a MoE recipe is a YAML mapping with base_model and experts");
  RecipePosition experts_at{1, 1}, k_at{1, 1};
  bool has_base = false, has_experts = false;
  try {
    for (const auto& [key, value] :
         p.fields(root,
                  {"base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture"},
                  "the MoE recipe")) {
      if (key == "base_model") {
        r.base_model = p.model(value, "base_model");
        r.base_position = MoeParser::at(value);
        has_base = true;
      } else if (key == "experts") {
        experts_at = MoeParser::at(value);
        r.experts = p.experts(value, "experts");
        has_experts = true;
      } else if (key == "shared_experts") {
        r.shared_experts = p.experts(value, "shared_experts");
      } else if (key == "gate_mode") {
        r.gate_mode = gate_mode_from(p, value);
      } else if (key == "dtype") {
        if (value.IsNull()) continue;
        const std::string name = p.text(value, "dtype");
        auto dtype = dtype_from_torch_name(name);
        if (!dtype) dtype = dtype_from_name(name);
        if (!dtype || !can_store_from_f32(*dtype) || dtype_bits(*dtype) < 16) {
          p.fail(value, "dtype '" + name + "' is not an output dtype; use float32, float16 or bfloat16");
        }
        r.dtype = dtype;
      } else if (key == "experts_per_token") {
        k_at = MoeParser::at(value);
        const double k = p.real(value, "experts_per_token");
        if (k != std::floor(k) || std::fabs(k) > 1e6) p.fail(value, "experts_per_token must be a whole number");
        r.experts_per_token = static_cast<int>(k);
      } else if (key == "architecture") {
        if (value.IsNull()) continue;
        r.architecture = p.text(value, "architecture");
        r.architecture_position = MoeParser::at(value);
      }
    }
  } catch (const YAML::Exception& e) {
    p.fail({static_cast<int>(e.mark.line) + 1, static_cast<int>(e.mark.column) + 1}, e.msg);
  }
  if (!has_base) p.fail({1, 1}, "the MoE recipe has no base_model");
  if (!has_experts) p.fail({1, 1}, "the MoE recipe has no experts");
  check_moe_recipe(p, r, experts_at, k_at, allow_all_same);
  return r;
}

MoeRecipe load_moe_recipe(const std::filesystem::path& path, bool allow_all_same) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kRecipe, path.string() + ": cannot open the MoE recipe");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_moe_recipe(text.str(), path.string(), allow_all_same);
}

}  // namespace alloy
