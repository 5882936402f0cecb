// Function-preserving rescalings: per-neuron factors moved between up_proj rows and down_proj
// columns, and RMSNorm gains folded into the weights that read the normalised vector
// (see alloy/perturb/perturb.h).
#include <cmath>
#include "alloy/core/error.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

// Row r times factor[r] (divide: divided by it).
TensorTransform scale_rows(std::vector<float> factor) {
  return [factor = std::move(factor)](float* v, uint64_t rows, uint64_t cols) {
    if (rows != factor.size())
      throw Error(ErrorCode::kInternal, "scale_rows: shape does not match");
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) v[r * cols + c] *= factor[r];
    }
    return json(nullptr);
  };
}

// Column c times factor[c] (or divided by it).
TensorTransform scale_columns(std::vector<float> factor, bool divide) {
  return [factor = std::move(factor), divide](float* v, uint64_t rows, uint64_t cols) {
    if (cols != factor.size())
      throw Error(ErrorCode::kInternal, "scale_columns: shape does not match");
    for (uint64_t r = 0; r < rows; ++r) {
      float* row = v + r * cols;
      for (uint64_t c = 0; c < cols; ++c) row[c] = divide ? row[c] / factor[c] : row[c] * factor[c];
    }
    return json(nullptr);
  };
}

TensorTransform set_to_one() {
  return [](float* v, uint64_t rows, uint64_t cols) {
    std::fill(v, v + rows * cols, 1.0f);
    return json(nullptr);
  };
}

void put(Overrides* overrides, const std::string& name, TensorTransform transform) {
  (*overrides)[name] = {name, name, std::move(transform)};
}

// c_i = strength^u, u uniform in [-1, 1], for the MLP at `prefix`: up rows times c, down columns
// divided by c. Returns c.
std::vector<float> rescale_mlp(const PerturbInput& input, const std::string& prefix,
                               uint64_t hidden, Overrides* overrides) {
  const ModelTensor& up = require_tensor(input.model, prefix + "up_proj.weight");
  const uint64_t width = up.info->shape.empty() ? 0 : up.info->shape[0];
  require_shape(up, {width, hidden});
  require_shape(require_tensor(input.model, prefix + "down_proj.weight"), {hidden, width});
  PerturbRng rng(input.options.seed, "rescale-neurons:" + prefix);
  std::vector<float> c(width);
  const double log_strength = std::log(input.strength);
  for (auto& x : c) x = float(std::exp((2 * rng.uniform() - 1) * log_strength));
  put(overrides, prefix + "up_proj.weight", scale_rows(c));
  put(overrides, prefix + "down_proj.weight", scale_columns(c, true));
  return c;
}

json rescale_layer(const PerturbInput& input, const Architecture& arch, int layer,
                   Overrides* overrides) {
  return visit_layer_mlps(arch, layer, [&](const std::string& prefix) {
    return json(rescale_mlp(input, prefix, uint64_t(arch.hidden), overrides));
  });
}

// Folds the gain `norm` into the columns of every tensor in `readers` (those present), and sets
// the gain to 1. Returns the gain.
std::vector<float> fold(const PerturbInput& input, const std::string& norm,
                        const std::vector<std::string>& readers, uint64_t hidden,
                        Overrides* overrides) {
  const ModelTensor& gain = require_tensor(input.model, norm);
  require_shape(gain, {hidden});
  std::vector<float> g = load_values(gain);
  for (const auto& name : readers) {
    if (const ModelTensor* t = input.model.find(name)) {
      if (t->info->shape.size() != 2 || t->info->shape[1] != hidden) {
        throw Error(ErrorCode::kShapeMismatch, "perturb: tensor '" + name + "' does not have " +
                                                   std::to_string(hidden) + " columns to fold '" +
                                                   norm + "' into");
      }
      put(overrides, name, scale_columns(g, false));
    }
  }
  put(overrides, norm, set_to_one());
  return g;
}

json fold_layer(const PerturbInput& input, const Architecture& arch, int layer,
                Overrides* overrides) {
  const std::string p = layer_prefix(layer);
  const uint64_t hidden = uint64_t(arch.hidden);
  const std::vector<std::string> attention = {
      p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"};
  std::vector<std::string> mlp;
  if (arch.family == ModelFamily::kLlama) {
    mlp = {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"};
  } else {
    mlp = {p + "mlp.gate.weight", p + "mlp.shared_expert.gate_proj.weight",
           p + "mlp.shared_expert.up_proj.weight", p + "mlp.shared_expert_gate.weight"};
    for (int e = 0; e < arch.experts; ++e) {
      const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
      mlp.push_back(q + "gate_proj.weight");
      mlp.push_back(q + "up_proj.weight");
    }
  }
  for (const auto& name : attention) require_tensor(input.model, name);
  return {
      {"layer", layer},
      {"input_layernorm", fold(input, p + "input_layernorm.weight", attention, hidden, overrides)},
      {"post_attention_layernorm",
       fold(input, p + "post_attention_layernorm.weight", mlp, hidden, overrides)}};
}

}  // namespace

PerturbPlan plan_rescaling(const PerturbInput& input) {
  const Architecture& arch = require_architecture(input);
  const bool rescale = input.options.kind == PerturbKind::kRescaleNeurons;
  PerturbPlan plan;
  Overrides overrides;
  json layers = json::array();
  for (int l = 0; l < arch.layers; ++l) {
    layers.push_back(rescale ? rescale_layer(input, arch, l, &overrides)
                             : fold_layer(input, arch, l, &overrides));
  }
  plan.truth["layers"] = std::move(layers);
  if (!rescale) {
    // The final norm feeds lm_head only when the head is not tied to the embeddings.
    const bool untied = input.model.find("lm_head.weight") != nullptr;
    plan.truth["final_norm"] = untied ? json(fold(input, "model.norm.weight", {"lm_head.weight"},
                                                  uint64_t(arch.hidden), &overrides))
                                      : json(nullptr);
  }
  plan.tensors = apply_overrides(input.model, overrides);
  return plan;
}

}  // namespace alloy::detail
