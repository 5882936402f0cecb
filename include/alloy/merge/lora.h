// alloy/merge/lora.h: PEFT LoRA adapters, applied to a model before a merge (`model: base+adapter`
// in a recipe) and extracted from a fine-tune by truncated SVD (alloy-extract-lora).
//
// An adapter is a directory with adapter_config.json and adapter_model.safetensors, in PEFT's
// format (peft/tuners/lora): for each adapted module M of the base model (a linear layer, or an
// embedding), the file holds
//   base_model.model.M.lora_A.weight   [r, in]    and  base_model.model.M.lora_B.weight  [out, r]
// (an embedding: base_model.model.M.lora_embedding_A [r, vocab], ...lora_embedding_B [dim, r]),
// and the adapted weight of tensor "M.weight" is
//   W' = W + scale * B A          (an embedding, or fan_in_fan_out: W' = W + scale * (B A)^T)
//   scale = lora_alpha / r,  or lora_alpha / sqrt(r) with use_rslora.
// Anything else an adapter may ask for (DoRA, modules_to_save, rank_pattern / alpha_pattern,
// trained biases, another peft_type) is refused with an error that says so, never ignored.
// docs/methods.md (LoRA) has the math, docs/recipes.md the recipe syntax.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/model.h"

namespace alloy {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";

// One adapted module: the base tensor it changes and its two factors.
struct LoraModule {
  std::string module;            // e.g. "model.layers.0.self_attn.q_proj"
  std::string tensor;            // the base tensor it changes: module + ".weight"
  const TensorInfo* a = nullptr; // lora_A [r, in] (lora_embedding_A [r, vocab])
  const TensorInfo* b = nullptr; // lora_B [out, r] (lora_embedding_B [dim, r])
  bool transposed = false;       // the change is (B A)^T: an embedding, or fan_in_fan_out
  std::vector<uint64_t> shape;   // the shape of the change, which the base tensor must have
};

class LoraAdapter {
 public:
  // Opens and validates an adapter directory: its config (every field alloy reads, and the refusal
  // of those it does not support) and its tensors (names, 2-D shapes, ranks, both factors of each
  // module). Throws Error(kNotAModel) for a missing file, Error(kBadConfig) for a config or a
  // tensor set that alloy cannot apply faithfully, each naming the file and the field or tensor.
  static std::unique_ptr<LoraAdapter> open(const std::filesystem::path& dir);

  const std::filesystem::path& path() const { return path_; }
  uint64_t rank() const { return rank_; }
  double alpha() const { return alpha_; }
  bool use_rslora() const { return use_rslora_; }
  // lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
  double scale() const { return scale_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  // The module that changes base tensor `tensor`, or null.
  const LoraModule* find(std::string_view tensor) const;
  // The adapter's files (config and weights), for provenance.
  std::vector<std::filesystem::path> files() const;

  // Checks every module against the base model: the tensor exists (else kMissingTensor), its shape
  // is the change's (else kShapeMismatch) and its dtype converts to and from float32; each message
  // names the tensor and the adapter.
  void check_against(const Model& base) const;

  // values (the base tensor as float32, row-major, module.shape) += scale * change, where the
  // change is B A or (B A)^T; each element summed over the rank in a fixed order, so the result
  // does not depend on the thread count.
  void add_change(const LoraModule& module, float* values) const;

  // The base tensor's bytes (dtype `dtype`, module.shape) replaced by those of W + scale * change,
  // computed in float32 and rounded once to `dtype`; `scratch` holds numel floats. A value that
  // `dtype` cannot hold is Error(kNonFinite) naming the tensor.
  void patch(const LoraModule& module, DType dtype, uint8_t* bytes, float* scratch) const;

 private:
  std::filesystem::path path_;
  std::unique_ptr<SafetensorsFile> weights_;
  uint64_t rank_ = 8;
  double alpha_ = 8;
  bool use_rslora_ = false;
  double scale_ = 1;
  std::vector<LoraModule> modules_;
  std::unordered_map<std::string, size_t> by_tensor_;
};

// A model reference of a recipe, "MODEL" or "MODEL+ADAPTER" (mergekit's syntax: split at the one
// '+'); a name with more than one '+' is Error(kRecipe). `adapter` is empty without one.
struct ModelReference {
  std::string model;
  std::string adapter;
};
ModelReference parse_model_reference(const std::string& name);

// Extraction (alloy-extract-lora): a rank-`rank` adapter whose change approximates FINETUNED -
// BASE for every 2-D tensor of both models that differs, by truncated SVD.
struct LoraExtractOptions {
  uint64_t rank = 16;
  bool embeddings = false;   // also embed_tokens (as lora_embedding_A/B) and lm_head
  // The SVD: exact (Eigen's BDCSVD in double precision) when min(out, in) <= exact_limit, else
  // randomized (Halko, Martinsson and Tropp 2011: rank + oversample Gaussian probes from a fixed
  // seed, power_iterations subspace iterations, then the exact SVD of the small projection).
  uint64_t exact_limit = 1024;
  uint64_t oversample = 10;
  int power_iterations = 4;
  DType dtype = DType::F32;  // of the written factors
  bool overwrite = false;
};

struct LoraExtractModule {
  std::string module;
  std::vector<uint64_t> shape;
  uint64_t rank = 0;              // min(requested rank, out, in)
  double delta_norm = 0;          // ||W_ft - W_base||_F
  double residual_norm = 0;       // ||W_ft - W_base - B A||_F (factors as written)
  double discarded_energy = 0;    // sqrt(sum of the discarded squared singular values) (exact SVD)
  bool exact = true;              // BDCSVD, not randomized
};

struct LoraExtractResult {
  std::vector<LoraExtractModule> modules;
  // Tensors not extracted, one sentence each: shapes that differ, not 2-D, absent from one model,
  // identical in both, embeddings without `embeddings`.
  std::vector<std::string> skipped;
};

// Writes OUT (a directory: adapter_config.json, adapter_model.safetensors) through a staging
// directory renamed into place when complete. Throws Error naming the model or tensor on failure.
LoraExtractResult extract_lora(const std::filesystem::path& base, const std::filesystem::path& finetuned,
                               const std::filesystem::path& out, const LoraExtractOptions& options);

}  // namespace alloy
