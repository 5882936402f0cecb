// Synthetic architectures: tensor lists, config.json, and the reverse mapping from names.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <limits>
#include <regex>

#include "alloy/core/error.h"
#include "alloy/synth/synth.h"
#include "layouts.h"

namespace alloy {
namespace {

using U = uint64_t;

void require(bool ok, const std::string& what) {
  if (!ok) throw Error(ErrorCode::kInvalidArgument, "synthetic architecture: " + what);
}

int config_int(const nlohmann::json& config, const char* key) {
  if (!config.contains(key) || !config[key].is_number_integer()) {
    throw Error(ErrorCode::kBadConfig, std::string("config.json: missing integer '") + key + "'");
  }
  const int64_t value = config[key].get<int64_t>();
  if (value < 0 || value > std::numeric_limits<int>::max()) {
    throw Error(ErrorCode::kBadConfig, std::string("config.json: '") + key + "' out of range");
  }
  return static_cast<int>(value);
}

int config_int_or(const nlohmann::json& config, const char* key, int fallback) {
  return config.contains(key) && !config[key].is_null() ? config_int(config, key) : fallback;
}

bool config_bool_or(const nlohmann::json& config, const char* key, bool fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  if (!config[key].is_boolean()) {
    throw Error(ErrorCode::kBadConfig, std::string("config.json: '") + key + "' is not a boolean");
  }
  return config[key].get<bool>();
}

// A decimal layer or expert index that fits an int.
bool parse_index(const std::string& digits, int* out) {
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *out);
  return ec == std::errc() && end == digits.data() + digits.size();
}

}  // namespace

const char* component_name(Component component) {
  switch (component) {
    case Component::kEmbedding: return "embeddings";
    case Component::kLmHead: return "lm_head";
    case Component::kNorm: return "norms";
    case Component::kAttentionQ: return "attention.q";
    case Component::kAttentionK: return "attention.k";
    case Component::kAttentionV: return "attention.v";
    case Component::kAttentionO: return "attention.o";
    case Component::kMlpGate: return "mlp.gate";
    case Component::kMlpUp: return "mlp.up";
    case Component::kMlpDown: return "mlp.down";
    case Component::kExpertGate: return "experts.gate";
    case Component::kExpertUp: return "experts.up";
    case Component::kExpertDown: return "experts.down";
    case Component::kRouter: return "router";
    case Component::kSharedExpertGate: return "shared_expert.gate";
    case Component::kSharedExpertUp: return "shared_expert.up";
    case Component::kSharedExpertDown: return "shared_expert.down";
    case Component::kSharedExpertRouter: return "shared_expert.router";
  }
  return "unknown";
}

namespace {
constexpr std::pair<ModelFamily, const char*> kFamilies[] = {
    {ModelFamily::kLlama, "llama"},         {ModelFamily::kMoe, "moe"},
    {ModelFamily::kMistral, "mistral"},     {ModelFamily::kGemma2, "gemma2"},
    {ModelFamily::kPhi3, "phi3"},           {ModelFamily::kMixtral, "mixtral"},
    {ModelFamily::kQwen3, "qwen3"},         {ModelFamily::kQwen3Moe, "qwen3_moe"},
    {ModelFamily::kQwen3Next, "qwen3_next"}, {ModelFamily::kQwen35Moe, "qwen3_5_moe"},
    {ModelFamily::kGptOss, "gpt_oss"},      {ModelFamily::kDeepseekV3, "deepseek_v3"},
};
}  // namespace

const char* family_name(ModelFamily family) {
  for (const auto& [f, name] : kFamilies) {
    if (f == family) return name;
  }
  return "llama";
}

std::optional<ModelFamily> family_from_name(std::string_view name) {
  for (const auto& [f, n] : kFamilies) {
    if (name == n) return f;
  }
  return std::nullopt;
}

std::vector<std::string> family_names() {
  std::vector<std::string> out;
  for (const auto& [f, name] : kFamilies) out.push_back(name);
  return out;
}

uint64_t SynthTensor::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

