// fold-norms, rotate-residual and rescale-neurons on real checkpoint layouts: the logits of a whole model, computed
// from its stored tensors by a float64 reference written per family from the Hugging Face modeling
// code, are unchanged by the transform. Phi-3 (fused qkv_proj and gate_up_proj), Mixtral
// (block_sparse_moe, w1/w3/w2 experts, renormalised top-k), Qwen3.5-MoE (the language model
// under model.language_model., hybrid Gated DeltaNet / gated full-attention layers, stacked
// gate_up_proj experts, and RMSNorms applied as (1 + w), which must be folded as 1 + w), Qwen3-Next
// (the same hybrid with its fused in_proj_qkvz / in_proj_ba grouped per key head, and one module
// per expert), DeepSeek-V3 (multi-head latent attention with its own latent norms, a dense first
// layer, sigmoid routing with a score-correction bias, shared experts) and GPT-OSS
// (biases on every projection, attention sinks, stacked [E, hidden, 2I] experts with interleaved
// gate / up columns, top-k then softmax routing).
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/model.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"
#include "reference_forward.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::ModelFamily;
using alloy::PerturbKind;
using nlohmann::json;
using namespace alloy::test::ref;

// The text model's config (Qwen3.5 nests it under text_config).
json text_config(const alloy::Model& m) {
  const json& c = m.config();
  return c.contains("text_config") ? c["text_config"] : c;
}

// What a family's forward pass needs beyond the tensors.
struct Shape {
  std::string prefix;  // "model." or "model.language_model."
  int layers, heads, kv_heads, head_dim, rotary, experts_per_token;
  bool offset_norms;   // RMSNorm gains applied as (1 + w) (Qwen3-Next, Qwen3.5)
  std::vector<std::string> layer_types;
  json config;         // the text config, for the family-specific fields (DeepSeek's MLA and routing)
};

Shape shape_of(const alloy::Model& m, ModelFamily family) {
  const json c = text_config(m);
  Shape s;
  s.prefix = family == ModelFamily::kQwen35Moe ? "model.language_model." : "model.";
  s.layers = c["num_hidden_layers"];
  s.heads = c["num_attention_heads"];
  s.kv_heads = c["num_key_value_heads"];
  s.head_dim = c.value("head_dim", int(c["hidden_size"]) / s.heads);
  s.rotary = int(s.head_dim * c.value("partial_rotary_factor", 1.0));
  s.experts_per_token = c.value("num_experts_per_tok", 0);
  s.offset_norms = family == ModelFamily::kQwen35Moe || family == ModelFamily::kQwen3Next;
  s.layer_types = c.value("layer_types", std::vector<std::string>(size_t(s.layers), "full_attention"));
  s.config = c;
  return s;
}

class Forward {
 public:
  Forward(Weights w, ModelFamily family, Shape shape) : w_(std::move(w)), family_(family), s_(std::move(shape)) {}

  Mat logits(const std::vector<int>& ids) const {
    const Mat embed = w_(s_.prefix + "embed_tokens.weight");
    Mat x(Eigen::Index(ids.size()), embed.cols());
    for (size_t t = 0; t < ids.size(); ++t) x.row(Eigen::Index(t)) = embed.row(ids[t]);
    for (int layer = 0; layer < s_.layers; ++layer) {
      const std::string p = s_.prefix + "layers." + std::to_string(layer) + ".";
      x += mixer(p, norm(x, p + "input_layernorm.weight"), layer);
      x += mlp(p, norm(x, p + "post_attention_layernorm.weight"), layer);
    }
    return linear(norm(x, s_.prefix + "norm.weight"), w_("lm_head.weight"));
  }

 private:
  Mat norm(const Mat& x, const std::string& name) const {
    Mat g = w_(name);
    if (s_.offset_norms) g.array() += 1;
    return rms_norm(x, g);
  }
  // A per-head norm (Qwen3.5's q_norm / k_norm) over each head_dim block.
  Mat head_norm(const Mat& x, int heads, const std::string& name) const {
    Mat out(x.rows(), x.cols());
    for (int h = 0; h < heads; ++h) {
      out.middleCols(h * s_.head_dim, s_.head_dim) = norm(x.middleCols(h * s_.head_dim, s_.head_dim), name);
    }
    return out;
  }

