// Which component a tensor belongs to: from its role in the model's architecture
// (alloy/core/architecture.h) when the family is known, else by name for Llama-, Qwen2/3-MoE- and
// Qwen3-Next-like layouts (linear attention). Unknown names land in "other" rather than failing: the
// assay still fits them.
#include <cstdlib>
#include <string>

#include "alloy/assay/assay.h"

namespace alloy {
namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The number after `marker` ("layers." -> 12 in "model.layers.12.mlp..."), or -1.
int index_after(const std::string& name, const char* marker) {
  const size_t at = name.find(marker);
  if (at == std::string::npos) return -1;
  const size_t begin = at + std::char_traits<char>::length(marker);
  size_t end = begin;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == begin || end - begin > 9 || end >= name.size() || name[end] != '.') return -1;
  return std::atoi(name.substr(begin, end - begin).c_str());
}

}  // namespace

const std::vector<std::string>& assay_component_names() {
  static const std::vector<std::string> names = {"embeddings", "lm_head",        "attention", "linear_attention",
                                                 "mlp",        "experts",        "shared_experts", "router",
                                                 "norms",      "other"};
  return names;
}

std::string assay_component(const std::string& name, int* layer, int* expert) {
  *layer = index_after(name, "layers.");
  *expert = index_after(name, "experts.");
  if (contains(name, "embed_tokens") || contains(name, "wte.")) return "embeddings";
  if (contains(name, "lm_head")) return "lm_head";
  if (contains(name, "norm")) return "norms";
  if (contains(name, "linear_attn")) return "linear_attention";
  if (contains(name, "self_attn") || contains(name, ".attn.")) return "attention";
  if (contains(name, ".experts.")) return "experts";
  if (contains(name, "shared_expert")) return "shared_experts";
  if (ends_with(name, "mlp.gate.weight") || contains(name, ".router.")) return "router";
  if (contains(name, ".mlp.")) return "mlp";
  return "other";
}

std::string assay_component(const ModelArchitecture& arch, const std::string& name, int* layer, int* expert) {
  if (arch.inferred()) return assay_component(name, layer, expert);
  const TensorPlace place = arch.classify(name);
  *layer = place.submodel.empty() ? place.layer : -1;
  *expert = place.submodel.empty() ? place.expert : -1;
  if (!place.submodel.empty()) return "other";
  switch (place.role) {
    case TensorRole::kEmbedding: return "embeddings";
    case TensorRole::kLmHead: return "lm_head";
    case TensorRole::kNorm: return "norms";
    case TensorRole::kAttentionQ:
    case TensorRole::kAttentionK:
    case TensorRole::kAttentionV:
    case TensorRole::kAttentionO:
    case TensorRole::kAttentionQkv:
    case TensorRole::kAttentionSinks:
    case TensorRole::kAttentionQA:
    case TensorRole::kAttentionQB:
    case TensorRole::kAttentionKvA:
    case TensorRole::kAttentionKvB: return "attention";
    case TensorRole::kMlpGate:
    case TensorRole::kMlpUp:
    case TensorRole::kMlpDown:
    case TensorRole::kMlpGateUp: return "mlp";
    case TensorRole::kExpertGate:
    case TensorRole::kExpertUp:
    case TensorRole::kExpertDown:
    case TensorRole::kExpertGateUp:
    case TensorRole::kExpertBias: return "experts";
    case TensorRole::kRouter:
    case TensorRole::kRouterBias: return "router";
    case TensorRole::kSharedExpertGate:
    case TensorRole::kSharedExpertUp:
    case TensorRole::kSharedExpertDown:
    case TensorRole::kSharedExpertRouter: return "shared_experts";
    case TensorRole::kLinearAttentionIn:
    case TensorRole::kLinearAttentionOut:
    case TensorRole::kLinearAttentionConv:
    case TensorRole::kLinearAttentionState:
    case TensorRole::kLinearAttentionNorm: return "linear_attention";
    case TensorRole::kOther: break;
  }
  return "other";
}

}  // namespace alloy
