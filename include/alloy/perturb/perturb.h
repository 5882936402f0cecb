// alloy/perturb/perturb.h: "hide-the-merge" transforms of a model directory, with their ground truth.
//
// Someone passing a merge off as original will not leave it clean: they permute experts and
// neurons (the network computes the same function), add noise, re-quantize, train a little more, or
// stack layers. perturb_model applies one such transform to the model at IN and writes OUT, a
// valid model directory (weights in the input's dtypes, config.json, the tokenizer and generation
// files), plus OUT/alloy_perturb.json recording exactly what was applied, so that detectors can be
// scored against it. OUT is built beside itself under a temporary name and renamed into place when
// complete (nothing is left at OUT on failure); an existing non-empty OUT is refused (Error
// kOutputExists) unless output.overwrite. Inputs store BF16, F16 or F32. The three permute kinds
// work on every layout the architecture model knows (alloy/core/units.h: Llama, Mistral, Gemma 2,
// Phi-3's fused qkv/gate_up, Mixtral, Qwen2/3-MoE, Qwen3-Next's gated q, Qwen3.5's stacked experts
// under model.language_model., GPT-OSS's interleaved experts, DeepSeek's MLA heads); the other
// kinds need the tensor names of alloy/synth/synth.h's two families (real Llama and Qwen2-MoE
// checkpoints have them).
//
// Kinds (docs/robustness.md, "Transforms", has the reasoning). "Preserving" kinds compute the same
// function in exact arithmetic; in f32 the block output changes by rounding only (tested).
//   noise            W + N, N Gaussian with ||N|| = strength * ||W|| per tensor (i.e. element
//                    standard deviation strength * RMS(W)), or, with a reference model R,
//                    ||N|| = strength * ||W - R|| (tensors equal to R get none). Default 0.01.
//   reround          a quantization round trip, back to the tensor's dtype: bf16, f16, int8
//                    (per-row absmax: scale = max|row| / 127, q = nearest-even(x / scale) in
//                    [-127, 127]) or int4 (groups of 32 along the last dimension, scale =
//                    max|group| / 7, q in [-7, 7]). A 1-D tensor is one row. No strength.
//   finetune         W + a low-rank plus dense delta, exactly synth_fine_tune's (same seed: same
//                    bytes); strength = ||delta|| / ||W|| per tensor. Default 0.05.
//   permute-experts  (MoE only) per MoE layer a random permutation p of the routed experts: output
//                    expert j holds input expert p[j]'s matrices (whole tensors, or slice j of
//                    stacked ones), router row j (and router bias j) is input's p[j].
//                    Preserving. No strength.
//   permute-neurons  per layer a permutation p of the MLP's intermediate neurons: gate_proj and
//                    up_proj rows j <- rows p[j], down_proj column j <- column p[j] (wherever a
//                    layout keeps them: fused halves, interleaved columns, transposed stacks, and
//                    the gate_up bias); dense MLP, each routed expert (its own p) and the shared
//                    expert. Preserving. No strength.
//   permute-heads    per layer a permutation of the key-value groups and, within each group, of
//                    its query heads: q head h <- q head heads[h], k and v heads g <- kv_heads[g]
//                    (head_dim rows at a time, 2 x head_dim for a gated q; q/k/v biases and
//                    attention sinks too), o_proj columns in the q heads' blocks as q; fused
//                    qkv_proj in its three parts; MLA: q_b_proj and kv_b_proj rows per head (one
//                    head per group). heads[h] is always in group kv_heads[h / group size], so every
//                    query head keeps its key and value. Preserving (also under RoPE: blocks move
//                    whole). No strength.
//   rescale-neurons  per intermediate neuron i a factor c_i = strength^u, u uniform in [-1, 1]:
//                    up_proj row i times c_i, down_proj column i divided by c_i (gate_proj is left
//                    alone: SiLU is not scale-equivariant); dense MLP, experts, shared expert, on
//                    every layout of alloy/core/units.h (fused gate_up halves, stacked experts,
//                    Mixtral's w3 / w2). GPT-OSS is refused: its MLP adds 1 to the clamped up
//                    projection. Preserving. strength >= 1, default 2.
//   fold-norms       RMSNorm gains folded into the weights that read the normalised stream, the
//                    gains set to 1, by the role table of alloy/core/residual_stream.h (any
//                    family the architecture table knows): input_layernorm into the attention's
//                    readers (q/k/v, fused qkv, MLA q_a / kv_a, linear attention's in_proj),
//                    pre_feedforward_layernorm or post_attention_layernorm into the MLP's (gate/up,
//                    fused gate_up, router, experts' gate/up including stacked ones,
//                    shared expert's gate/up and shared_expert_gate), the final norm into lm_head
//                    (untied only), each along the reader's stream axis. Norms applied as (1 + w)
//                    (Gemma) and stacked experts whose stream axis the shape does not tell are
//                    refused. Preserving. No strength.
//   stack-layers     frankenmerge stacking: output layer i is input layer layer_map[i]
//                    (duplicates and any order allowed), config.json num_hidden_layers =
//                    layer_map.size(). Not preserving. No strength.
//   rotate-residual  fold-norms, then an orthogonal Q (hidden x hidden, residual_rotation()) on the
//                    residual stream, as QuaRot / SpinQuant / SliceGPT do: every tensor the role
//                    table puts on the stream has its stream axis contracted with Q (embeddings
//                    E Q, readers [out, hidden] W Q, writers [hidden, in] Q^T W, writer biases
//                    b Q, stacked experts per expert). RMSNorm commutes with Q only with unit
//                    gains, hence the fold first; a tied lm_head (whose final norm cannot be
//                    folded) is refused unless that norm is already all ones. Separate modules
//                    (vision tower, MTP head) are left alone: the text function is preserved.
//                    Preserving. No strength; --rotation random (default) or hadamard.
//
// alloy_perturb.json: {"generator": "alloy-synth", "version", "kind", "strength" (null where the
// kind has none), "seed", "function_preserving", "source" (IN's directory name), "dtype",
// "source_record" (IN's alloy_synth.json or alloy_perturb.json, when present and parseable),
// and per kind:
//   noise:            "relative_to" ("rms" | "reference"), "reference" (its directory name or null);
//   noise, reround, finetune: "tensors": [{"name", "norm" (||W||), "applied_norm" (||OUT - W||,
//                     measured on the written output)}], noise adding "noise_norm" (||N|| in f32,
//                     before rounding to the dtype) and, with a reference, "reference_norm"
//                     (||W - R||, what the noise is relative to);
//   reround:          "format", "group_size" (int4 only);
//   finetune:         "low_rank_fraction", "rank";
//   permute-experts:  "layers": [{"layer", "experts": p}] (the layers with routed experts);
//   permute-neurons:  "layers": [{"layer", "mlp": p} or {"layer", "experts": [p per expert],
//                     "shared_expert": p or null}] (a layer with both has both);
//   permute-heads:    "group_size", "layers": [{"layer", "heads": [...], "kv_heads": [...]}] (the
//                     layers with attention: a hybrid's linear-attention layers are left alone);
//   rescale-neurons:  "layers": [{"layer", "mlp": c} and/or {"experts": [c...],
//                     "shared_expert": c or null}] (permute-neurons' record: a dense layer of an
//                     MoE model has "mlp");
//   fold-norms:       "norms": {name: gains} (every folded norm), "layers": [{"layer",
//                     "input_layernorm": gains, "post_attention_layernorm" (or
//                     "pre_feedforward_layernorm"): gains}], "final_norm": gains or null (tied
//                     embeddings: left in place);
//   stack-layers:     "layer_map", "source_layers";
//   rotate-residual:  fold-norms' fields plus "rotation": {"kind": "random" | "hadamard",
//                     "hidden", "sha256" (of Q as row-major little-endian float64), "signs"
//                     (hadamard: the diagonal's +-1)}, "rotated": {"embeddings", "readers",
//                     "writers"} (tensor names), "unrotated_modules" (sub-model names).
// Permutations p read "output index j holds input index p[j]"; scales c are the factors applied to
// up_proj rows.
//
// Determinism: OUT's bytes are a function of (IN, REF, options) only, on any thread count. Random
// choices come from counter-based streams keyed by (seed, a name per tensor or per layer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "alloy/core/model.h"
#include "alloy/synth/synth.h"

