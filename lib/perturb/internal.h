// Internals shared by the perturb_*.cpp files (see alloy/perturb/perturb.h).
//
// A transform is planned before anything is written: per output tensor, which input tensor it is
// made from and a function that transforms that tensor's values in place (float32, row-major,
// rows = shape[0], or 1 for a 1-D tensor,
// which is one row). perturb_run.cpp validates the options, asks the kind's
// planner for a PerturbPlan, then streams the tensors through their transforms into a
// ShardedWriter in a staging directory, measures the applied perturbation where the kind asks for
// it, writes config.json, the tokenizer files and alloy_perturb.json, and publishes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "alloy/core/architecture.h"
#include "alloy/core/model.h"
#include "alloy/core/residual_stream.h"
#include "alloy/core/units.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"

namespace alloy::detail {

// Transforms values[rows * cols] in place; returns extra per-tensor ground truth (or null).
using TensorTransform = std::function<nlohmann::json(float* values, uint64_t rows, uint64_t cols)>;

struct PlannedTensor {
  std::string name;           // output name
  std::string source;         // input tensor it is made from (same dtype and shape)
  TensorTransform transform;  // empty: copied unchanged
};

struct PerturbPlan {
  std::vector<PlannedTensor> tensors;
  nlohmann::json truth = nlohmann::json::object();  // the kind's fields of alloy_perturb.json
  std::optional<nlohmann::json> config;             // replaces IN's config.json when set
  // Record per tensor {"name", "norm": ||W||, "applied_norm": ||OUT - W||} (plus the transform's
  // fields) in truth["tensors"], measured on the written output.
  bool measure = false;
  // Writes the weights itself instead of streaming `tensors` (finetune).
  std::function<void(const std::filesystem::path& dir)> write_weights;
};

struct PerturbInput {
  const Model& model;
  const Model* reference = nullptr;  // noise --reference, else null
  const PerturbOptions& options;
  double strength = 0;               // resolved; 0 for kinds without one
  std::optional<Architecture> arch;  // from IN's config.json, when synth's reader understands it
  std::string arch_error;            // why arch is empty when IN has a config.json
};

// One planner per job, each in its own file.
PerturbPlan plan_value_perturbation(const PerturbInput& input);  // noise, reround, finetune
PerturbPlan plan_permutation(const PerturbInput& input);         // permute-experts/-neurons/-heads
PerturbPlan plan_rescaling(const PerturbInput& input);           // rescale-neurons
PerturbPlan plan_layer_stack(const PerturbInput& input);         // stack-layers
PerturbPlan plan_rotation(const PerturbInput& input);            // rotate-residual (rotate.cpp)

// The language model's tensors that meet the residual stream, by the role table of
// alloy/core/residual_stream.h: each with the axis that runs along the stream.
struct StreamTensor {
  std::string name;
  std::vector<uint64_t> shape;
  ResidualRole role;  // a stacked down bias (kExpertBias) is recorded as a writer
  int axis = 0;
  int layer = -1;
};
struct StreamLayout {
  ModelArchitecture arch;
  uint64_t hidden = 0;              // the embeddings' width
  std::vector<StreamTensor> tensors;  // embeddings, readers, writers (and writer biases), model order
  std::string final_norm;           // the language model's one norm outside the layers ("" if not one)
  std::string head;                 // lm_head ("" when tied)
  std::vector<std::string> submodels;  // separate modules (vision tower, MTP head): left alone
  std::set<std::string> offset_one_norms;  // norms applied as (1 + w) (Qwen3-Next, Qwen3.5)
  // The norm a reader reads the stream through ("" when there is none).
  std::string norm_of(const StreamTensor& t) const;
  // What the stored weight of `norm` is added to for its gain: 1 for a (1 + w) norm, else 0.
  float norm_offset(const std::string& norm) const;
};
// Throws Error(kInvalidArgument) naming the tensor when a stream tensor's axis cannot be told, or a
// norm normalises a writer's output (Gemma's sandwich norms, kWriterPostNorm): then folding or
// rotating would change the function.
StreamLayout stream_layout(const Model& model);
// fold-norms (rescale.cpp): every reader of a norm scaled by its gain g along the stream axis (g = w,
// or 1 + w for a (1 + w) norm), the norm set to a unit gain (1, or 0 for a (1 + w) norm); truth
// "norms" {name: g}, "layers" [{"layer", "<norm suffix>": g}], "final_norm". `layout`, when given,
// receives the layout it used.
PerturbPlan plan_fold_norms(const PerturbInput& input, StreamLayout* layout = nullptr);

// The input model's architecture (detect_architecture), or Error(kInvalidArgument) naming the
// perturbation and the config.json it needs when the model has none.
ModelArchitecture require_architecture(const PerturbInput& input);
// Throws Error(kShapeMismatch) with the layer's reason when one of `units` ("mlp", "experts",
// "attention", ...) was not recognised in layer u (alloy/core/units.h).
void require_recognised(const PerturbInput& input, const LayerUnits& u,
                        const std::vector<std::string>& units);
// The input tensor `name`, or Error(kMissingTensor) naming it and the model.
const ModelTensor& require_tensor(const Model& model, const std::string& name);
// Throws Error(kShapeMismatch) naming the tensor unless its shape is `shape`.
void require_shape(const ModelTensor& tensor, const std::vector<uint64_t>& shape);
// A float32 copy of an input tensor.
std::vector<float> load_values(const ModelTensor& tensor);
// "model.layers.L."
std::string layer_prefix(int layer);
// Every input tensor copied unchanged, in the input's order.
std::vector<PlannedTensor> identity_tensors(const Model& model);
// A plan entry per input tensor: the transform from `choose` (may be empty) for each.
std::vector<PlannedTensor> map_tensors(
    const Model& model, const std::function<PlannedTensor(const ModelTensor&)>& choose);

// Per-tensor transforms of a structural kind, keyed by output name; tensors not listed are copied.
using Overrides = std::map<std::string, PlannedTensor>;
// The plan entries for every input tensor, in the input's order: its override, else a copy.
std::vector<PlannedTensor> apply_overrides(const Model& model, const Overrides& overrides);

// Visits every MLP of layer u (the dense one, each routed expert, the shared expert) and returns
// the layer's ground-truth record: {"layer", "mlp": visit(...)} where it has a dense MLP,
// "experts": [...] and "shared_expert": ... or null where it has routed experts.
using MlpVisitor = std::function<nlohmann::json(const MlpUnit& m)>;
nlohmann::json visit_layer_mlps(const LayerUnits& u, const MlpVisitor& visit);

// Uniform random numbers for the structural transforms: splitmix64 over a key from (seed, stream
// name), so each layer's choice is independent of the order tensors are visited in.
class PerturbRng {
 public:
  PerturbRng(uint64_t seed, const std::string& stream);
  uint64_t next();
  uint64_t below(uint64_t n);  // uniform in [0, n), n >= 1 (rejection sampling, no modulo bias)
  double uniform();            // uniform in [0, 1), 53 bits
  std::vector<int> permutation(int n);  // uniform (Fisher-Yates)

 private:
  uint64_t state_;
};

// Reorders row blocks (block rows each): output block j = input block p[j]. rows = p.size() *
// block.
void permute_rows(float* values, uint64_t rows, uint64_t cols, const std::vector<int>& p,
                  uint64_t block);
// Reorders column blocks likewise: output columns of block j = input columns of block p[j].
void permute_columns(float* values, uint64_t rows, uint64_t cols, const std::vector<int>& p,
                     uint64_t block);

nlohmann::json permutation_json(const std::vector<int>& p);

}  // namespace alloy::detail