  Mat mixer(const std::string& p, const Mat& h, int layer) const {
    if (s_.layer_types[size_t(layer)] == "linear_attention") return gated_delta_net(p + "linear_attn.", h);
    if (family_ == ModelFamily::kDeepseekV3) return latent_attention(p + "self_attn.", h);
    const int d = s_.head_dim, q_width = s_.heads * d, kv_width = s_.kv_heads * d;
    const std::string a = p + "self_attn.";
    Mat q, k, v, gate;
    if (family_ == ModelFamily::kPhi3) {  // qkv_proj rows: q, then k, then v
      const Mat qkv = linear(h, w_(a + "qkv_proj.weight"));
      q = qkv.leftCols(q_width), k = qkv.middleCols(q_width, kv_width), v = qkv.rightCols(kv_width);
    } else {
      q = linear(h, w_(a + "q_proj.weight")), k = linear(h, w_(a + "k_proj.weight")), v = linear(h, w_(a + "v_proj.weight"));
    }
    if (family_ == ModelFamily::kGptOss) {
      q.rowwise() += w_(a + "q_proj.bias").row(0);
      k.rowwise() += w_(a + "k_proj.bias").row(0);
      v.rowwise() += w_(a + "v_proj.bias").row(0);
    }
    if (hybrid()) {  // per head [query d; gate d], q/k normed per head
      const Mat both = q;
      q.resize(h.rows(), q_width), gate.resize(h.rows(), q_width);
      for (int head = 0; head < s_.heads; ++head) {
        q.middleCols(head * d, d) = both.middleCols(2 * head * d, d);
        gate.middleCols(head * d, d) = both.middleCols(2 * head * d + d, d);
      }
      q = head_norm(q, s_.heads, a + "q_norm.weight");
      k = head_norm(k, s_.kv_heads, a + "k_norm.weight");
    }
    rope(&q, s_.heads, d, s_.rotary);
    rope(&k, s_.kv_heads, d, s_.rotary);
    Mat context = family_ == ModelFamily::kGptOss ? attend_with_sinks(q, k, v, w_(a + "sinks"))
                                                  : attend(q, k, v, s_.heads, s_.kv_heads, d);
    if (gate.size()) context = context.cwiseProduct(sigmoid(gate));
    Mat out = linear(context, w_(a + "o_proj.weight"));
    if (family_ == ModelFamily::kGptOss) out.rowwise() += w_(a + "o_proj.bias").row(0);
    return out;
  }

  // GPT-OSS: each head's softmax also spreads over a learned sink logit, which takes no value.
  Mat attend_with_sinks(const Mat& q, const Mat& k, const Mat& v, const Mat& sinks) const {
    const int d = s_.head_dim, group = s_.heads / s_.kv_heads;
    const Eigen::Index tokens = q.rows();
    Mat context(tokens, s_.heads * d);
    for (int head = 0; head < s_.heads; ++head) {
      const int kv = head / group;
      const Mat scores = q.middleCols(head * d, d) * k.middleCols(kv * d, d).transpose() / std::sqrt(double(d));
      for (Eigen::Index t = 0; t < tokens; ++t) {
        const double top = std::max(scores.row(t).head(t + 1).maxCoeff(), sinks(0, head));
        Eigen::RowVectorXd p = Eigen::RowVectorXd::Zero(tokens);
        double sum = std::exp(sinks(0, head) - top);
        for (Eigen::Index u = 0; u <= t; ++u) sum += p(u) = std::exp(scores(t, u) - top);
        context.block(t, head * d, 1, d) = p / sum * v.middleCols(kv * d, d);
      }
    }
    return context;
  }