void Architecture::validate() const {
  const auto v = [](int x) { return " (got " + std::to_string(x) + ")"; };
  require(layers >= 1, "layers must be at least 1" + v(layers));
  require(hidden >= 1, "hidden must be at least 1" + v(hidden));
  require(heads >= 1 && hidden % heads == 0,
          "hidden (" + std::to_string(hidden) + ") must be a multiple of heads" + v(heads));
  require(kv_heads >= 1 && heads % kv_heads == 0,
          "heads (" + std::to_string(heads) + ") must be a multiple of kv-heads" + v(kv_heads));
  require(vocab >= 1, "vocab must be at least 1" + v(vocab));
  require(intermediate >= 1, "intermediate must be at least 1" + v(intermediate));
  if (detail::family_has_experts(family)) {
    require(experts >= 1, "experts must be at least 1" + v(experts));
    require(experts_per_token >= 1 && experts_per_token <= experts,
            "experts-per-token must be in [1, experts = " + std::to_string(experts) + "]" + v(experts_per_token));
    require(moe_intermediate >= 1, "moe-intermediate must be at least 1" + v(moe_intermediate));
  }
}

std::vector<SynthTensor> architecture_tensors(const Architecture& arch) {
  arch.validate();
  if (detail::has_real_layout(arch.family)) return detail::layout_tensors(arch);
  const U h = U(arch.hidden), kv = U(arch.kv_heads) * U(arch.head_dim()), v = U(arch.vocab);
  std::vector<SynthTensor> out;
  out.push_back({"model.embed_tokens.weight", {v, h}, Component::kEmbedding});
  for (int l = 0; l < arch.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {h}, Component::kNorm, l});
    out.push_back({p + "self_attn.q_proj.weight", {h, h}, Component::kAttentionQ, l});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}, Component::kAttentionK, l});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}, Component::kAttentionV, l});
    if (arch.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {h}, Component::kAttentionQ, l});
      out.push_back({p + "self_attn.k_proj.bias", {kv}, Component::kAttentionK, l});
      out.push_back({p + "self_attn.v_proj.bias", {kv}, Component::kAttentionV, l});
    }
    out.push_back({p + "self_attn.o_proj.weight", {h, h}, Component::kAttentionO, l});
    out.push_back({p + "post_attention_layernorm.weight", {h}, Component::kNorm, l});
    if (arch.family == ModelFamily::kLlama) {
      const U i = U(arch.intermediate);
      out.push_back({p + "mlp.gate_proj.weight", {i, h}, Component::kMlpGate, l});
      out.push_back({p + "mlp.up_proj.weight", {i, h}, Component::kMlpUp, l});
      out.push_back({p + "mlp.down_proj.weight", {h, i}, Component::kMlpDown, l});
    } else {
      const U m = U(arch.moe_intermediate);
      out.push_back({p + "mlp.gate.weight", {U(arch.experts), h}, Component::kRouter, l});
      for (int e = 0; e < arch.experts; ++e) {
        const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
        out.push_back({q + "gate_proj.weight", {m, h}, Component::kExpertGate, l, e});
        out.push_back({q + "up_proj.weight", {m, h}, Component::kExpertUp, l, e});
        out.push_back({q + "down_proj.weight", {h, m}, Component::kExpertDown, l, e});
      }
      if (arch.shared_expert) {
        const U s = U(arch.intermediate);
        out.push_back({p + "mlp.shared_expert.gate_proj.weight", {s, h}, Component::kSharedExpertGate, l});
        out.push_back({p + "mlp.shared_expert.up_proj.weight", {s, h}, Component::kSharedExpertUp, l});
        out.push_back({p + "mlp.shared_expert.down_proj.weight", {h, s}, Component::kSharedExpertDown, l});
        out.push_back({p + "mlp.shared_expert_gate.weight", {1, h}, Component::kSharedExpertRouter, l});
      }
    }
  }
  out.push_back({"model.norm.weight", {h}, Component::kNorm});
  if (!arch.tie_embeddings) out.push_back({"lm_head.weight", {v, h}, Component::kLmHead});
  return out;
}

uint64_t architecture_bytes(const Architecture& arch, DType dtype) {
  uint64_t elements = 0;
  for (const auto& t : architecture_tensors(arch)) elements += t.numel();
  return elements * dtype_bits(dtype) / 8;
}

