// alloy/core/units.h: the permutable units of each decoder layer, found through the architecture
// model (alloy/core/architecture.h), whatever the storage.
//
// A decoder layer computes the same function when its routed experts are reordered (with the
// router's rows), when the intermediate neurons of an MLP are reordered (gate and up rows, down
// columns, in the same order), and when its attention heads are reordered (key-value groups, and
// the query heads within each group, with the output projection's columns). Where those items lie
// depends on the layout: one tensor per expert or one stacked 3-D tensor ([E, 2I, H] or, stored
// transposed, [E, H, 2I]), gate and up apart or fused (halves, or GPT-OSS's interleaved columns),
// q/k/v apart or fused (Phi-3's qkv_proj), a gated q (Qwen3-Next: 2 x head_dim rows per head), or
// multi-head latent attention (DeepSeek: q_b_proj, kv_b_proj and o_proj per head). model_units()
// reads the roles and views of a layer's tensors and their shapes and says, for every unit, which
// slice of which tensor holds item i; the assay's alignment and perturb's permutations both work on
// these slices, so a layout added here is aligned and permuted alike.
//
// A tensor is seen as [matrices, rows, cols]: matrices = the stacked experts on axis 0 (1 for a
// tensor that is not stacked), cols = its last dimension, rows = the rest (1 for a 1-D tensor).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/architecture.h"

namespace alloy {

class Model;

// Where the items of a unit (neurons, heads, experts) lie in one tensor: element k < width of item
// i is row (or column) offset + i * stride + k of matrix `matrix` (0 when the tensor is not stacked).
struct ItemSlice {
  std::string tensor;
  int matrix = -1;          // stacked experts: the index on axis 0; -1 for a tensor that is not stacked
  bool rows = true;         // items along the rows; false: along the columns (and every 1-D tensor)
  uint64_t offset = 0;
  uint64_t stride = 1;
  uint64_t width = 1;       // rows or columns per item (head_dim for heads)
  bool signature = true;    // a weight that describes the item (false: biases, sinks, which only move)
  uint64_t index(uint64_t item, uint64_t k = 0) const { return offset + item * stride + k; }
};

// An MLP with `neurons` intermediate neurons: item i of gate and up is neuron i's input weights
// (a vector of `hidden`), item i of down its output weights.
struct MlpUnit {
  std::string name;         // "mlp", "shared_expert", "experts.<e>"
  std::string key;          // a name for the unit, "model.layers.3.mlp.experts.2." (perturb's streams)
  uint64_t neurons = 0, hidden = 0;
  ItemSlice gate, up, down;
  std::vector<ItemSlice> extra;  // neuron-indexed biases (GPT-OSS gate_up_proj_bias halves)
};

// The routed experts of a layer.
struct ExpertGroup {
  std::string key;                               // "model.layers.3.mlp."
  std::vector<MlpUnit> experts;
  std::vector<ItemSlice> router;                 // expert-indexed: router rows, router bias
  std::vector<std::string> stacked;              // tensors with the experts on axis 0
  std::vector<std::vector<std::string>> apart;   // per expert, its own tensors (same order for each)
};

// The attention heads of a layer: `heads` query heads in `kv_heads` groups of heads / kv_heads.
struct AttentionUnit {
  std::string key;                               // "model.layers.3.self_attn."
  int heads = 0, kv_heads = 0;
  std::vector<ItemSlice> q;                      // items = query heads: q rows, o columns, q bias, sinks
  std::vector<ItemSlice> kv;                     // items = key-value heads: k and v rows and biases
};

struct LayerUnits {
  int layer = -1;
  std::optional<AttentionUnit> attention;
  std::vector<MlpUnit> mlps;                     // the dense MLP and the shared expert, if any
  std::optional<ExpertGroup> experts;
  std::vector<std::string> problems;             // why a unit of the layer was not recognised
};

// Every decoder layer's units (index = layer, up to the largest layer index in the names + 1).
std::vector<LayerUnits> model_units(const ModelArchitecture& arch, const Model& model);
// The number of decoder layers by the tensor names (largest index + 1).
int named_layer_count(const ModelArchitecture& arch, const Model& model);
// The embedding matrix's name ("model.embed_tokens.weight", "model.language_model.embed_tokens...").
std::string embedding_name(const ModelArchitecture& arch, const Model& model);

// A reordering of a tensor's elements: output (m, r, c) = input (matrix[m], row[m * rows + r],
// col[m * cols + c]); an empty map is the identity.
struct TensorGather {
  uint64_t matrices = 1, rows = 1, cols = 1;
  std::vector<uint32_t> matrix, row, col;

  // The view of a tensor of `shape` ([matrices, rows, cols], see above).
  static TensorGather of(const std::vector<uint64_t>& shape, bool stacked);
  bool identity() const;
  // Output item j of the slice takes input item p[j] (within the same matrix); and likewise whole
  // matrices.
  void permute_items(const ItemSlice& slice, const std::vector<uint32_t>& p);
  void permute_matrices(const std::vector<uint32_t>& p);
  // out (numel elements) from in.
  void apply(const float* in, float* out) const;
};

}  // namespace alloy