  // DeepSeek-V3's multi-head latent attention: q = q_b(RMSNorm(q_a h)) per head [nope; rope],
  // kv_a h = [latent (kv_lora_rank); k_rope (shared by the heads)], kv_b(RMSNorm(latent)) per head
  // [k_nope; v]; RoPE on the rope parts (here in the half-rotation form; the released checkpoints'
  // interleaved form only permutes those dims inside q_b / kv_a's rope rows, which the stream
  // transforms do not touch), softmax scale 1 / sqrt(nope + rope). Its two latent norms normalise
  // the latents, not the stream: a fold into them, or a rotation through them, changes the logits.
  Mat latent_attention(const std::string& a, const Mat& h) const {
    const int heads = s_.heads, nope = s_.config["qk_nope_head_dim"], rope_dim = s_.config["qk_rope_head_dim"];
    const int vd = s_.config["v_head_dim"], kv_rank = s_.config["kv_lora_rank"], qk = nope + rope_dim;
    const Mat q = linear(norm_plain(linear(h, w_(a + "q_a_proj.weight")), a + "q_a_layernorm.weight"), w_(a + "q_b_proj.weight"));
    const Mat kv_a = linear(h, w_(a + "kv_a_proj_with_mqa.weight"));
    Mat k_rope = kv_a.rightCols(rope_dim);
    rope(&k_rope, 1, rope_dim, rope_dim);
    const Mat kv = linear(norm_plain(kv_a.leftCols(kv_rank), a + "kv_a_layernorm.weight"), w_(a + "kv_b_proj.weight"));
    Mat queries = q, keys(h.rows(), heads * qk), values(h.rows(), heads * vd);
    for (int head = 0; head < heads; ++head) {
      Mat q_rope = q.middleCols(head * qk + nope, rope_dim);
      rope(&q_rope, 1, rope_dim, rope_dim);
      queries.middleCols(head * qk + nope, rope_dim) = q_rope;
      keys.middleCols(head * qk, nope) = kv.middleCols(head * (nope + vd), nope);
      keys.middleCols(head * qk + nope, rope_dim) = k_rope;
      values.middleCols(head * vd, vd) = kv.middleCols(head * (nope + vd) + nope, vd);
    }
    return linear(attend_heads(queries, keys, values, heads, qk, vd), w_(a + "o_proj.weight"));
  }

  // A norm inside a block (DeepSeek's latent norms): always a plain gain.
  Mat norm_plain(const Mat& x, const std::string& name) const { return rms_norm(x, w_(name)); }

  bool hybrid() const { return family_ == ModelFamily::kQwen35Moe || family_ == ModelFamily::kQwen3Next; }

  // The Gated DeltaNet's projections in Qwen3.5's order: mixed = [q of every key head, k of every
  // key head, v of every value head], z per value head, a and b per value head. Qwen3-Next fuses
  // them per key-head group g: in_proj_qkvz rows [q_g (dk), k_g (dk), v_g (r dv), z_g (r dv)] and
  // in_proj_ba rows [b_g (r), a_g (r)], r value heads per key head (its fix_query_key_value_ordering).
  struct DeltaInputs {
    Mat mixed, z, a, b;
  };
  DeltaInputs delta_inputs(const std::string& p, const Mat& h, int key_heads, int value_heads, int dk, int dv) const {
    if (family_ != ModelFamily::kQwen3Next) {
      return {linear(h, w_(p + "in_proj_qkv.weight")), linear(h, w_(p + "in_proj_z.weight")),
              linear(h, w_(p + "in_proj_a.weight")), linear(h, w_(p + "in_proj_b.weight"))};
    }
    const Mat qkvz = linear(h, w_(p + "in_proj_qkvz.weight")), ba = linear(h, w_(p + "in_proj_ba.weight"));
    const int r = value_heads / key_heads, group = 2 * dk + 2 * r * dv;
    const Eigen::Index tokens = h.rows();
    DeltaInputs in{Mat(tokens, 2 * key_heads * dk + value_heads * dv), Mat(tokens, value_heads * dv),
                   Mat(tokens, value_heads), Mat(tokens, value_heads)};
    for (int g = 0; g < key_heads; ++g) {
      in.mixed.middleCols(g * dk, dk) = qkvz.middleCols(g * group, dk);
      in.mixed.middleCols(key_heads * dk + g * dk, dk) = qkvz.middleCols(g * group + dk, dk);
      in.mixed.middleCols(2 * key_heads * dk + g * r * dv, r * dv) = qkvz.middleCols(g * group + 2 * dk, r * dv);
      in.z.middleCols(g * r * dv, r * dv) = qkvz.middleCols(g * group + 2 * dk + r * dv, r * dv);
      in.b.middleCols(g * r, r) = ba.middleCols(g * 2 * r, r);
      in.a.middleCols(g * r, r) = ba.middleCols(g * 2 * r + r, r);
    }
    return in;
  }

