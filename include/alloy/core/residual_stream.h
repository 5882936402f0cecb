// alloy/core/residual_stream.h: how each tensor role meets the residual stream, one table for the
// transforms that act on the stream (alloy-synth perturb fold-norms and rotate-residual) and the
// assay stages that undo them (lib/assay/gains.cpp, lib/assay/rotation.cpp).
//
// A reader multiplies the normalised stream (through the attention-input norm, the MLP-input norm
// or the final norm); a writer adds its output to the stream; the embeddings' rows are stream
// vectors. Folding a norm gain g scales every reader of that norm along its hidden axis; rotating
// the stream by an orthogonal Q contracts the hidden axis of every embedding, reader and writer
// (and writer bias) with Q: new[.., j, ..] = sum_i old[.., i, ..] Q[i, j], i.e. W Q for a reader
// [out, hidden], Q^T W for a writer [hidden, in], b Q for a writer's bias [hidden].
// The table is in docs/assay.md, "Residual-stream roles".
#pragma once

#include <cstdint>
#include <vector>

#include "alloy/core/architecture.h"

namespace alloy {

enum class ResidualUse { kNone, kEmbedding, kReads, kWrites };
enum class ResidualNorm { kNone, kAttentionInput, kMlpInput, kFinal };

struct ResidualRole {
  ResidualUse use = ResidualUse::kNone;
  ResidualNorm norm = ResidualNorm::kNone;  // the norm a reader reads through
};

// The table. Norms themselves, biases of readers, attention sinks, the inner projections of latent
// attention (q_b, kv_b) and of linear attention (conv, state, inner norm) do not touch the stream.
// kExpertBias is resolved by residual_axis() (a down bias writes, a gate/up bias does not).
constexpr ResidualRole residual_role(TensorRole role) {
  using R = TensorRole;
  switch (role) {
    case R::kEmbedding: return {ResidualUse::kEmbedding, ResidualNorm::kNone};
    case R::kLmHead: return {ResidualUse::kReads, ResidualNorm::kFinal};
    case R::kAttentionQ:
    case R::kAttentionK:
    case R::kAttentionV:
    case R::kAttentionQkv:
    case R::kAttentionQA:
    case R::kAttentionKvA:
    case R::kLinearAttentionIn: return {ResidualUse::kReads, ResidualNorm::kAttentionInput};
    case R::kAttentionO:
    case R::kLinearAttentionOut:
    case R::kMlpDown:
    case R::kExpertDown:
    case R::kSharedExpertDown: return {ResidualUse::kWrites, ResidualNorm::kNone};
    case R::kMlpGate:
    case R::kMlpUp:
    case R::kMlpGateUp:
    case R::kExpertGate:
    case R::kExpertUp:
    case R::kExpertGateUp:
    case R::kRouter:
    case R::kSharedExpertGate:
    case R::kSharedExpertUp:
    case R::kSharedExpertRouter: return {ResidualUse::kReads, ResidualNorm::kMlpInput};
    default: return {};
  }
}

inline constexpr int kNoResidualAxis = -1;       // the tensor does not touch the stream
inline constexpr int kUnknownResidualAxis = -2;  // it does, but its shape does not say along which axis

// The axis of a tensor (role, view, shape) that runs along the residual stream of width `hidden`.
// Readers: the last axis of a 2-D matrix, [out, hidden]; their 1-D biases do not touch the stream.
// Stacked experts: [E, 2I, H] (kExpertsFusedGateUp) axis 2, [E, H, 2I] (kExpertsInterleavedGateUp,
// GPT-OSS) axis 1; kExperts is [E, out, in] or [E, in, out], told apart by which axis is `hidden`
// (unknown when both or neither are). Writers: [hidden, in] axis 0, a bias [hidden] axis 0,
// stacked biases [E, hidden] axis 1. Embeddings [vocab, hidden] axis 1.
inline int residual_axis(TensorRole role, TensorView view, const std::vector<uint64_t>& shape, uint64_t hidden) {
  const size_t n = shape.size();
  const auto is = [&](size_t axis) { return axis < n && shape[axis] == hidden; };
  if (role == TensorRole::kExpertBias) {
    // [E, hidden] of a down projection (view kExperts) writes; a gate/up bias is inside the expert.
    if (view == TensorView::kExperts && n == 2) return is(1) ? 1 : kUnknownResidualAxis;
    return kNoResidualAxis;
  }
  const ResidualRole r = residual_role(role);
  if (r.use == ResidualUse::kNone) return kNoResidualAxis;
  if (n == 3) {
    if (view == TensorView::kExpertsFusedGateUp) return is(2) ? 2 : kUnknownResidualAxis;
    if (view == TensorView::kExpertsInterleavedGateUp) return is(1) ? 1 : kUnknownResidualAxis;
    if (is(1) != is(2)) return is(1) ? 1 : 2;
    return kUnknownResidualAxis;
  }
  if (r.use == ResidualUse::kWrites) {
    if (n == 1 || n == 2) return is(0) ? 0 : kUnknownResidualAxis;
    return kUnknownResidualAxis;
  }
  // Embeddings and readers.
  if (n == 1) return kNoResidualAxis;  // a reader's bias lives in its output space
  if (n == 2) return is(1) ? 1 : kUnknownResidualAxis;
  return kUnknownResidualAxis;
}

// The suffix of the norm a layer's readers of `norm` read through, given whether the layer has a
// tensor of a suffix: "input_layernorm.weight" for the attention; "pre_feedforward_layernorm.weight"
// (Gemma 2) when present, else "post_attention_layernorm.weight", for the MLP. "" for kFinal/kNone.
template <typename Has>
const char* layer_norm_suffix(ResidualNorm norm, const Has& has) {
  if (norm == ResidualNorm::kAttentionInput) return "input_layernorm.weight";
  if (norm != ResidualNorm::kMlpInput) return "";
  return has("pre_feedforward_layernorm.weight") ? "pre_feedforward_layernorm.weight"
                                                 : "post_attention_layernorm.weight";
}

// The suffix of a norm that normalises a writer's output before the residual add (Gemma 2 and 3's
// sandwich norms). No gain can be folded past it and it does not commute with a rotation of the
// stream, so a family that has one is refused by fold-norms and rotate-residual.
inline constexpr const char* kWriterPostNorm = "post_feedforward_layernorm.weight";

}  // namespace alloy
