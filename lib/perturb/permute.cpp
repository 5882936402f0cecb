// Function-preserving permutations: routed experts, MLP neurons, attention heads within their
// key-value groups (see alloy/perturb/perturb.h), on every layout the architecture model knows
// (alloy/core/units.h): experts apart or stacked in 3-D tensors (GPT-OSS's interleaved gate/up too),
// fused gate_up and qkv, gated q, multi-head latent attention, under any layer prefix. Every
// permutation is drawn from a stream named after the unit (the layer, the expert), so it does not
// depend on the order tensors are listed in.
#include <map>

#include "alloy/core/error.h"
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using nlohmann::json;

// What the plan does to each tensor: the tensor its data comes from and the reordering.
struct Moves {
  const Model& model;
  std::map<std::string, std::pair<std::string, TensorGather>> by_tensor;  // output -> (source, gather)

  TensorGather& gather(const std::string& name, bool stacked) {
    auto it = by_tensor.find(name);
    if (it == by_tensor.end()) {
      const ModelTensor& t = require_tensor(model, name);
      it = by_tensor.emplace(name, std::make_pair(name, TensorGather::of(t.info->shape, stacked))).first;
    }
    return it->second.second;
  }
  void items(const ItemSlice& s, const std::vector<int>& p) {
    gather(s.tensor, s.matrix >= 0).permute_items(s, std::vector<uint32_t>(p.begin(), p.end()));
  }
  Overrides overrides() const {
    Overrides out;
    for (const auto& [name, entry] : by_tensor) {
      const TensorGather g = entry.second;
      TensorTransform transform;
      if (!g.identity()) {
        transform = [g](float* v, uint64_t rows, uint64_t cols) {
          if (g.matrices * g.rows * g.cols != rows * cols) {
            throw Error(ErrorCode::kInternal, "perturb: a permutation does not match its tensor's shape");
          }
          const std::vector<float> in(v, v + rows * cols);
          g.apply(in.data(), v);
          return json(nullptr);
        };
      }
      out[name] = {name, entry.first, std::move(transform)};
    }
    return out;
  }
};

json permute_experts(const PerturbInput& input, const LayerUnits& u, Moves* moves) {
  const ExpertGroup& x = *u.experts;
  const std::vector<int> perm = PerturbRng(input.options.seed, "permute-experts:" + x.key).permutation(int(x.experts.size()));
  for (const ItemSlice& s : x.router) moves->items(s, perm);
  for (const std::string& name : x.stacked) {
    moves->gather(name, true).permute_matrices(std::vector<uint32_t>(perm.begin(), perm.end()));
  }
  for (size_t e = 0; e < x.apart.size(); ++e) {
    for (size_t k = 0; k < x.apart[e].size(); ++k) {
      const std::string& out = x.apart[e][k];
      const std::string& source = x.apart[size_t(perm[e])][k];
      require_shape(require_tensor(input.model, source), require_tensor(input.model, out).info->shape);
      moves->gather(out, false);
      moves->by_tensor.at(out).first = source;
    }
  }
  return {{"layer", u.layer}, {"experts", perm}};
}

// Permutes the neurons of one MLP (gate and up items, down items, neuron-indexed biases).
json permute_mlp(const PerturbInput& input, const MlpUnit& m, Moves* moves) {
  const std::vector<int> p = PerturbRng(input.options.seed, "permute-neurons:" + m.key).permutation(int(m.neurons));
  for (const ItemSlice* s : {&m.gate, &m.up, &m.down}) moves->items(*s, p);
  for (const ItemSlice& s : m.extra) moves->items(s, p);
  return json(p);
}

json permute_heads(const PerturbInput& input, const AttentionUnit& a, int layer, Moves* moves) {
  const int group = a.heads / a.kv_heads;
  PerturbRng rng(input.options.seed, "permute-heads:" + a.key);
  const std::vector<int> kv = rng.permutation(a.kv_heads);
  std::vector<int> q_heads(size_t(a.heads));
  for (int g = 0; g < a.kv_heads; ++g) {
    const std::vector<int> inner = rng.permutation(group);
    for (int j = 0; j < group; ++j) q_heads[size_t(g * group + j)] = kv[size_t(g)] * group + inner[size_t(j)];
  }
  for (const ItemSlice& s : a.q) moves->items(s, q_heads);
  for (const ItemSlice& s : a.kv) moves->items(s, kv);
  return {{"layer", layer}, {"heads", q_heads}, {"kv_heads", kv}};
}

}  // namespace

PerturbPlan plan_permutation(const PerturbInput& input) {
  const PerturbKind kind = input.options.kind;
  const ModelArchitecture arch = require_architecture(input);
  const std::vector<LayerUnits> units = model_units(arch, input.model);
  PerturbPlan plan;
  Moves moves{input.model, {}};
  json layers = json::array();
  int group_size = 0;
  for (const LayerUnits& u : units) {
    if (kind == PerturbKind::kPermuteExperts) {
      require_recognised(input, u, {"experts"});
      if (u.experts) layers.push_back(permute_experts(input, u, &moves));
    } else if (kind == PerturbKind::kPermuteNeurons) {
      require_recognised(input, u, {"mlp", "shared_expert", "experts"});
      if (!u.mlps.empty() || u.experts) {
        layers.push_back(
            visit_layer_mlps(u, [&](const MlpUnit& m) { return permute_mlp(input, m, &moves); }));
      }
    } else if (kind == PerturbKind::kPermuteHeads) {
      require_recognised(input, u, {"attention"});
      if (!u.attention) continue;
      layers.push_back(permute_heads(input, *u.attention, u.layer, &moves));
      if (group_size == 0) group_size = u.attention->heads / u.attention->kv_heads;
    }
  }
  if (layers.empty()) {
    const std::string what = kind == PerturbKind::kPermuteExperts  ? "an MoE model (routed experts)"
                             : kind == PerturbKind::kPermuteHeads ? "attention layers"
                                                                  : "MLP layers";
    throw Error(ErrorCode::kInvalidArgument, std::string("perturb: --kind ") + perturb_kind_name(kind) + " needs " +
                                                 what + ", and " + input.model.path().string() + " (" +
                                                 arch.family() + ") has none");
  }
  if (kind == PerturbKind::kPermuteHeads) plan.truth["group_size"] = group_size;
  plan.truth["layers"] = std::move(layers);
  plan.tensors = apply_overrides(input.model, moves.overrides());
  return plan;
}

}  // namespace alloy::detail