namespace alloy {

enum class PerturbKind {
  kNoise,
  kReround,
  kFineTune,
  kPermuteExperts,
  kPermuteNeurons,
  kPermuteHeads,
  kRescaleNeurons,
  kFoldNorms,
  kStackLayers,
  kRotateResidual,
};
// "noise", "reround", "finetune", "permute-experts", ..., and back (nullopt for anything else).
const char* perturb_kind_name(PerturbKind kind);
std::optional<PerturbKind> perturb_kind_from_name(std::string_view name);
// Every kind, in the order above.
std::vector<PerturbKind> perturb_kinds();
// Whether the kind computes the same function as its input (in exact arithmetic).
bool perturb_preserves_function(PerturbKind kind);
// Whether the kind takes a strength, and its default (nullopt for kinds without one).
std::optional<double> perturb_default_strength(PerturbKind kind);

enum class ReroundFormat { kBf16, kF16, kInt8, kInt4 };
// "bf16", "f16", "int8", "int4", and back.
const char* reround_format_name(ReroundFormat format);
std::optional<ReroundFormat> reround_format_from_name(std::string_view name);

// rotate-residual's Q. kRandom: QR of a Gaussian matrix from (seed, "rotate-residual") with the
// signs fixed so that R has a positive diagonal (Haar-distributed). kHadamard: the randomised
// Hadamard of QuaRot, Q = H diag(s) / sqrt(n), H the Sylvester Hadamard matrix (H_ij =
// (-1)^popcount(i & j)), s_j = +-1 from the seed; n must be a power of two.
enum class ResidualRotation { kRandom, kHadamard };
const char* residual_rotation_name(ResidualRotation rotation);  // "random", "hadamard"
std::optional<ResidualRotation> residual_rotation_from_name(std::string_view name);
// Q (hidden x hidden, row-major), a function of (seed, hidden, kind) only. Throws
// Error(kInvalidArgument) for hidden < 1, or a kHadamard hidden that is not a power of two.
std::vector<double> residual_rotation(uint64_t seed, int hidden, ResidualRotation rotation);

struct PerturbOptions {
  PerturbKind kind = PerturbKind::kNoise;
  ModelOpenOptions open;  // how IN and the reference are opened (unindexed shards)
  // nullopt: the kind's default. Refused (Error kInvalidArgument naming --strength) for kinds
  // without a strength, and when out of range: noise and finetune need a finite value >= 0,
  // rescale-neurons a finite value >= 1.
  std::optional<double> strength;
  uint64_t seed = 1;
  // noise: size the noise relative to the deviation from this model (same tensor names and
  // shapes) instead of each tensor's RMS. Empty: relative to the RMS.
  std::filesystem::path reference;
  ReroundFormat format = ReroundFormat::kInt8;  // reround
  std::vector<int> layer_map;                   // stack-layers: required, each in [0, layers)
  double low_rank_fraction = 0.5;               // finetune (as FineTuneOptions)
  int rank = 8;                                 // finetune
  ResidualRotation rotation = ResidualRotation::kRandom;  // rotate-residual
  SynthOutput output;
};

// Parses "0,1,1,2,3" into a layer map; throws Error(kInvalidArgument) naming --layer-map.
std::vector<int> parse_layer_map(std::string_view text);

// Applies options.kind to the model at `in`, writes `out` (see the header comment) and returns the
// ground truth written to OUT/alloy_perturb.json. Throws Error before writing anything for an
// unusable option (naming its flag), a kind the model cannot take (permute-experts on a dense
// model, kMoe-only), a model it cannot read or a dtype it cannot store.
nlohmann::json perturb_model(const std::filesystem::path& in, const std::filesystem::path& out,
                             const PerturbOptions& options);

}  // namespace alloy
