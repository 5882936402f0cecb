// alloy/synth/synth.h: deterministic synthetic models in the real Hugging Face layout.
//
// Tests, benchmarks and demos build their models here; nothing downloads weights. Two families:
//  - kLlama: LlamaForCausalLM names and config (dense MLP, grouped-query attention);
//  - kMoe:   Qwen2MoeForCausalLM names and config (routed experts mlp.experts.E.{gate,up,down}_proj,
//            router mlp.gate [experts, hidden], optional shared expert mlp.shared_expert.* and
//            mlp.shared_expert_gate [1, hidden]).
// A model directory holds the weights (model.safetensors, or shards and an index), config.json,
// tokenizer.json (a WordLevel tokenizer over the vocabulary), tokenizer_config.json,
// generation_config.json, and alloy_synth.json: the generator's parameters (ground truth for tests
// and forensics). Directories are built beside OUT under a temporary name and renamed into place
// when complete; an existing non-empty OUT is refused (Error kOutputExists) unless overwrite.
//
// Determinism: a base model is a function of (architecture, dtype, seed) only. Every element comes
// from a counter-based generator keyed by (seed, stream, element index), where the stream is a hash
// of the tensor name (lib/synth/rng.cpp documents the exact recipe): the same bytes on any thread
// count and any platform, and any chunk of any tensor can be generated independently.
//
// Initial statistics (base_init): embeddings and lm_head N(0, 0.02^2); norms N(1, 0.05^2); every
// other matrix N(0, 1/fan_in), fan_in = its last dimension (in_features).
//
// Fine-tunes read the base with Model::open (so any model alloy reads can be fine-tuned, and a
// fine-tune of a fine-tune works) and add, per tensor, delta = a * D + b * L where D is dense
// Gaussian noise and L = U V^T / sqrt(rank) with U [rows, rank], V [cols, rank] Gaussian (2-D
// tensors only; 1-D tensors get D alone). a and b are chosen so that ||b L||^2 / ||delta||^2 equals
// the low-rank fraction (up to the tiny overlap <D, L>) and ||delta|| = relative_delta * ||base||
// exactly in float32 (before rounding to the base's dtype). D, U and V come from streams of the
// fine-tune's seed that are distinct from the base's streams, so the seed may equal the base's.
//
// Beside the two original families, named families reproduce real checkpoints' layouts (exact
// tensor names, shapes and config.json fields, lib/synth/layouts.cpp) at the Architecture's sizes:
// mistral, gemma2 (always tied), phi3 (fused qkv_proj and gate_up_proj), mixtral
// (block_sparse_moe.experts.E.w1/w2/w3; routed experts of moe_intermediate), qwen3 (q/k norms),
// qwen3_moe, qwen3_next (every 4th layer gated full attention, the others Gated DeltaNet linear
// attention; MoE with a shared expert; an MTP head mtp.*), qwen3_5_moe (the same under
// model.language_model. with text_config, fused 3-D experts, a two-block vision tower
// model.visual.* and mtp.*), gpt_oss (fused 3-D experts with interleaved gate/up, biases, sinks,
// router bias) and deepseek_v3 (MLA attention; layer 0 dense, the others routed + shared experts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/dtype.h"

namespace alloy {

enum class ModelFamily {
  kLlama, kMoe,
  kMistral, kGemma2, kPhi3, kMixtral, kQwen3, kQwen3Moe, kQwen3Next, kQwen35Moe, kGptOss, kDeepseekV3,
};
// "llama", "moe", "mistral", "gemma2", "phi3", "mixtral", "qwen3", "qwen3_moe", "qwen3_next",
// "qwen3_5_moe", "gpt_oss", "deepseek_v3", and back (nullopt for anything else).
const char* family_name(ModelFamily family);
std::optional<ModelFamily> family_from_name(std::string_view name);
// Every family's name, in enum order.
std::vector<std::string> family_names();

// What role a tensor plays. Forensics groups statistics by it; perturbations select by it.
enum class Component {
  kEmbedding, kLmHead, kNorm,
  kAttentionQ, kAttentionK, kAttentionV, kAttentionO,
  kMlpGate, kMlpUp, kMlpDown,
  kExpertGate, kExpertUp, kExpertDown, kRouter,
  kSharedExpertGate, kSharedExpertUp, kSharedExpertDown, kSharedExpertRouter,
};
// Stable short name, e.g. "attention.q", "experts.down", "shared_expert.router".
const char* component_name(Component component);

struct Architecture {
  ModelFamily family = ModelFamily::kLlama;
  int layers = 4;
  int hidden = 64;
  int intermediate = 96;          // dense MLP width (kLlama) or shared-expert width (kMoe)
  int heads = 4;
  int kv_heads = 2;
  int vocab = 128;
  int experts = 8;                // families with routed experts only
  int experts_per_token = 2;      // families with routed experts only
  int moe_intermediate = 32;      // families with routed experts only: width of each routed expert
  bool shared_expert = true;      // kMoe only (qwen3_next / qwen3_5_moe always have one)
  bool tie_embeddings = false;    // no lm_head.weight when true
  bool attention_bias = false;    // self_attn.{q,k,v}_proj.bias (real Qwen2-MoE checkpoints have them)

