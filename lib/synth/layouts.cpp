// The real Hugging Face layouts of synth's named families: exact tensor names, shapes and config
// fields of Mistral, Gemma 2, Phi-3, Mixtral, Qwen3, Qwen3-MoE, Qwen3-Next, Qwen3.5-MoE (with its
// vision tower), GPT-OSS and DeepSeek-V3, at the sizes of an Architecture. The two original
// families (llama, moe) stay in architecture.cpp, unchanged.
#include "layouts.h"

#include <algorithm>

#include "alloy/core/architecture.h"

namespace alloy::detail {
namespace {

using U = uint64_t;

// Small fixed sizes of the parts an Architecture does not describe.
constexpr int kFullAttentionInterval = 4;   // Qwen3-Next / Qwen3.5: every 4th layer is full attention
constexpr int kLinearKeyHeads = 2, kLinearValueHeads = 4, kConvKernel = 4;
constexpr int kVisionDepth = 2, kVisionHidden = 32, kVisionIntermediate = 64, kVisionPositions = 16;
constexpr int kDenseLayers = 1;             // DeepSeek-V3: first_k_dense_replace

struct Builder {
  std::vector<SynthTensor> out;
  void add(const std::string& name, std::vector<U> shape, Component c, int layer = -1, int expert = -1) {
    out.push_back({name, std::move(shape), c, layer, expert});
  }
};

bool full_attention_layer(int layer) { return layer % kFullAttentionInterval == kFullAttentionInterval - 1; }

void attention(Builder& b, const std::string& p, const Architecture& a, int l, bool bias, bool qk_norm,
               bool gated_q = false, bool o_bias = false) {
  const U h = U(a.hidden), d = U(a.head_dim()), q = U(a.heads) * d, kv = U(a.kv_heads) * d;
  b.add(p + "self_attn.q_proj.weight", {gated_q ? 2 * q : q, h}, Component::kAttentionQ, l);
  if (bias) b.add(p + "self_attn.q_proj.bias", {q}, Component::kAttentionQ, l);
  b.add(p + "self_attn.k_proj.weight", {kv, h}, Component::kAttentionK, l);
  if (bias) b.add(p + "self_attn.k_proj.bias", {kv}, Component::kAttentionK, l);
  b.add(p + "self_attn.v_proj.weight", {kv, h}, Component::kAttentionV, l);
  if (bias) b.add(p + "self_attn.v_proj.bias", {kv}, Component::kAttentionV, l);
  b.add(p + "self_attn.o_proj.weight", {h, q}, Component::kAttentionO, l);
  if (o_bias) b.add(p + "self_attn.o_proj.bias", {h}, Component::kAttentionO, l);
  if (qk_norm) {
    b.add(p + "self_attn.q_norm.weight", {d}, Component::kNorm, l);
    b.add(p + "self_attn.k_norm.weight", {d}, Component::kNorm, l);
  }
}

void dense_mlp(Builder& b, const std::string& p, U h, U i, int l) {
  b.add(p + "gate_proj.weight", {i, h}, Component::kMlpGate, l);
  b.add(p + "up_proj.weight", {i, h}, Component::kMlpUp, l);
  b.add(p + "down_proj.weight", {h, i}, Component::kMlpDown, l);
}

void routed_experts(Builder& b, const std::string& p, const Architecture& a, int l) {
  const U h = U(a.hidden), m = U(a.moe_intermediate);
  for (int e = 0; e < a.experts; ++e) {
    const std::string q = p + std::to_string(e) + ".";
    b.add(q + "gate_proj.weight", {m, h}, Component::kExpertGate, l, e);
    b.add(q + "up_proj.weight", {m, h}, Component::kExpertUp, l, e);
    b.add(q + "down_proj.weight", {h, m}, Component::kExpertDown, l, e);
  }
}

// Qwen3-Next's / Qwen3.5's MoE block: router, routed experts (per expert or fused), shared expert.
void qwen_moe_block(Builder& b, const std::string& p, const Architecture& a, int l, bool fused) {
  const U h = U(a.hidden), m = U(a.moe_intermediate), E = U(a.experts), s = U(a.intermediate);
  b.add(p + "mlp.gate.weight", {E, h}, Component::kRouter, l);
  if (fused) {
    b.add(p + "mlp.experts.gate_up_proj", {E, 2 * m, h}, Component::kExpertUp, l);
    b.add(p + "mlp.experts.down_proj", {E, h, m}, Component::kExpertDown, l);
  } else {
    routed_experts(b, p + "mlp.experts.", a, l);
  }
  b.add(p + "mlp.shared_expert.gate_proj.weight", {s, h}, Component::kSharedExpertGate, l);
  b.add(p + "mlp.shared_expert.up_proj.weight", {s, h}, Component::kSharedExpertUp, l);
  b.add(p + "mlp.shared_expert.down_proj.weight", {h, s}, Component::kSharedExpertDown, l);
  b.add(p + "mlp.shared_expert_gate.weight", {1, h}, Component::kSharedExpertRouter, l);
}

// Gated DeltaNet linear attention: Qwen3-Next fuses qkvz and ba, Qwen3.5 splits them.
void linear_attention(Builder& b, const std::string& p, const Architecture& a, int l, bool split) {
  const U h = U(a.hidden), d = U(a.head_dim()), nk = kLinearKeyHeads, nv = kLinearValueHeads;
  const U key_dim = nk * d, value_dim = nv * d, conv_dim = 2 * key_dim + value_dim;
  const std::string q = p + "linear_attn.";
  if (split) {
    b.add(q + "in_proj_qkv.weight", {conv_dim, h}, Component::kAttentionQ, l);
    b.add(q + "in_proj_z.weight", {value_dim, h}, Component::kAttentionQ, l);
    b.add(q + "in_proj_b.weight", {nv, h}, Component::kAttentionQ, l);
    b.add(q + "in_proj_a.weight", {nv, h}, Component::kAttentionQ, l);
  } else {
    b.add(q + "in_proj_qkvz.weight", {2 * key_dim + 2 * value_dim, h}, Component::kAttentionQ, l);
    b.add(q + "in_proj_ba.weight", {2 * nv, h}, Component::kAttentionQ, l);
  }
  b.add(q + "conv1d.weight", {conv_dim, 1, U(kConvKernel)}, Component::kAttentionQ, l);
  b.add(q + "dt_bias", {nv}, Component::kAttentionQ, l);
  b.add(q + "A_log", {nv}, Component::kAttentionQ, l);
  b.add(q + "norm.weight", {d}, Component::kNorm, l);
  b.add(q + "out_proj.weight", {h, value_dim}, Component::kAttentionO, l);
}

// A hybrid decoder layer of Qwen3-Next / Qwen3.5 (also the MTP layer, which is full attention).
void hybrid_layer(Builder& b, const std::string& p, const Architecture& a, int l, bool full, bool qwen35) {
  const U h = U(a.hidden);
  b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
  if (full) {
    attention(b, p, a, l, false, true, true);
  } else {
    linear_attention(b, p, a, l, qwen35);
  }
  b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
  qwen_moe_block(b, p, a, l, qwen35);
}

void mtp_head(Builder& b, const std::string& p, const Architecture& a, bool qwen35) {
  const U h = U(a.hidden);
  b.add(p + "fc.weight", {h, 2 * h}, Component::kMlpUp);
  hybrid_layer(b, p + "layers.0.", a, -1, true, qwen35);
  b.add(p + "norm.weight", {h}, Component::kNorm);
  b.add(p + "pre_fc_norm_embedding.weight", {h}, Component::kNorm);
  b.add(p + "pre_fc_norm_hidden.weight", {h}, Component::kNorm);
}

void vision_tower(Builder& b, const Architecture& a) {
  const U v = kVisionHidden, vi = kVisionIntermediate, merged = 4 * v;
  const std::string p = "model.visual.";
  b.add(p + "patch_embed.proj.weight", {v, 3, 2, 4, 4}, Component::kAttentionQ);
  b.add(p + "patch_embed.proj.bias", {v}, Component::kAttentionQ);
  b.add(p + "pos_embed.weight", {U(kVisionPositions), v}, Component::kEmbedding);
  for (int k = 0; k < kVisionDepth; ++k) {
    const std::string q = p + "blocks." + std::to_string(k) + ".";
    b.add(q + "norm1.weight", {v}, Component::kNorm);
    b.add(q + "norm1.bias", {v}, Component::kAttentionQ);
    b.add(q + "attn.qkv.weight", {3 * v, v}, Component::kAttentionQ);
    b.add(q + "attn.qkv.bias", {3 * v}, Component::kAttentionQ);
    b.add(q + "attn.proj.weight", {v, v}, Component::kAttentionO);
    b.add(q + "attn.proj.bias", {v}, Component::kAttentionO);
    b.add(q + "norm2.weight", {v}, Component::kNorm);
    b.add(q + "norm2.bias", {v}, Component::kAttentionQ);
    b.add(q + "mlp.linear_fc1.weight", {vi, v}, Component::kMlpUp);
    b.add(q + "mlp.linear_fc1.bias", {vi}, Component::kMlpUp);
    b.add(q + "mlp.linear_fc2.weight", {v, vi}, Component::kMlpDown);
    b.add(q + "mlp.linear_fc2.bias", {v}, Component::kMlpDown);
  }
  b.add(p + "merger.norm.weight", {v}, Component::kNorm);
  b.add(p + "merger.norm.bias", {v}, Component::kAttentionQ);
  b.add(p + "merger.linear_fc1.weight", {merged, merged}, Component::kMlpUp);
  b.add(p + "merger.linear_fc1.bias", {merged}, Component::kMlpUp);
  b.add(p + "merger.linear_fc2.weight", {U(a.hidden), merged}, Component::kMlpDown);
  b.add(p + "merger.linear_fc2.bias", {U(a.hidden)}, Component::kMlpDown);
}

nlohmann::json hybrid_layer_types(int layers) {
  nlohmann::json types = nlohmann::json::array();
  for (int l = 0; l < layers; ++l) types.push_back(full_attention_layer(l) ? "full_attention" : "linear_attention");
  return types;
}

// The fields every family's config shares.
nlohmann::json common_config(const Architecture& a, DType dtype, const char* architecture, const char* model_type) {
  nlohmann::json c;
  c["architectures"] = {architecture};
  c["model_type"] = model_type;
  c["hidden_size"] = a.hidden;
  c["intermediate_size"] = a.intermediate;
  c["num_hidden_layers"] = a.layers;
  c["num_attention_heads"] = a.heads;
  c["num_key_value_heads"] = a.kv_heads;
  c["head_dim"] = a.head_dim();
  c["vocab_size"] = a.vocab;
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = 2048;
  c["rms_norm_eps"] = 1e-6;
  c["rope_theta"] = 10000.0;
  c["tie_word_embeddings"] = a.tie_embeddings;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["torch_dtype"] = dtype_torch_name(dtype);
  return c;
}

void qwen_moe_fields(nlohmann::json& c, const Architecture& a) {
  c["num_experts"] = a.experts;
  c["num_experts_per_tok"] = a.experts_per_token;
  c["moe_intermediate_size"] = a.moe_intermediate;
  c["shared_expert_intermediate_size"] = a.intermediate;
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = nlohmann::json::array();
  c["norm_topk_prob"] = true;
}

void linear_fields(nlohmann::json& c, const Architecture& a) {
  c["layer_types"] = hybrid_layer_types(a.layers);
  c["full_attention_interval"] = kFullAttentionInterval;
  c["linear_num_key_heads"] = kLinearKeyHeads;
  c["linear_num_value_heads"] = kLinearValueHeads;
  c["linear_key_head_dim"] = a.head_dim();
  c["linear_value_head_dim"] = a.head_dim();
  c["linear_conv_kernel_dim"] = kConvKernel;
  c["partial_rotary_factor"] = 0.25;
}

// Gemma 2, Qwen3-Next and Qwen3.5 apply their norms as (1 + w), and their checkpoints store w
// around 0, not 1: the tensors whose view in the family's architecture definition is
// norm_offset_one are marked so that the base stores them zero-centred, as the real ones are.
// The definition gives the MTP head (a sub-model, merged tensor by tensor) no views, but its norms
// are the same zero-centred RMSNorm (vLLM's qwen3_next_mtp); the gated norm inside linear
// attention and the vision tower's LayerNorms store plain gains around 1.
void mark_offset_one_norms(const Architecture& a, std::vector<SynthTensor>& tensors) {
  std::vector<std::string> names;
  for (const auto& t : tensors) names.push_back(t.name);
  const ModelArchitecture arch = detect_architecture(layout_config(a, DType::BF16), names);
  std::vector<TensorPlace> places;
  bool any = false;
  for (const auto& t : tensors) {
    places.push_back(arch.classify(t.name));
    any |= places.back().view == TensorView::kNormOffsetOne;
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    SynthTensor& t = tensors[i];
    const bool mtp_norm = places[i].submodel == "mtp" && t.component == Component::kNorm &&
                          t.name.find("linear_attn.") == std::string::npos;
    t.offset_one = places[i].view == TensorView::kNormOffsetOne || (any && mtp_norm);
  }
}

}  // namespace

bool has_real_layout(ModelFamily family) {
  return family != ModelFamily::kLlama && family != ModelFamily::kMoe;
}

bool family_has_experts(ModelFamily family) {
  switch (family) {
    case ModelFamily::kMoe:
    case ModelFamily::kMixtral:
    case ModelFamily::kQwen3Moe:
    case ModelFamily::kQwen3Next:
    case ModelFamily::kQwen35Moe:
    case ModelFamily::kGptOss:
    case ModelFamily::kDeepseekV3: return true;
    default: return false;
  }
}

std::vector<SynthTensor> layout_tensors(const Architecture& a) {
  const U h = U(a.hidden), i = U(a.intermediate), v = U(a.vocab), d = U(a.head_dim()), E = U(a.experts),
          m = U(a.moe_intermediate);
  Builder b;
  const bool qwen35 = a.family == ModelFamily::kQwen35Moe;
  const std::string model = qwen35 ? "model.language_model." : "model.";
  b.add(model + "embed_tokens.weight", {v, h}, Component::kEmbedding);
  for (int l = 0; l < a.layers; ++l) {
    const std::string p = model + "layers." + std::to_string(l) + ".";
    switch (a.family) {
      case ModelFamily::kMistral:
      case ModelFamily::kQwen3:
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        attention(b, p, a, l, a.attention_bias, a.family == ModelFamily::kQwen3);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        dense_mlp(b, p + "mlp.", h, i, l);
        break;
      case ModelFamily::kGemma2:
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        attention(b, p, a, l, false, false);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "pre_feedforward_layernorm.weight", {h}, Component::kNorm, l);
        dense_mlp(b, p + "mlp.", h, i, l);
        b.add(p + "post_feedforward_layernorm.weight", {h}, Component::kNorm, l);
        break;
      case ModelFamily::kPhi3: {
        const U qkv = (U(a.heads) + 2 * U(a.kv_heads)) * d;
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "self_attn.qkv_proj.weight", {qkv, h}, Component::kAttentionQ, l);
        b.add(p + "self_attn.o_proj.weight", {h, U(a.heads) * d}, Component::kAttentionO, l);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "mlp.gate_up_proj.weight", {2 * i, h}, Component::kMlpUp, l);
        b.add(p + "mlp.down_proj.weight", {h, i}, Component::kMlpDown, l);
        break;
      }
      case ModelFamily::kMixtral:
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        attention(b, p, a, l, false, false);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "block_sparse_moe.gate.weight", {E, h}, Component::kRouter, l);
        for (int e = 0; e < a.experts; ++e) {
          const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
          b.add(q + "w1.weight", {m, h}, Component::kExpertGate, l, e);
          b.add(q + "w2.weight", {h, m}, Component::kExpertDown, l, e);
          b.add(q + "w3.weight", {m, h}, Component::kExpertUp, l, e);
        }
        break;
      case ModelFamily::kQwen3Moe:
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        attention(b, p, a, l, false, true);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "mlp.gate.weight", {E, h}, Component::kRouter, l);
        routed_experts(b, p + "mlp.experts.", a, l);
        break;
      case ModelFamily::kQwen3Next:
      case ModelFamily::kQwen35Moe:
        hybrid_layer(b, p, a, l, full_attention_layer(l), qwen35);
        break;
      case ModelFamily::kGptOss:
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        attention(b, p, a, l, true, false, false, true);
        b.add(p + "self_attn.sinks", {U(a.heads)}, Component::kAttentionO, l);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "mlp.router.weight", {E, h}, Component::kRouter, l);
        b.add(p + "mlp.router.bias", {E}, Component::kRouter, l);
        b.add(p + "mlp.experts.gate_up_proj", {E, h, 2 * m}, Component::kExpertUp, l);
        b.add(p + "mlp.experts.gate_up_proj_bias", {E, 2 * m}, Component::kExpertUp, l);
        b.add(p + "mlp.experts.down_proj", {E, m, h}, Component::kExpertDown, l);
        b.add(p + "mlp.experts.down_proj_bias", {E, h}, Component::kExpertDown, l);
        break;
      case ModelFamily::kDeepseekV3: {
        const U heads = U(a.heads), nope = d, rope = std::max<U>(d / 2, 1), vd = d;
        const U q_rank = std::max<U>(h / 2, 1), kv_rank = std::max<U>(h / 4, 1);
        b.add(p + "input_layernorm.weight", {h}, Component::kNorm, l);
        b.add(p + "self_attn.q_a_proj.weight", {q_rank, h}, Component::kAttentionQ, l);
        b.add(p + "self_attn.q_a_layernorm.weight", {q_rank}, Component::kNorm, l);
        b.add(p + "self_attn.q_b_proj.weight", {heads * (nope + rope), q_rank}, Component::kAttentionQ, l);
        b.add(p + "self_attn.kv_a_proj_with_mqa.weight", {kv_rank + rope, h}, Component::kAttentionK, l);
        b.add(p + "self_attn.kv_a_layernorm.weight", {kv_rank}, Component::kNorm, l);
        b.add(p + "self_attn.kv_b_proj.weight", {heads * (nope + vd), kv_rank}, Component::kAttentionV, l);
        b.add(p + "self_attn.o_proj.weight", {h, heads * vd}, Component::kAttentionO, l);
        b.add(p + "post_attention_layernorm.weight", {h}, Component::kNorm, l);
        if (l < kDenseLayers) {
          dense_mlp(b, p + "mlp.", h, i, l);
        } else {
          b.add(p + "mlp.gate.weight", {E, h}, Component::kRouter, l);
          b.add(p + "mlp.gate.e_score_correction_bias", {E}, Component::kRouter, l);
          routed_experts(b, p + "mlp.experts.", a, l);
          dense_mlp(b, p + "mlp.shared_experts.", h, m, l);
        }
        break;
      }
      default: break;
    }
  }
  b.add(model + "norm.weight", {h}, Component::kNorm);
  if (a.family == ModelFamily::kQwen3Next) mtp_head(b, "mtp.", a, false);
  if (qwen35) {
    vision_tower(b, a);
    mtp_head(b, "mtp.", a, true);
  }
  if (!a.tie_embeddings && a.family != ModelFamily::kGemma2) b.add("lm_head.weight", {v, h}, Component::kLmHead);
  mark_offset_one_norms(a, b.out);
  return b.out;
}