  // Qwen3.5's and Qwen3-Next's Gated DeltaNet, recurrent form: causal depthwise conv + SiLU on the qkv projection,
  // L2-normed q and k shared by groups of value heads, decay g = -exp(A_log) softplus(a + dt_bias),
  // write strength sigmoid(b), the delta rule S <- S e^g + k (beta (v - S^T k))^T, o = S^T q / sqrt(dk),
  // then RMSNorm(o) w * silu(z) per value head and out_proj.
  Mat gated_delta_net(const std::string& p, const Mat& h) const {
    const Mat conv = w_(p + "conv1d.weight");  // [channels, kernel] (in-channels 1)
    const Mat a_log = w_(p + "A_log"), dt_bias = w_(p + "dt_bias"), gain = w_(p + "norm.weight");
    const int value_heads = int(a_log.cols()), dv = int(gain.cols()), kernel = int(conv.cols());
    const int dk = dv, key_heads = int(conv.rows() - value_heads * dv) / (2 * dk);
    const DeltaInputs in = delta_inputs(p, h, key_heads, value_heads, dk, dv);
    const Mat &mixed = in.mixed, &z = in.z, &a = in.a, &b = in.b;
    const Eigen::Index tokens = h.rows();
    Mat c = Mat::Zero(tokens, mixed.cols());
    for (Eigen::Index t = 0; t < tokens; ++t) {
      for (int j = 0; j < kernel; ++j) {
        const Eigen::Index src = t - (kernel - 1) + j;
        if (src >= 0) c.row(t) += mixed.row(src).cwiseProduct(conv.col(j).transpose());
      }
    }
    c = silu(c);
    Mat out(tokens, value_heads * dv);
    for (int vh = 0; vh < value_heads; ++vh) {
      const int kh = vh / (value_heads / key_heads);
      Mat state = Mat::Zero(dk, dv);
      for (Eigen::Index t = 0; t < tokens; ++t) {
        Eigen::VectorXd q = c.row(t).segment(kh * dk, dk).transpose();
        Eigen::VectorXd k = c.row(t).segment(key_heads * dk + kh * dk, dk).transpose();
        const Eigen::VectorXd v = c.row(t).segment(2 * key_heads * dk + vh * dv, dv).transpose();
        q /= std::sqrt(q.squaredNorm() + 1e-6), k /= std::sqrt(k.squaredNorm() + 1e-6);
        const double x = a(t, vh) + dt_bias(0, vh);
        const double g = -std::exp(a_log(0, vh)) * (x > 20 ? x : std::log1p(std::exp(x)));
        const double beta = 1 / (1 + std::exp(-b(t, vh)));
        state *= std::exp(g);
        const Eigen::VectorXd delta = beta * (v - state.transpose() * k);
        state += k * delta.transpose();
        const Eigen::RowVectorXd o = (state.transpose() * q).transpose() / std::sqrt(double(dk));
        const double inv = 1 / std::sqrt(o.squaredNorm() / dv + 1e-6);
        out.block(t, vh * dv, 1, dv) =
            (o * inv).cwiseProduct(gain.row(0)).cwiseProduct(silu(z.block(t, vh * dv, 1, dv)));
      }
    }
    return linear(out, w_(p + "out_proj.weight"));
  }

  Mat mlp(const std::string& p, const Mat& h, int layer) const {
    if (family_ == ModelFamily::kPhi3) {  // gate_up_proj rows: gate, then up
      const Mat gu = linear(h, w_(p + "mlp.gate_up_proj.weight"));
      const Eigen::Index width = gu.cols() / 2;
      return linear(silu(gu.leftCols(width)).cwiseProduct(gu.rightCols(width)), w_(p + "mlp.down_proj.weight"));
    }
    if (family_ == ModelFamily::kMixtral) return mixtral_moe(p + "block_sparse_moe.", h);
    if (family_ == ModelFamily::kGptOss) return gpt_oss_moe(p + "mlp.", h);
    if (family_ == ModelFamily::kDeepseekV3) return deepseek_moe(p + "mlp.", h, layer);
    return qwen_moe(p + "mlp.", h);
  }