nlohmann::json architecture_json(const Architecture& a) {
  nlohmann::json j = {{"family", family_name(a.family)}, {"layers", a.layers}, {"hidden", a.hidden},
                      {"intermediate", a.intermediate}, {"heads", a.heads}, {"kv_heads", a.kv_heads},
                      {"vocab", a.vocab}, {"tie_embeddings", a.tie_embeddings}, {"attention_bias", a.attention_bias}};
  // The routed-expert fields mean nothing for a dense model: recording them would make two equal
  // dense architectures look different.
  if (detail::family_has_experts(a.family)) {
    j["experts"] = a.experts;
    j["experts_per_token"] = a.experts_per_token;
    j["moe_intermediate"] = a.moe_intermediate;
    if (a.family == ModelFamily::kMoe) j["shared_expert"] = a.shared_expert;
  }
  return j;
}

bool classify_tensor(const std::string& name, SynthTensor* out) {
  static const std::regex kLayer(R"(model\.layers\.(\d+)\.(.+))");
  static const std::regex kExpert(R"(mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight)");
  out->name = name;
  out->layer = -1;
  out->expert = -1;
  if (name == "model.embed_tokens.weight") return out->component = Component::kEmbedding, true;
  if (name == "lm_head.weight") return out->component = Component::kLmHead, true;
  if (name == "model.norm.weight") return out->component = Component::kNorm, true;
  std::smatch m;
  if (!std::regex_match(name, m, kLayer)) return false;
  if (!parse_index(m[1].str(), &out->layer)) return false;
  const std::string rest = m[2];
  static const std::pair<const char*, Component> kSuffixes[] = {
      {"input_layernorm.weight", Component::kNorm},
      {"post_attention_layernorm.weight", Component::kNorm},
      {"self_attn.q_proj.weight", Component::kAttentionQ},
      {"self_attn.k_proj.weight", Component::kAttentionK},
      {"self_attn.v_proj.weight", Component::kAttentionV},
      {"self_attn.o_proj.weight", Component::kAttentionO},
      {"self_attn.q_proj.bias", Component::kAttentionQ},
      {"self_attn.k_proj.bias", Component::kAttentionK},
      {"self_attn.v_proj.bias", Component::kAttentionV},
      {"mlp.gate_proj.weight", Component::kMlpGate},
      {"mlp.up_proj.weight", Component::kMlpUp},
      {"mlp.down_proj.weight", Component::kMlpDown},
      {"mlp.gate.weight", Component::kRouter},
      {"mlp.shared_expert.gate_proj.weight", Component::kSharedExpertGate},
      {"mlp.shared_expert.up_proj.weight", Component::kSharedExpertUp},
      {"mlp.shared_expert.down_proj.weight", Component::kSharedExpertDown},
      {"mlp.shared_expert_gate.weight", Component::kSharedExpertRouter},
  };
  for (const auto& [suffix, component] : kSuffixes) {
    if (rest == suffix) return out->component = component, true;
  }
  if (std::regex_match(rest, m, kExpert)) {
    if (!parse_index(m[1].str(), &out->expert)) return false;
    const std::string kind = m[2];
    out->component = kind == "gate" ? Component::kExpertGate : kind == "up" ? Component::kExpertUp
                                                                            : Component::kExpertDown;
    return true;
  }
  return false;
}