  // Throws Error(kInvalidArgument) naming the bad field.
  void validate() const;
  int head_dim() const { return hidden / heads; }
};

struct SynthTensor {
  std::string name;
  std::vector<uint64_t> shape;
  Component component = Component::kNorm;
  int layer = -1;   // -1 outside the layers
  int expert = -1;  // routed expert index, -1 otherwise
  bool offset_one = false;  // a norm applied as (1 + w): stored around 0 (Gemma 2, Qwen3-Next, Qwen3.5)
  uint64_t numel() const;
};

// Every tensor of the architecture in the order a Hugging Face checkpoint lists them.
std::vector<SynthTensor> architecture_tensors(const Architecture& arch);
// Total bytes of the weights in `dtype`.
uint64_t architecture_bytes(const Architecture& arch, DType dtype);
// The config.json of the architecture.
nlohmann::json architecture_config(const Architecture& arch, DType dtype);
// Reads back an architecture from a config.json written by architecture_config (or a real
// Llama / Qwen2-MoE config). Throws Error(kBadConfig) naming the missing key. The named families'
// configs are read as llama or moe (what the perturb transforms understand).
Architecture architecture_from_config(const nlohmann::json& config);
// The architecture's parameters as alloy_synth.json records them.
nlohmann::json architecture_json(const Architecture& arch);
// An architecture of about `gigabytes` GB (1e9 bytes) in `dtype`, for benchmarks, with realistic
// proportions: hidden from a ladder (256 ... 8192, the largest that still gets hidden/128 layers),
// head_dim 64 or 128, kv_heads = heads/4, intermediate 8/3 hidden (kMoe: routed experts 11/16
// hidden, shared expert 4x that), vocab 32000, then as many layers as reach the size. Family,
// experts, experts_per_token, shared_expert and tie_embeddings are taken from `like`. The smallest
// model it makes is one layer of hidden 256 (about 35 MB in bf16). Throws for gigabytes <= 0.
Architecture architecture_for_size(const Architecture& like, double gigabytes, DType dtype);
// Classifies a tensor name of either family (component, layer, expert); false if unknown.
bool classify_tensor(const std::string& name, SynthTensor* out);

// A stable 64-bit id for a stream name (FNV-1a of the bytes).
uint64_t synth_stream_id(std::string_view name);
// Writes out[i] = mean + std_dev * z[first + i] for i < count, where z is the standard normal
// stream (seed, stream) (Box-Muller; |z| <= 5.77). Parallel; bit-identical for any thread count,
// and for any split of [first, first + count) into calls.
void synth_normal(uint64_t seed, uint64_t stream, uint64_t first, size_t count, float* out,
                  float std_dev = 1.0f, float mean = 0.0f);

// The initial distribution of a base tensor (see the header comment).
struct InitStats {
  float mean = 0.0f;
  float std_dev = 1.0f;
};
InitStats base_init(const SynthTensor& tensor);
// Regenerates elements [first, first + count) of a base tensor, in float32 before rounding to the
// model's dtype (round_to gives the stored values). Parallel.
void base_tensor_values(const SynthTensor& tensor, uint64_t seed, uint64_t first, size_t count, float* out);

struct SynthOutput {
  uint64_t shard_bytes = 5'000'000'000;  // budget per safetensors shard
  bool overwrite = false;                // replace an existing non-empty output directory
  // Called as each tensor is handed to the writer with (bytes so far, the model's bytes); may be
  // empty. A family calls it from 0 again for each model it writes.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct BaseModelOptions {
  Architecture arch;
  DType dtype = DType::BF16;  // BF16, F16 or F32
  uint64_t seed = 1;
  SynthOutput output;
};

// Writes a base model directory (an "unrelated" model is just a base with another seed).
void synth_base_model(const std::filesystem::path& out, const BaseModelOptions& options);

struct FineTuneOptions {
  double relative_delta = 0.05;     // ||delta|| / ||base|| per tensor, >= 0
  double low_rank_fraction = 0.5;   // share of the delta's energy in the low-rank part, in [0, 1]
  int rank = 8;                     // rank of the low-rank part (capped by the tensor's shape)
  uint64_t seed = 2;
  // Correlated siblings (a hard null for the assay): with sibling_correlation > 0, each tensor's
  // delta is sqrt(1 - rho) * own + sqrt(rho) * shared (both of norm ||delta||), where `shared` is a
  // dense normal direction drawn from shared_seed and rho is drawn per tensor, uniform in
  // [0, sibling_correlation], from shared_seed and the tensor's name. Fine-tunes with the same
  // shared_seed then have deltas whose cosine is about rho: it changes from tensor to tensor, as
  // for two fine-tunes trained on similar data. 0 (the default) leaves the bytes as before.
  double sibling_correlation = 0;   // in [0, 1)
  uint64_t shared_seed = 0;
  SynthOutput output;
};

// Writes base + delta for every tensor of the model at `base_dir`, each in the base tensor's dtype,
// with the base's config.json and tokenizer/generation files copied. Throws Error naming the base
// for a model it cannot read or a dtype it cannot store (F8).
void synth_fine_tune(const std::filesystem::path& base_dir, const std::filesystem::path& out,
                     const FineTuneOptions& options);

// OUT/base; OUT/ft_1..ft_N, fine-tunes of base with `fine_tune`'s parameters and seeds
// base.seed + 1000 + i; OUT/unrelated_1..M, bases with seeds base.seed + 2000 + i; and
// OUT/alloy_synth.json listing the members and how each was made. The whole of OUT appears at once.
void synth_family(const std::filesystem::path& out, const BaseModelOptions& base, int fine_tunes,
                  int unrelated, const FineTuneOptions& fine_tune);

class Model;
namespace detail {
// Writes the weights of a fine-tune of `base` (base + delta per tensor, as synth_fine_tune
// describes, in each tensor's dtype) into the existing directory `dir`: the shards and the index,
// nothing else. `options` must already be valid; only relative_delta, low_rank_fraction, rank,
// seed and output.shard_bytes are read. Used by synth_fine_tune and perturb's finetune kind.
void write_fine_tune_weights(const Model& base, const std::filesystem::path& dir,
                             const FineTuneOptions& options);
}  // namespace detail

}  // namespace alloy