  Mat swiglu(const Mat& h, const Mat& gate, const Mat& up, const Mat& down) const {
    return linear(silu(linear(h, gate)).cwiseProduct(linear(h, up)), down);
  }

  Mat mixtral_moe(const std::string& p, const Mat& h) const {
    const Mat logits = linear(h, w_(p + "gate.weight"));
    Mat out = Mat::Zero(h.rows(), h.cols());
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
      for (const auto& [e, weight] : route(logits.row(t), s_.experts_per_token, true)) {
        const std::string x = p + "experts." + std::to_string(e) + ".";
        out.row(t) += weight * swiglu(h.row(t), w_(x + "w1.weight"), w_(x + "w3.weight"), w_(x + "w2.weight"));
      }
    }
    return out;
  }

  // Qwen3.5: stacked experts, gate_up_proj [E, 2I, H] (rows: gate, then up), down_proj [E, H, I];
  // Qwen3-Next: one module per expert. Softmax top-k renormalised; a shared expert gated by
  // sigmoid(shared_expert_gate h).
  Mat qwen_moe(const std::string& p, const Mat& h) const {
    const Mat logits = linear(h, w_(p + "gate.weight"));
    const bool stacked = family_ == ModelFamily::kQwen35Moe;
    const Mat gate_up = stacked ? w_(p + "experts.gate_up_proj") : Mat(), down = stacked ? w_(p + "experts.down_proj") : Mat();
    const Eigen::Index experts = logits.cols(), hidden = h.cols();
    const Eigen::Index width = stacked ? gate_up.rows() / experts / 2 : 0;
    Mat out = Mat::Zero(h.rows(), hidden);
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
      for (const auto& [e, weight] : route(logits.row(t), s_.experts_per_token, true)) {
        const std::string x = p + "experts." + std::to_string(e) + ".";
        out.row(t) += weight * (stacked ? swiglu(h.row(t), gate_up.middleRows(2 * e * width, width),
                                                 gate_up.middleRows((2 * e + 1) * width, width),
                                                 down.middleRows(e * hidden, hidden))
                                        : swiglu(h.row(t), w_(x + "gate_proj.weight"), w_(x + "up_proj.weight"),
                                                 w_(x + "down_proj.weight")));
      }
    }
    const std::string s = p + "shared_expert.";
    const Mat shared = swiglu(h, w_(s + "gate_proj.weight"), w_(s + "up_proj.weight"), w_(s + "down_proj.weight"));
    return out + sigmoid(linear(h, w_(p + "shared_expert_gate.weight"))).col(0).asDiagonal() * shared;
  }

  // DeepSeek-V3: the first first_k_dense_replace layers are a dense SwiGLU; then sigmoid scores,
  // the top k chosen by score + e_score_correction_bias (one group here), weighted by their scores
  // renormalised (norm_topk_prob) times routed_scaling_factor, plus the shared experts.
  Mat deepseek_moe(const std::string& p, const Mat& h, int layer) const {
    if (layer < s_.config.value("first_k_dense_replace", 0)) {
      return swiglu(h, w_(p + "gate_proj.weight"), w_(p + "up_proj.weight"), w_(p + "down_proj.weight"));
    }
    const Mat scores = sigmoid(linear(h, w_(p + "gate.weight")));
    const Mat bias = w_(p + "gate.e_score_correction_bias");
    const double scaling = s_.config.value("routed_scaling_factor", 2.5);
    const bool renormalise = s_.config.value("norm_topk_prob", true);
    Mat out = swiglu(h, w_(p + "shared_experts.gate_proj.weight"), w_(p + "shared_experts.up_proj.weight"),
                     w_(p + "shared_experts.down_proj.weight"));
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
      std::vector<int> order(size_t(scores.cols()));
      for (size_t e = 0; e < order.size(); ++e) order[e] = int(e);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return scores(t, a) + bias(0, a) > scores(t, b) + bias(0, b);
      });
      double sum = 0;
      for (int i = 0; i < s_.experts_per_token; ++i) sum += scores(t, order[size_t(i)]);
      for (int i = 0; i < s_.experts_per_token; ++i) {
        const int e = order[size_t(i)];
        const double weight = scores(t, e) / (renormalise ? sum : 1.0) * scaling;
        const std::string x = p + "experts." + std::to_string(e) + ".";
        out.row(t) += weight * swiglu(h.row(t), w_(x + "gate_proj.weight"), w_(x + "up_proj.weight"), w_(x + "down_proj.weight"));
      }
    }
    return out;
  }

  // GPT-OSS: router logits with a bias, softmax over the top k; experts h G_e + b_e (G_e [hidden, 2I],
  // gate and up interleaved), gate and up clamped at 7, (up + 1) gate sigmoid(1.702 gate), then
  // times D_e [I, hidden] plus its bias.
  Mat gpt_oss_moe(const std::string& p, const Mat& h) const {
    Mat logits = linear(h, w_(p + "router.weight"));
    logits.rowwise() += w_(p + "router.bias").row(0);
    const Mat gate_up = w_(p + "experts.gate_up_proj"), gate_up_bias = w_(p + "experts.gate_up_proj_bias");
    const Mat down = w_(p + "experts.down_proj"), down_bias = w_(p + "experts.down_proj_bias");
    const Eigen::Index hidden = h.cols(), width = gate_up.cols() / 2;
    Mat out = Mat::Zero(h.rows(), hidden);
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
      std::vector<int> order(size_t(logits.cols()));
      for (size_t e = 0; e < order.size(); ++e) order[e] = int(e);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits(t, a) > logits(t, b); });
      Eigen::RowVectorXd top(s_.experts_per_token);
      for (int i = 0; i < s_.experts_per_token; ++i) top(i) = logits(t, order[size_t(i)]);
      const auto chosen = route(top, s_.experts_per_token, false);  // softmax over the k chosen
      for (const auto& [i, weight] : chosen) {
        const int e = order[size_t(i)];
        const Eigen::RowVectorXd x = h.row(t) * gate_up.middleRows(e * hidden, hidden) + gate_up_bias.row(e);
        Eigen::RowVectorXd act(width);
        for (Eigen::Index j = 0; j < width; ++j) {
          const double g = std::min(x(2 * j), 7.0), u = std::clamp(x(2 * j + 1), -7.0, 7.0);
          act(j) = (u + 1) * g / (1 + std::exp(-1.702 * g));
        }
        out.row(t) += weight * (act * down.middleRows(e * width, width) + down_bias.row(e));
      }
    }
    return out;
  }

  Weights w_;
  ModelFamily family_;
  Shape s_;
};

