// Synthetic architectures: tensor lists, config.json, and the reverse mapping from names.
#include <cmath>
#include <regex>

#include "alloy/error.h"
#include "alloy/synth.h"

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
  return config[key].get<int>();
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

void Architecture::validate() const {
  require(layers >= 1, "layers must be at least 1");
  require(hidden >= 1 && heads >= 1 && hidden % heads == 0, "hidden must be a positive multiple of heads");
  require(kv_heads >= 1 && heads % kv_heads == 0, "heads must be a multiple of kv-heads");
  require(vocab >= 1, "vocab must be at least 1");
  require(intermediate >= 1, "intermediate must be at least 1");
  if (family == ModelFamily::kMoe) {
    require(experts >= 1, "experts must be at least 1");
    require(experts_per_token >= 1 && experts_per_token <= experts, "experts-per-token must be in [1, experts]");
    require(moe_intermediate >= 1, "moe-intermediate must be at least 1");
  }
}

std::vector<SynthTensor> architecture_tensors(const Architecture& arch) {
  arch.validate();
  const U h = U(arch.hidden), kv = U(arch.kv_heads) * U(arch.head_dim()), v = U(arch.vocab);
  std::vector<SynthTensor> out;
  out.push_back({"model.embed_tokens.weight", {v, h}, Component::kEmbedding});
  for (int l = 0; l < arch.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {h}, Component::kNorm, l});
    out.push_back({p + "self_attn.q_proj.weight", {h, h}, Component::kAttentionQ, l});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}, Component::kAttentionK, l});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}, Component::kAttentionV, l});
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
  out->layer = std::stoi(m[1]);
  const std::string rest = m[2];
  static const std::pair<const char*, Component> kSuffixes[] = {
      {"input_layernorm.weight", Component::kNorm},
      {"post_attention_layernorm.weight", Component::kNorm},
      {"self_attn.q_proj.weight", Component::kAttentionQ},
      {"self_attn.k_proj.weight", Component::kAttentionK},
      {"self_attn.v_proj.weight", Component::kAttentionV},
      {"self_attn.o_proj.weight", Component::kAttentionO},
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
    out->expert = std::stoi(m[1]);
    const std::string kind = m[2];
    out->component = kind == "gate" ? Component::kExpertGate : kind == "up" ? Component::kExpertUp
                                                                            : Component::kExpertDown;
    return true;
  }
  return false;
}

nlohmann::json architecture_config(const Architecture& arch, DType dtype) {
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
  Architecture arch;
  const bool moe = config.contains("num_experts") || config.value("model_type", "") == "qwen2_moe";
  arch.family = moe ? ModelFamily::kMoe : ModelFamily::kLlama;
  arch.layers = config_int(config, "num_hidden_layers");
  arch.hidden = config_int(config, "hidden_size");
  arch.intermediate = config_int(config, "intermediate_size");
  arch.heads = config_int(config, "num_attention_heads");
  arch.kv_heads = config.contains("num_key_value_heads") ? config_int(config, "num_key_value_heads") : arch.heads;
  arch.vocab = config_int(config, "vocab_size");
  arch.tie_embeddings = config.value("tie_word_embeddings", false);
  if (moe) {
    arch.experts = config_int(config, "num_experts");
    arch.experts_per_token = config_int(config, "num_experts_per_tok");
    arch.moe_intermediate = config_int(config, "moe_intermediate_size");
    const int shared = config.value("shared_expert_intermediate_size", 0);
    arch.shared_expert = shared > 0;
    if (arch.shared_expert) arch.intermediate = shared;
  }
  arch.validate();
  return arch;
}

Architecture architecture_for_size(ModelFamily family, double gigabytes, DType dtype) {
  Architecture arch;
  arch.family = family;
  arch.hidden = 1024;
  arch.heads = 16;
  arch.kv_heads = 4;
  arch.vocab = 32000;
  arch.intermediate = family == ModelFamily::kLlama ? 2816 : 1024;
  arch.experts = 16;
  arch.experts_per_token = 4;
  arch.moe_intermediate = 512;
  arch.layers = 1;
  const double bytes_per = dtype_bits(dtype) / 8.0;
  auto size_of = [&](const Architecture& a) {
    double total = 0;
    for (const auto& t : architecture_tensors(a)) {
      double n = 1;
      for (U d : t.shape) n *= double(d);
      total += n;
    }
    return total * bytes_per;
  };
  const double fixed = size_of(arch);
  Architecture two = arch;
  two.layers = 2;
  const double per_layer = size_of(two) - fixed;
  arch.layers = std::max(1, static_cast<int>(std::lround((gigabytes * 1e9 - fixed) / per_layer)) + 1);
  return arch;
}

}  // namespace alloy