nlohmann::json layout_config(const Architecture& a, DType dtype) {
  switch (a.family) {
    case ModelFamily::kMistral: {
      nlohmann::json c = common_config(a, dtype, "MistralForCausalLM", "mistral");
      c["sliding_window"] = nullptr;
      return c;
    }
    case ModelFamily::kQwen3: {
      nlohmann::json c = common_config(a, dtype, "Qwen3ForCausalLM", "qwen3");
      c["attention_bias"] = a.attention_bias;
      return c;
    }
    case ModelFamily::kGemma2: {
      nlohmann::json c = common_config(a, dtype, "Gemma2ForCausalLM", "gemma2");
      c["hidden_act"] = "gelu_pytorch_tanh";
      c["hidden_activation"] = "gelu_pytorch_tanh";
      c["query_pre_attn_scalar"] = a.head_dim();
      c["sliding_window"] = 4096;
      c["final_logit_softcapping"] = 30.0;
      c["attn_logit_softcapping"] = 50.0;
      c["tie_word_embeddings"] = true;  // Gemma always ties its embeddings
      return c;
    }
    case ModelFamily::kPhi3: {
      nlohmann::json c = common_config(a, dtype, "Phi3ForCausalLM", "phi3");
      c.erase("head_dim");
      return c;
    }
    case ModelFamily::kMixtral: {
      nlohmann::json c = common_config(a, dtype, "MixtralForCausalLM", "mixtral");
      c["intermediate_size"] = a.moe_intermediate;
      c["num_local_experts"] = a.experts;
      c["num_experts_per_tok"] = a.experts_per_token;
      c["router_aux_loss_coef"] = 0.02;
      return c;
    }
    case ModelFamily::kQwen3Moe: {
      nlohmann::json c = common_config(a, dtype, "Qwen3MoeForCausalLM", "qwen3_moe");
      qwen_moe_fields(c, a);
      c.erase("shared_expert_intermediate_size");
      return c;
    }
    case ModelFamily::kQwen3Next: {
      nlohmann::json c = common_config(a, dtype, "Qwen3NextForCausalLM", "qwen3_next");
      qwen_moe_fields(c, a);
      linear_fields(c, a);
      return c;
    }
    case ModelFamily::kQwen35Moe: {
      nlohmann::json text = common_config(a, dtype, "Qwen3_5MoeForCausalLM", "qwen3_5_moe_text");
      text.erase("architectures");
      text.erase("tie_word_embeddings");
      qwen_moe_fields(text, a);
      linear_fields(text, a);
      nlohmann::json c;
      c["architectures"] = {"Qwen3_5MoeForConditionalGeneration"};
      c["model_type"] = "qwen3_5_moe";
      c["text_config"] = text;
      c["vision_config"] = {{"depth", kVisionDepth}, {"hidden_size", kVisionHidden},
                            {"intermediate_size", kVisionIntermediate}, {"out_hidden_size", a.hidden},
                            {"num_position_embeddings", kVisionPositions}, {"spatial_merge_size", 2},
                            {"temporal_patch_size", 2}, {"patch_size", 4}, {"model_type", "qwen3_5_moe"}};
      c["tie_word_embeddings"] = a.tie_embeddings;
      c["torch_dtype"] = dtype_torch_name(dtype);
      c["image_token_id"] = 3;
      return c;
    }
    case ModelFamily::kGptOss: {
      nlohmann::json c = common_config(a, dtype, "GptOssForCausalLM", "gpt_oss");
      c["intermediate_size"] = a.moe_intermediate;
      c["num_local_experts"] = a.experts;
      c["experts_per_token"] = a.experts_per_token;
      c["num_experts_per_tok"] = a.experts_per_token;
      c["sliding_window"] = 128;
      nlohmann::json types = nlohmann::json::array();
      for (int l = 0; l < a.layers; ++l) types.push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
      c["layer_types"] = types;
      c["attention_bias"] = true;
      return c;
    }
    case ModelFamily::kDeepseekV3: {
      nlohmann::json c = common_config(a, dtype, "DeepseekV3ForCausalLM", "deepseek_v3");
      const int d = a.head_dim();
      c["n_routed_experts"] = a.experts;
      c["n_shared_experts"] = 1;
      c["num_experts_per_tok"] = a.experts_per_token;
      c["moe_intermediate_size"] = a.moe_intermediate;
      c["first_k_dense_replace"] = kDenseLayers;
      c["q_lora_rank"] = std::max(a.hidden / 2, 1);
      c["kv_lora_rank"] = std::max(a.hidden / 4, 1);
      c["qk_nope_head_dim"] = d;
      c["qk_rope_head_dim"] = std::max(d / 2, 1);
      c["v_head_dim"] = d;
      c["n_group"] = 1;
      c["topk_group"] = 1;
      c["moe_layer_freq"] = 1;
      c.erase("head_dim");
      return c;
    }
    default: return nlohmann::json::object();
  }
}

}  // namespace alloy::detail