struct LayoutCase {
  ModelFamily family;
  PerturbKind kind;
};

class PerturbRealLayouts : public testing::TestWithParam<LayoutCase> {};

// rescale-neurons on a real layout: the truth's factors are those applied (layer 1's first MLP:
// the dense one, or the first expert; DeepSeek-V3's dense layer 0, as its routing sends none of
// these tokens to expert 0: one of its neurons' up weights over the stored ones), they
// spread (strength 2: from 1/2 to 2), gate is left as it was, and an up projection put back as
// it was, or a down projection, breaks the function.
void expect_rescaled_neurons(const alloy::Model& before, const alloy::Model& after,
                             const json& truth, ModelFamily family, const Shape& s,
                             const std::vector<int>& ids, const Mat& expected) {
  const int l = family == ModelFamily::kDeepseekV3 ? 0 : 1;
  const json& layer = truth["layers"][l];
  const bool moe = layer.contains("experts");
  const std::vector<float> c =
      moe ? layer["experts"][0].get<std::vector<float>>() : layer["mlp"].get<std::vector<float>>();
  ASSERT_FALSE(c.empty()) << layer.dump();
  EXPECT_LT(*std::min_element(c.begin(), c.end()), 0.8f);
  EXPECT_GT(*std::max_element(c.begin(), c.end()), 1.25f);
  const std::string p = s.prefix + "layers." + std::to_string(l) + ".";
  // The stored up and down of that MLP, as [neurons, hidden] up rows and [hidden, neurons] down.
  std::string up, down, fused;
  switch (family) {
    case ModelFamily::kPhi3:
      fused = p + "mlp.gate_up_proj.weight", down = p + "mlp.down_proj.weight";
      break;
    case ModelFamily::kMixtral:
      up = p + "block_sparse_moe.experts.0.w3.weight",
      down = p + "block_sparse_moe.experts.0.w2.weight";
      break;
    case ModelFamily::kDeepseekV3:
      up = p + "mlp.up_proj.weight", down = p + "mlp.down_proj.weight";
      break;
    default:
      up = p + "mlp.experts.0.up_proj.weight", down = p + "mlp.experts.0.down_proj.weight";
      break;
  }
  if (family == ModelFamily::kQwen35Moe)
    fused = p + "mlp.experts.gate_up_proj", down = p + "mlp.experts.down_proj";
  const auto up_rows = [&](const alloy::Model& m) {
    if (fused.empty()) return matrix(m, up);
    Mat all = matrix(m, fused);  // [2I, H], or expert 0 of [E, 2I, H] (its first 2I rows)
    const Eigen::Index neurons = Eigen::Index(c.size());
    return Mat(all.block(neurons, 0, neurons, all.cols()));
  };
  const Mat u0 = up_rows(before), u1 = up_rows(after);
  ASSERT_EQ(size_t(u0.rows()), c.size()) << "the up projection's neurons";
  for (size_t i = 0; i < c.size(); i += 7) {
    EXPECT_NEAR(u1.row(Eigen::Index(i)).norm() / u0.row(Eigen::Index(i)).norm(), c[i], 1e-5 * c[i])
        << "neuron " << i;
  }
  if (!fused.empty()) {  // gate's half untouched
    const Mat g0 = matrix(before, fused), g1 = matrix(after, fused);
    EXPECT_EQ(g0.topRows(Eigen::Index(c.size())), g1.topRows(Eigen::Index(c.size())));
  }
  for (const std::string& name : {fused.empty() ? up : fused, down}) {
    const Weights mixed = [&](const std::string& n) {
      return matrix(n == name ? before : after, n);
    };
    EXPECT_GT(relative_difference(Forward(mixed, family, s).logits(ids), expected), 1e-3) << name;
  }
}