nlohmann::json architecture_config(const Architecture& arch, DType dtype) {
  if (detail::has_real_layout(arch.family)) return detail::layout_config(arch, dtype);
  nlohmann::json c;
  const bool moe = arch.family == ModelFamily::kMoe;
  c["architectures"] = {moe ? "Qwen2MoeForCausalLM" : "LlamaForCausalLM"};
  c["model_type"] = moe ? "qwen2_moe" : "llama";
  c["hidden_size"] = arch.hidden;
  c["intermediate_size"] = arch.intermediate;
  c["num_hidden_layers"] = arch.layers;
  c["num_attention_heads"] = arch.heads;
  c["num_key_value_heads"] = arch.kv_heads;
  c["head_dim"] = arch.head_dim();
  c["vocab_size"] = arch.vocab;
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = 2048;
  c["rms_norm_eps"] = 1e-6;
  c["rope_theta"] = 10000.0;
  c["tie_word_embeddings"] = arch.tie_embeddings;
  // LlamaConfig's key; Qwen2MoeConfig has none (its checkpoints always carry q/k/v biases), so
  // for kMoe it records whether this synthetic model has them.
  c["attention_bias"] = arch.attention_bias;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["torch_dtype"] = dtype_torch_name(dtype);
  if (moe) {
    c["num_experts"] = arch.experts;
    c["num_experts_per_tok"] = arch.experts_per_token;
    c["moe_intermediate_size"] = arch.moe_intermediate;
    c["shared_expert_intermediate_size"] = arch.shared_expert ? arch.intermediate : 0;
    c["decoder_sparse_step"] = 1;
    c["norm_topk_prob"] = false;
  }
  return c;
}

Architecture architecture_from_config(const nlohmann::json& config) {
  if (!config.is_object()) throw Error(ErrorCode::kBadConfig, "config.json: not an object");
  Architecture arch;
  const auto model_type = config.find("model_type");
  const bool moe = config.contains("num_experts") ||
                   (model_type != config.end() && model_type->is_string() && *model_type == "qwen2_moe");
  arch.family = moe ? ModelFamily::kMoe : ModelFamily::kLlama;
  arch.layers = config_int(config, "num_hidden_layers");
  arch.hidden = config_int(config, "hidden_size");
  arch.intermediate = config_int(config, "intermediate_size");
  arch.heads = config_int(config, "num_attention_heads");
  arch.kv_heads = config_int_or(config, "num_key_value_heads", arch.heads);
  arch.vocab = config_int(config, "vocab_size");
  arch.tie_embeddings = config_bool_or(config, "tie_word_embeddings", false);
  arch.attention_bias = config_bool_or(config, "attention_bias", moe);  // real Qwen2-MoE: biases
  if (moe) {
    arch.experts = config_int(config, "num_experts");
    arch.experts_per_token = config_int(config, "num_experts_per_tok");
    arch.moe_intermediate = config_int(config, "moe_intermediate_size");
    const int shared = config_int_or(config, "shared_expert_intermediate_size", 0);
    arch.shared_expert = shared > 0;
    if (arch.shared_expert) arch.intermediate = shared;
  }
  arch.validate();
  return arch;
}

Architecture architecture_for_size(const Architecture& like, double gigabytes, DType dtype) {
  require(std::isfinite(gigabytes) && gigabytes > 0, "the size in GB must be positive");
  struct Rung {
    int hidden, head_dim;
  };
  static constexpr Rung kRungs[] = {{256, 64},   {512, 64},   {1024, 64},  {1536, 128}, {2048, 128},
                                    {3072, 128}, {4096, 128}, {5120, 128}, {8192, 128}};
  const double target = gigabytes * 1e9;
  Architecture arch = like;
  for (int r = static_cast<int>(std::size(kRungs)) - 1; r >= 0; --r) {
    const int h = kRungs[r].hidden;
    arch.hidden = h;
    arch.heads = h / kRungs[r].head_dim;
    arch.kv_heads = std::max(1, arch.heads / 4);
    arch.vocab = 32000;
    const auto round_up = [](int x, int to) { return (x + to - 1) / to * to; };
    if (arch.family == ModelFamily::kLlama) {
      arch.intermediate = round_up(h * 8 / 3, 256);
    } else {
      arch.moe_intermediate = round_up(h * 11 / 16, 128);
      arch.intermediate = 4 * arch.moe_intermediate;
    }
    arch.layers = 1;
    const double one = static_cast<double>(architecture_bytes(arch, dtype));
    arch.layers = 2;
    const double per_layer = static_cast<double>(architecture_bytes(arch, dtype)) - one;
    const double fixed = one - per_layer;
    const long layers = std::lround((target - fixed) / per_layer);
    if (layers >= std::max(2, h / 128) || r == 0) {
      arch.layers = static_cast<int>(std::clamp<long>(layers, 1, 100000));
      arch.validate();
      return arch;
    }
  }
  return arch;  // not reached: the smallest rung always returns
}

}  // namespace alloy
