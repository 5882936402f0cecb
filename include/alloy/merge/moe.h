// alloy/merge/moe.h: a mixture of experts assembled from dense models, as mergekit-moe does.
//
// The recipe is mergekit-moe's YAML (docs/moe.md): `base_model` gives the attention, norms,
// embeddings and output head; each entry of `experts` gives one routed expert, the MLP of its
// `source_model` in every layer; `shared_experts` (Qwen2-MoE only, exactly one) gives the shared
// expert. Each layer's router gets one row per expert, made by `gate_mode`:
//   random          N(0, 1) per element (mergekit: torch.randn)
//   uniform_random  U(-1/sqrt(H), 1/sqrt(H)) (mergekit: torch.nn.Linear's default initialisation)
//   hidden          (also hidden_avg, hidden_last) the base model's hidden states for the expert's
//                   prompts: per layer, mean over the positive prompts minus the mean over the
//                   negative ones, divided by its L2 norm (at least 1e-8). alloy runs no model, so the
//                   hidden states come precomputed in a safetensors file (MoeOptions::hidden_states;
//                   its tensor names and shapes are in docs/moe.md)
//   cheap_embed     refused: it needs the base's tokenizer run on the prompts, which alloy lacks
// The random modes are deterministic: element i of layer l's router comes from a counter-based
// generator keyed by (seed, l, i), the same bytes on any thread count.
//
// Outputs: Mixtral (MixtralForCausalLM: block_sparse_moe.experts.E.w1/w2/w3, block_sparse_moe.gate),
// Qwen2-MoE (Qwen2MoeForCausalLM: mlp.experts.E.{gate,up,down}_proj, mlp.gate, mlp.shared_expert.*,
// mlp.shared_expert_gate) and Qwen3-MoE (Qwen3MoeForCausalLM: mlp.experts.E.*, mlp.gate), chosen
// from the inputs' model_type as mergekit chooses (Mixtral first), or named by `architecture`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/merge/recipe.h"

namespace alloy {

enum class MoeGateMode { kHidden, kHiddenAvg, kHiddenLast, kCheapEmbed, kRandom, kUniformRandom };
const char* moe_gate_mode_name(MoeGateMode mode);

enum class MoeArchitecture { kMixtral, kQwen2Moe, kQwen3Moe };
// "Mixtral", "Qwen MoE", "Qwen3 MoE" (mergekit's names, which `architecture:` prefixes).
const char* moe_architecture_name(MoeArchitecture arch);

struct MoeExpert {
  std::string source_model;
  std::vector<std::string> positive_prompts, negative_prompts;
  std::optional<double> noise_scale;     // adds noise_scale * N(0, 1) to each of its MLP tensors
  std::optional<double> residual_scale;  // multiplies its down_proj
  RecipePosition position;               // of the entry, for errors
};

struct MoeRecipe {
  std::string label;  // file name, for errors
  std::string text;   // as given (written to the output as mergekit_moe_config.yml)
  std::string base_model;
  RecipePosition base_position;
  std::vector<MoeExpert> experts;
  std::vector<MoeExpert> shared_experts;
  MoeGateMode gate_mode = MoeGateMode::kHidden;  // mergekit's default
  std::optional<DType> dtype;
  int experts_per_token = 2;
  std::optional<std::string> architecture;
  RecipePosition architecture_position;
};

// Parses and checks a recipe (mergekit's is_bad_config rules included); throws Error(kRecipe)
// "FILE:LINE:COLUMN: ..." naming the offending entry. `allow_all_same` is mergekit-moe's
// --i-understand-this-is-not-useful-without-training.
MoeRecipe parse_moe_recipe(const std::string& text, const std::string& label, bool allow_all_same = false);
MoeRecipe load_moe_recipe(const std::filesystem::path& path, bool allow_all_same = false);

struct MoeOptions {
  std::filesystem::path out_dir;
  std::filesystem::path base_dir;          // relative model names resolve here (default: cwd)
  std::filesystem::path hidden_states;     // gate_mode hidden*: the precomputed hidden states
  uint64_t seed = 0;                       // random gate modes and noise_scale
  uint64_t shard_bytes = 5'000'000'000;
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool overwrite = false;
  bool dry_run = false;                    // check everything, write nothing
  // Called after each tensor with (output bytes written, total output bytes); may be empty
  // (the tool draws alloy/core/progress.h's bar with it).
  std::function<void(uint64_t, uint64_t)> progress;
};

struct MoeResult {
  MoeArchitecture architecture = MoeArchitecture::kMixtral;
  size_t tensors = 0;
  uint64_t output_bytes = 0;
  nlohmann::json config;                   // the output's config.json
  std::vector<std::string> tensor_names;   // in the order written
  std::vector<std::string> notices;        // what the user should hear (deviations, warnings)
};

// Builds the MoE model into options.out_dir (staged, renamed into place when complete), one tensor
// at a time. Throws Error naming the model, tensor or recipe line that is wrong.
MoeResult build_moe(const MoeRecipe& recipe, const MoeOptions& options);

// The router rows of gate modes random / uniform_random: [layers, rows, hidden], float64 values
// before rounding to the output dtype. `stream` separates the routed router (0) from the shared
// expert gate (1).
std::vector<double> moe_random_gate(MoeGateMode mode, uint64_t seed, uint64_t stream, int layers, int rows,
                                    int hidden);

}  // namespace alloy