TEST_P(PerturbRealLayouts, LogitsUnchanged) {
  const LayoutCase c = GetParam();
  alloy::test::TempDir dir;
  alloy::BaseModelOptions o;
  o.arch.family = c.family;
  o.arch.layers = 4;  // Qwen3.5: three Gated DeltaNet layers, then full attention
  o.arch.hidden = 64;
  o.arch.vocab = 64;
  o.dtype = alloy::DType::F32;
  o.seed = 5;
  alloy::synth_base_model(dir / "base", o);
  alloy::PerturbOptions p;
  p.kind = c.kind;
  p.seed = 9;
  const json truth = alloy::perturb_model(dir / "base", dir / "out", p);
  const auto before = alloy::Model::open(dir / "base"), after = alloy::Model::open(dir / "out");
  const std::vector<int> ids = {3, 17, 0, 31, 8, 8, 22, 63};
  const Shape s = shape_of(before, c.family);
  const Mat expected = Forward(weights_of(before), c.family, s).logits(ids);
  EXPECT_LT(relative_difference(Forward(weights_of(after), c.family, s).logits(ids), expected), 1e-4);
  if (c.kind == PerturbKind::kRescaleNeurons) {
    expect_rescaled_neurons(before, after, truth, c.family, s, ids, expected);
    return;
  }

  // The folded norms hold a unit gain as the family stores it (0 for a (1 + w) norm), and the truth
  // records the gain that was folded (1 + w there).
  const double unit = s.offset_norms ? 0.0 : 1.0, offset = s.offset_norms ? 1.0 : 0.0;
  const std::string norm = s.prefix + "layers.1.post_attention_layernorm.weight";
  EXPECT_EQ(matrix(after, norm).maxCoeff(), unit);
  EXPECT_EQ(matrix(after, norm).minCoeff(), unit);
  const Mat stored = matrix(before, norm);
  ASSERT_TRUE(truth["norms"].contains(norm)) << truth["norms"].dump();
  for (Eigen::Index j = 0; j < stored.cols(); ++j) {
    EXPECT_FLOAT_EQ(truth["norms"][norm][size_t(j)].get<float>(), float(stored(0, j) + offset)) << j;
  }

  // The controls: one transformed reader put back as it was, or the (1 + w) norms read as plain
  // gains, breaks the function.
  const std::string reader = c.family == ModelFamily::kPhi3      ? "model.layers.2.mlp.gate_up_proj.weight"
                             : c.family == ModelFamily::kMixtral ? "model.layers.2.block_sparse_moe.gate.weight"
                             : c.family == ModelFamily::kGptOss  ? "model.layers.2.mlp.experts.gate_up_proj"
                             : c.family == ModelFamily::kQwen3Next ? "model.layers.2.linear_attn.in_proj_qkvz.weight"
                             : c.family == ModelFamily::kDeepseekV3 ? "model.layers.2.self_attn.kv_a_proj_with_mqa.weight"
                                                                 : s.prefix + "layers.2.linear_attn.in_proj_qkv.weight";
  const Weights mixed = [&](const std::string& name) { return matrix(name == reader ? before : after, name); };
  EXPECT_GT(relative_difference(Forward(mixed, c.family, s).logits(ids), expected), 1e-3) << reader;
  if (s.offset_norms) {
    Shape plain = s;
    plain.offset_norms = false;
    EXPECT_GT(relative_difference(Forward(weights_of(after), c.family, plain).logits(ids),
                                  Forward(weights_of(before), c.family, plain).logits(ids)),
              1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Perturb, PerturbRealLayouts,
    testing::Values(LayoutCase{ModelFamily::kPhi3, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kPhi3, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kMixtral, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kMixtral, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kQwen35Moe, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kQwen35Moe, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kQwen3Next, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kQwen3Next, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kGptOss, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kGptOss, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kDeepseekV3, PerturbKind::kFoldNorms},
                    LayoutCase{ModelFamily::kDeepseekV3, PerturbKind::kRotateResidual},
                    LayoutCase{ModelFamily::kPhi3, PerturbKind::kRescaleNeurons},
                    LayoutCase{ModelFamily::kMixtral, PerturbKind::kRescaleNeurons},
                    LayoutCase{ModelFamily::kQwen35Moe, PerturbKind::kRescaleNeurons},
                    LayoutCase{ModelFamily::kQwen3Next, PerturbKind::kRescaleNeurons},
                    LayoutCase{ModelFamily::kDeepseekV3, PerturbKind::kRescaleNeurons}),
    [](const testing::TestParamInfo<LayoutCase>& info) {
      std::string name = std::string(alloy::family_name(info.param.family)) + "_" +
                         alloy::perturb_kind_name(info.param.kind);
      for (char& ch : name) {
        if (ch == '-') ch = '_';
      }
      return name;
    });

}  // namespace

namespace {

// GPT-OSS computes (clamp(up) + 1) * glu(gate): a rescaled up neuron would change the function, so
// rescale-neurons refuses the family by name, before it writes anything.
TEST(PerturbRealLayoutsRefusal, RescaleNeuronsRefusesGptOss) {
  alloy::test::TempDir dir;
  alloy::BaseModelOptions o;
  o.arch.family = ModelFamily::kGptOss;
  o.arch.layers = 2;
  o.arch.hidden = 64;
  o.arch.vocab = 64;
  alloy::synth_base_model(dir / "base", o);
  alloy::PerturbOptions p;
  p.kind = PerturbKind::kRescaleNeurons;
  try {
    alloy::perturb_model(dir / "base", dir / "out", p);
    FAIL() << "rescale-neurons accepted GPT-OSS";
  } catch (const alloy::Error& e) {
    EXPECT_NE(std::string(e.what()).find("gpt_oss"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("up projection"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

}  // namespace
