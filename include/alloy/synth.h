// alloy/synth.h: deterministic synthetic models in the real Hugging Face layout.
//
// Tests, benchmarks and demos build their models here; nothing downloads weights. Two families:
//  - kLlama: LlamaForCausalLM names and config (dense MLP, grouped-query attention);
//  - kMoe:   Qwen2MoeForCausalLM names and config (routed experts mlp.experts.E.{gate,up,down}_proj,
//            router mlp.gate, optional shared expert mlp.shared_expert.* and mlp.shared_expert_gate).
// Models are a function of (architecture, dtype, seed) only: every element comes from a
// counter-based hash of (seed, tensor name, element index), so the bytes are identical on any
// thread count. Fine-tunes add to a base model a delta made of a low-rank part U V^T and a dense
// Gaussian part, rescaled per tensor to a chosen fraction of the tensor's norm.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "alloy/dtype.h"

namespace alloy {

enum class ModelFamily { kLlama, kMoe };

// What role a tensor plays; the assay groups its statistics by this.
enum class Component {
  kEmbedding, kLmHead, kNorm,
  kAttentionQ, kAttentionK, kAttentionV, kAttentionO,
  kMlpGate, kMlpUp, kMlpDown,
  kExpertGate, kExpertUp, kExpertDown, kRouter,
  kSharedExpertGate, kSharedExpertUp, kSharedExpertDown, kSharedExpertRouter,
};
const char* component_name(Component component);

struct Architecture {
  ModelFamily family = ModelFamily::kLlama;
  int layers = 4;
  int hidden = 64;
  int intermediate = 96;          // dense MLP width (kLlama) or shared-expert width (kMoe)
  int heads = 4;
  int kv_heads = 2;
  int vocab = 128;
  int experts = 8;                // kMoe only
  int experts_per_token = 2;      // kMoe only
  int moe_intermediate = 32;      // kMoe only: width of each routed expert
  bool shared_expert = true;      // kMoe only
  bool tie_embeddings = false;    // no lm_head.weight when true

  // Throws Error(kInvalidArgument) naming the bad field.
  void validate() const;
  int head_dim() const { return hidden / heads; }
};

struct SynthTensor {
  std::string name;
  std::vector<uint64_t> shape;
  Component component;
  int layer = -1;   // -1 outside the layers
  int expert = -1;  // routed expert index, -1 otherwise
};

// Every tensor of the architecture in the order a Hugging Face checkpoint lists them.
std::vector<SynthTensor> architecture_tensors(const Architecture& arch);
// The config.json of the architecture.
nlohmann::json architecture_config(const Architecture& arch, DType dtype);
// Reads back an architecture from a config.json written by architecture_config (or a real
// Llama / Qwen2-MoE config). Throws Error(kBadConfig) naming the missing key.
Architecture architecture_from_config(const nlohmann::json& config);
// An architecture of roughly `gigabytes` GB in `dtype` (benchmarks): realistic proportions.
Architecture architecture_for_size(ModelFamily family, double gigabytes, DType dtype);
// Classifies a tensor name of either family (component, layer, expert); false if unknown.
bool classify_tensor(const std::string& name, SynthTensor* out);

// Fills `out` with `count` pseudo-normal values (mean 0, variance 1; Irwin-Hall of four uniforms,
// tails bounded at +-3.46) for element indices [first, first + count) of the stream (seed, stream).
void synth_normal(uint64_t seed, uint64_t stream, uint64_t first, size_t count, float* out);
// A stable 64-bit id for a stream name (FNV-1a).
uint64_t synth_stream_id(const std::string& name);

struct SynthOutput {
  uint64_t shard_bytes = 5'000'000'000;
  bool overwrite = false;
};

struct BaseModelOptions {
  Architecture arch;
  DType dtype = DType::BF16;
  uint64_t seed = 1;
  SynthOutput output;
};

// Writes a base (or unrelated: just another seed) model directory: weights, config.json,
// tokenizer files, generation_config.json and alloy_synth.json (the generator's parameters).
void synth_base_model(const std::filesystem::path& out, const BaseModelOptions& options);

struct FineTuneOptions {
  double relative_delta = 0.05;     // |delta| / |base| per tensor
  double low_rank_fraction = 0.5;   // share of the delta's energy in the low-rank part (2-D tensors)
  int rank = 8;
  uint64_t seed = 2;
  SynthOutput output;
};

// Writes base + delta for every tensor of the model at `base_dir`, in the base's dtype, with the
// base's config and tokenizer files. Works on any model alloy can read.
void synth_fine_tune(const std::filesystem::path& base_dir, const std::filesystem::path& out,
                     const FineTuneOptions& options);

// OUT/base, OUT/ft_1..ft_N (fine-tunes of base, seeds seed+1000+i), OUT/unrelated_1..M (seeds
// seed+2000+i).
void synth_family(const std::filesystem::path& out, const BaseModelOptions& base, int fine_tunes,
                  int unrelated, const FineTuneOptions& fine_tune);

}  // namespace alloy
