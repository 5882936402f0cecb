// alloy/core/architecture.h: what the tensors of a model are, family by family.
//
// A family's definition is a JSON file in data/architectures/ (format in docs/architectures.md),
// compiled into the library, so the tools need no source tree. It says where the decoder layers are
// (the layer prefixes, such as "model.layers." or "model.language_model.layers."), where config.json
// keeps the language model's fields (top level, or a sub-object such as "text_config") and its layer
// count, which config entries are per-layer lists that must follow the layers when a merge stacks or
// drops them, and for every tensor its role (embedding, norm, q/k/v/o, MLP, routed expert, router,
// shared expert, linear attention, ...) and its view (how a fused or gated tensor is laid out).
// The layer entries are the union of every layer kind of the family: a hybrid model (Qwen3-Next's
// linear-attention and full-attention layers) lists both, each optional, and a layer holds those it
// has. Separate modules (a vision tower, a multi-token-prediction head) are sub-models with their own
// prefix: their tensors are never counted as decoder layers.
//
// detect_architecture() finds the definition of a model from config.json ("architectures", then
// "model_type", also inside the text sub-config) and checks it against the tensor names; a model that
// matches no definition (or whose tensors are not where its definition says) falls back to inference
// from the names: the prefix "<P>layers.<i>." that holds the most tensors is the decoder stack, and
// notice() says so.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace alloy {

class Model;

// What a tensor does. Stable names ("attention.q", "experts.gate_up", ...) via role_name().
enum class TensorRole {
  kEmbedding, kLmHead, kNorm,
  kAttentionQ, kAttentionK, kAttentionV, kAttentionO, kAttentionQkv, kAttentionSinks,
  kAttentionQA, kAttentionQB, kAttentionKvA, kAttentionKvB,  // multi-head latent attention (DeepSeek)
  kMlpGate, kMlpUp, kMlpDown, kMlpGateUp,
  kExpertGate, kExpertUp, kExpertDown, kExpertGateUp, kExpertBias,
  kRouter, kRouterBias,
  kSharedExpertGate, kSharedExpertUp, kSharedExpertDown, kSharedExpertRouter,
  kLinearAttentionIn, kLinearAttentionOut, kLinearAttentionConv, kLinearAttentionState, kLinearAttentionNorm,
  kOther,
};
const char* role_name(TensorRole role);
// The role of a name as role_name() writes it; false for an unknown name.
bool role_from_name(std::string_view name, TensorRole* out);

// How a tensor's storage maps onto its role's logical matrices.
enum class TensorView {
  kPlain,
  kNormOffsetOne,           // a norm applied as (1 + w) (Gemma)
  kGatedQ,                  // q_proj rows per head: [query (head_dim) | output gate (head_dim)] (Qwen3-Next)
  kFusedQkv,                // rows [q | k | v] (Phi-3 qkv_proj)
  kFusedGateUp,             // rows [gate | up] (Phi-3 gate_up_proj)
  kExperts,                 // routed experts stacked on axis 0: [E, out, in] or [E, in, out]
  kExpertsFusedGateUp,      // [E, 2I, H], rows per expert [gate | up]
  kExpertsInterleavedGateUp,// [E, H, 2I], columns interleaved gate, up, gate, up (GPT-OSS)
};
const char* view_name(TensorView view);
bool view_from_name(std::string_view name, TensorView* out);

// One tensor entry of a definition. Layer entries are relative to the layer prefix and may hold
// "{e}" for a routed expert's index ("mlp.experts.{e}.gate_proj.weight").
struct TensorDef {
  std::string name;
  TensorRole role = TensorRole::kOther;
  TensorView view = TensorView::kPlain;
  bool optional = false;      // absent in some layers (hybrids) or some checkpoints (lm_head when tied)
  std::string tied_to;        // lm_head: the tensor it falls back to when absent
};

// A config.json entry that describes the layers one by one and must be remapped with them.
struct LayerListDef {
  enum class Kind {
    kPerLayer,     // one entry per layer: layer_types, no_rope_layers, layers_block_type
    kIndices,      // a list of layer indices: mlp_only_layers, moe_layers
    kDensePrefix,  // an integer k: layers below k are dense (DeepSeek's first_k_dense_replace)
  };
  std::string key;
  Kind kind = Kind::kPerLayer;
};

// A separate module of the checkpoint (vision tower, MTP head): its tensors start with `prefix`.
struct SubModelDef {
  std::string name;             // "vision", "mtp"
  std::string prefix;           // "model.visual.", "mtp."
  std::string layer_prefix;     // its own blocks, "model.visual.blocks." (may be empty)
  std::string layer_count_key;  // dotted config path, "vision_config.depth" (may be empty)
  // mergekit's module name for it ("vision_tower", "multi_modal_projector"): a recipe's `modules:`
  // merges it on its own. Empty: it goes with the language model (an MTP head).
  std::string module;
};

