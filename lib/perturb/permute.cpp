// Function-preserving permutations: routed experts, MLP neurons, attention heads within their
// key-value groups (see alloy/perturb/perturb.h). Every permutation is drawn from a stream named after the
// layer (and expert), so it does not depend on the order tensors are listed in.
#include "alloy/core/error.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

TensorTransform rows_by(std::vector<int> p, uint64_t block = 1) {
  return [p = std::move(p), block](float* v, uint64_t rows, uint64_t cols) {
    permute_rows(v, rows, cols, p, block);
    return json(nullptr);
  };
}

TensorTransform columns_by(std::vector<int> p, uint64_t block = 1) {
  return [p = std::move(p), block](float* v, uint64_t rows, uint64_t cols) {
    permute_columns(v, rows, cols, p, block);
    return json(nullptr);
  };
}

void require_moe(const PerturbInput& input, const Architecture& arch) {
  if (arch.family != ModelFamily::kMoe) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("perturb: --kind ") + perturb_kind_name(input.options.kind) +
                    " needs an MoE model " + "(routed experts mlp.experts.E.*), and " +
                    input.model.path().string() + " is a dense (Llama-like) model");
  }
}

// Permutes the neurons of one MLP (gate_proj and up_proj rows, down_proj columns) at `prefix`
// ("...mlp." or "...mlp.experts.E." or "...mlp.shared_expert.").
std::vector<int> permute_mlp(const PerturbInput& input, const std::string& prefix, uint64_t hidden,
                             Overrides* overrides) {
  const ModelTensor& gate = require_tensor(input.model, prefix + "gate_proj.weight");
  const uint64_t width = gate.info->shape.empty() ? 0 : gate.info->shape[0];
  require_shape(gate, {width, hidden});
  require_shape(require_tensor(input.model, prefix + "up_proj.weight"), {width, hidden});
  require_shape(require_tensor(input.model, prefix + "down_proj.weight"), {hidden, width});
  const std::vector<int> p =
      PerturbRng(input.options.seed, "permute-neurons:" + prefix).permutation(int(width));
  for (const char* name : {"gate_proj.weight", "up_proj.weight"}) {
    (*overrides)[prefix + name] = {prefix + name, prefix + name, rows_by(p)};
  }
  (*overrides)[prefix + "down_proj.weight"] = {prefix + "down_proj.weight",
                                               prefix + "down_proj.weight", columns_by(p)};
  return p;
}

json permute_experts(const PerturbInput& input, const Architecture& arch, int layer,
                     Overrides* overrides) {
  const std::string p = layer_prefix(layer) + "mlp.";
  const ModelTensor& router = require_tensor(input.model, p + "gate.weight");
  require_shape(router, {uint64_t(arch.experts), uint64_t(arch.hidden)});
  const std::vector<int> perm =
      PerturbRng(input.options.seed, "permute-experts:" + p).permutation(arch.experts);
  overrides->insert({router.name(), {router.name(), router.name(), rows_by(perm)}});
  for (int e = 0; e < arch.experts; ++e) {
    for (const char* part : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
      const std::string out = p + "experts." + std::to_string(e) + "." + part;
      const std::string source = p + "experts." + std::to_string(perm[e]) + "." + part;
      require_tensor(input.model, out);
      require_shape(require_tensor(input.model, source),
                    require_tensor(input.model, out).info->shape);
      (*overrides)[out] = {out, source, {}};
    }
  }
  return {{"layer", layer}, {"experts", perm}};
}

json permute_neurons(const PerturbInput& input, const Architecture& arch, int layer,
                     Overrides* overrides) {
  return visit_layer_mlps(arch, layer, [&](const std::string& prefix) {
    return json(permute_mlp(input, prefix, uint64_t(arch.hidden), overrides));
  });
}

json permute_heads(const PerturbInput& input, const Architecture& arch, int layer,
                   Overrides* overrides) {
  const std::string p = layer_prefix(layer) + "self_attn.";
  const uint64_t heads = uint64_t(arch.heads), kv_heads = uint64_t(arch.kv_heads),
                 group = heads / kv_heads;
  const uint64_t hidden = uint64_t(arch.hidden);
  const ModelTensor& q = require_tensor(input.model, p + "q_proj.weight");
  const uint64_t q_rows = q.info->shape.empty() ? 0 : q.info->shape[0];
  if (q_rows % heads != 0) {
    throw Error(ErrorCode::kShapeMismatch,
                "perturb: tensor '" + q.name() + "' has " + std::to_string(q_rows) +
                    " rows, not a multiple of the " + std::to_string(heads) + " heads");
  }
  const uint64_t head_dim = q_rows / heads;
  require_shape(q, {heads * head_dim, hidden});
  require_shape(require_tensor(input.model, p + "k_proj.weight"), {kv_heads * head_dim, hidden});
  require_shape(require_tensor(input.model, p + "v_proj.weight"), {kv_heads * head_dim, hidden});
  require_shape(require_tensor(input.model, p + "o_proj.weight"), {hidden, heads * head_dim});

  PerturbRng rng(input.options.seed, "permute-heads:" + p);
  const std::vector<int> kv = rng.permutation(int(kv_heads));
  std::vector<int> q_heads(heads);
  for (uint64_t g = 0; g < kv_heads; ++g) {
    const std::vector<int> inner = rng.permutation(int(group));
    for (uint64_t j = 0; j < group; ++j)
      q_heads[g * group + j] = int(uint64_t(kv[g]) * group + uint64_t(inner[j]));
  }
  const auto set = [&](const std::string& name, TensorTransform transform) {
    if (input.model.find(name)) (*overrides)[name] = {name, name, std::move(transform)};
  };
  set(p + "q_proj.weight", rows_by(q_heads, head_dim));
  set(p + "k_proj.weight", rows_by(kv, head_dim));
  set(p + "v_proj.weight", rows_by(kv, head_dim));
  set(p + "o_proj.weight", columns_by(q_heads, head_dim));
  // Biases are 1-D: one row, so their head blocks are column blocks.
  const std::pair<const char*, uint64_t> biases[] = {
      {"q_proj.bias", heads}, {"k_proj.bias", kv_heads}, {"v_proj.bias", kv_heads}};
  for (const auto& [name, count] : biases) {
    if (const ModelTensor* b = input.model.find(p + name)) {
      require_shape(*b, {count * head_dim});
      set(p + name, columns_by(count == heads ? q_heads : kv, head_dim));
    }
  }
  return {{"layer", layer}, {"heads", q_heads}, {"kv_heads", kv}};
}

}  // namespace

PerturbPlan plan_permutation(const PerturbInput& input) {
  const Architecture& arch = require_architecture(input);
  const PerturbKind kind = input.options.kind;
  if (kind == PerturbKind::kPermuteExperts) require_moe(input, arch);
  PerturbPlan plan;
  Overrides overrides;
  json layers = json::array();
  for (int l = 0; l < arch.layers; ++l) {
    if (kind == PerturbKind::kPermuteExperts)
      layers.push_back(permute_experts(input, arch, l, &overrides));
    if (kind == PerturbKind::kPermuteNeurons)
      layers.push_back(permute_neurons(input, arch, l, &overrides));
    if (kind == PerturbKind::kPermuteHeads)
      layers.push_back(permute_heads(input, arch, l, &overrides));
  }
  if (kind == PerturbKind::kPermuteHeads) plan.truth["group_size"] = arch.heads / arch.kv_heads;
  plan.truth["layers"] = std::move(layers);
  plan.tensors = apply_overrides(input.model, overrides);
  return plan;
}

}  // namespace alloy::detail