struct ArchitectureDef {
  std::string family;                      // "qwen3_next"; the file's name
  std::string title;                       // "Qwen3-Next"
  std::vector<std::string> architectures;  // config.json "architectures" values
  std::vector<std::string> model_types;    // config.json "model_type" values
  std::string text_config;                 // "" or the sub-object holding the language model's fields
  std::vector<std::string> layer_prefixes; // tried in order; the first that names tensors is used
  std::string layer_count_key = "num_hidden_layers";  // inside text_config when that is set
  std::string layer_types_key;             // a per-layer list naming each layer's kind, if any
  std::vector<LayerListDef> layer_lists;
  std::vector<TensorDef> pre, layer, post;
  std::vector<SubModelDef> submodels;
  std::string notes;                       // what alloy does not support yet for this family

  // The language model's module name in a recipe's `modules:`, mergekit's: "text_decoder" in a
  // family with other modules (a vision tower), "default" otherwise.
  std::string text_module() const;
  // The recipe module names of the family: text_module() first, then the sub-models' modules in
  // definition order, each once.
  std::vector<std::string> module_names() const;
};

// Parses one definition file's JSON; throws Error(kBadConfig) naming `label` and the bad field.
ArchitectureDef parse_architecture_def(const nlohmann::json& json, const std::string& label);
// Every definition compiled into the library (data/architectures/*.json), by family name.
const std::vector<ArchitectureDef>& architecture_definitions();
const ArchitectureDef* find_architecture_def(std::string_view family);

// Where a tensor sits and what it does.
struct TensorPlace {
  std::string submodel;    // "" for the language model, else the sub-model's name
  int layer = -1;          // decoder (or sub-model block) index, -1 outside the layers
  int expert = -1;         // routed expert index from a name template, -1 otherwise
  std::string suffix;      // the name after "<layer prefix><layer>."
  TensorRole role = TensorRole::kOther;
  TensorView view = TensorView::kPlain;
  bool known = false;      // matched an entry of the definition
};

// The architecture of one model: its definition (or inference) applied to its config and names.
class ModelArchitecture {
 public:
  const ArchitectureDef* definition() const { return definition_; }  // null when inferred
  std::string family() const { return definition_ ? definition_->family : "unknown"; }
  bool inferred() const { return definition_ == nullptr; }
  // Why the architecture was inferred from names (empty when a definition matched).
  const std::string& notice() const { return notice_; }
  const std::string& layer_prefix() const { return layer_prefix_; }
  // The config.json object holding the language model's fields: "" (top level) or "text_config".
  const std::string& text_config() const { return text_config_; }
  int layer_count() const { return layer_count_; }
  // The tensor suffixes of layer `layer` in the model's order (empty beyond the model's layers).
  const std::vector<std::string>& layer_suffixes(int layer) const;
  // Each layer's kind: the config's layer_types list when it has one of the right length, else
  // derived from the tensors ("linear_attention", "full_attention", "attention", "mamba", ...).
  const std::vector<std::string>& layer_types() const { return layer_types_; }
  // The token mixer of a layer from its tensors: "attention", "linear_attention", "mamba", "other"
  // or "missing" (no tensors). Layers of different mixers cannot be merged with each other.
  std::string layer_mixer(int layer) const;

  // "<prefix><i>.<suffix>" -> (i, suffix); false for a tensor outside the decoder layers.
  bool split_layer(std::string_view name, int* layer, std::string* suffix) const;
  std::string layer_tensor(int layer, const std::string& suffix) const {
    return layer_prefix_ + std::to_string(layer) + "." + suffix;
  }
  TensorPlace classify(std::string_view name) const;
  // The output projection's name ("lm_head.weight", "language_model.lm_head.weight").
  std::string lm_head() const;
  // The tensor an absent `name` falls back to (lm_head -> the embeddings), or "".
  std::string tied_to(std::string_view name) const;
  // The language model's part of config.json (the text sub-config, or the whole object).
  const nlohmann::json& text_config_of(const nlohmann::json& config) const;

  // {"family", "title", "inferred", "notice", "layer_prefix", "text_config", "layers",
  //  "layer_types": {kind: count}, "experts", "fused": [role names], "tied_embeddings",
  //  "submodels": {name: tensors}, "unknown_tensors"}
  nlohmann::json summary() const;

 private:
  friend ModelArchitecture detect_architecture(const nlohmann::json& config,
                                               const std::vector<std::string>& names);
  const ArchitectureDef* definition_ = nullptr;
  std::string notice_;
  std::string layer_prefix_ = "model.layers.";
  std::string text_config_;
  int layer_count_ = 0;
  std::vector<std::vector<std::string>> suffixes_;
  std::vector<std::string> layer_types_;
  nlohmann::json summary_;
};

// The architecture of a model from its config.json and tensor names (in the model's order).
ModelArchitecture detect_architecture(const nlohmann::json& config, const std::vector<std::string>& names);
ModelArchitecture detect_architecture(const Model& model);

// "<prefix><digits>.<rest>" -> (digits, rest), at most 6 digits; false for any other name.
bool split_indexed(std::string_view name, std::string_view prefix, int* index, std::string* rest);

// Reads a dotted path ("text_config.num_hidden_layers") in a JSON object; null when absent.
const nlohmann::json* json_path(const nlohmann::json& object, std::string_view dotted);

}  // namespace alloy
