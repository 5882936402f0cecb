// linear: a weighted average of the models (Wortsman et al. 2022, "Model soups", arXiv:2203.05482;
// mergekit/merge_methods/linear.py):
//   out = rnd(sum_i rnd(wD(w_i) * x_i))                 (float32 sum in source order, one rnd)
//   normalize (default): out = rnd(out / W),  W = rnd(sum_i wD(w_i))
// W == 0 makes mergekit write inf/NaN; alloy refuses the tensor (kNonFinite) instead.
#include <algorithm>
#include <type_traits>

#include "alloy/core/parallel.h"
#include "weighted_sum_lanes.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

// How normalize divides by W: x / W and x * (1 / W) are the same real number, hence the same
// rounded float, when 1 / W is exact, i.e. W is a power of two whose reciprocal is a normal
// float; and W == 1 leaves rnd(x) as it is (rnd is idempotent). Weights summing to 1 are the
// usual recipe, and a vector division costs as much as the rest of the element's steps together.
using Normalize = LinearNormalize;

// The step for a normalize flag and the rounded weight sum W (for kMultiply, 1 / W in *factor).
Normalize normalize_step(bool normalize, float weight_sum, float* factor) {
  *factor = weight_sum;
  if (!normalize || weight_sum == 1.0f) return Normalize::kNone;
  const uint32_t bits = float_to_bits(weight_sum), exponent = bits >> 23 & 0xFFu;
  if ((bits & 0x7FFFFFu) != 0 || exponent < 1 || exponent > 253) return Normalize::kDivide;
  *factor = 1.0f / weight_sum;  // exact
  return Normalize::kMultiply;
}

// One chunk of the merge: its inputs (float32 rows, or bf16 rows: source_value) and the prepared
// weights.
template <class In>
struct LinearBlocks {
  const In* const* inputs;
  const float* weights;
  size_t count;
  Normalize normalize;
  float factor;  // W (kDivide) or 1 / W (kMultiply)
};

// o[j] = rnd(sum_k rnd(w_k * x_k[j])) for one block (the float32 sum from +0, in source order).
// With the model count N known at compile time, each sum stays in a register; otherwise (N == 0)
// the models go in the outer loop and the sums through acc. No dependence crosses elements: the
// merge may run in place (o equal to x_0), every element's inputs being read before it is written.
template <class R, size_t N, class In>
[[gnu::always_inline]] inline void block_sums(const LinearBlocks<In>& chunk, size_t b0, size_t block, float* acc,
                                              float* o) {
  const R rnd;
  if constexpr (N > 0) {
    const In* x[N];
    float w[N];
    for (size_t k = 0; k < N; ++k) x[k] = chunk.inputs[k] + b0, w[k] = chunk.weights[k];
#pragma GCC ivdep
    for (size_t j = 0; j < block; ++j) {
      float sum = 0.0f;
      for (size_t k = 0; k < N; ++k) sum += rnd(w[k] * source_value(x[k], j));
      o[j] = rnd(sum);
    }
  } else {
    std::fill(acc, acc + block, 0.0f);
    for (size_t k = 0; k < chunk.count; ++k) {
      const float w = chunk.weights[k];
      const In* x = chunk.inputs[k] + b0;
      for (size_t j = 0; j < block; ++j) acc[j] += rnd(w * source_value(x, j));
    }
    for (size_t j = 0; j < block; ++j) o[j] = rnd(acc[j]);
  }
}

// Blocks of elements: the sums (block_sums), then normalize, then the count of non-finite
// outputs, each a loop that vectorises; bf16 outputs (Out = uint16_t) are merged into a float32
// block on the stack and stored from it. Returns that count.
template <class R, size_t N, class In, class Out>
[[gnu::always_inline]] inline size_t linear_blocks(const LinearBlocks<In>& chunk, size_t len, Out* out) {
  constexpr size_t kBlock = 512;
  const R rnd;
  const Normalize normalize = chunk.normalize;
  const float factor = chunk.factor;
  size_t bad = 0;
  float acc[kBlock];
  float merged[kBlock];
  for (size_t b0 = 0; b0 < len; b0 += kBlock) {
    const size_t block = std::min(kBlock, len - b0);
    float* o = merged;
    if constexpr (std::is_same_v<Out, float>) o = out + b0;
    block_sums<R, N>(chunk, b0, block, acc, o);
    if (normalize == Normalize::kDivide) {
      for (size_t j = 0; j < block; ++j) o[j] = rnd(o[j] / factor);
    } else if (normalize == Normalize::kMultiply) {
      for (size_t j = 0; j < block; ++j) o[j] = rnd(o[j] * factor);
    }
    bad += chunk_non_finite(o, block);
    if constexpr (std::is_same_v<Out, uint16_t>) store_rounded_bf16(o, block, out + b0);
  }
  return bad;
}

// linear_blocks for the model count: two and three models (the usual recipes) with the sums in
// registers, any other count through the generic form.
template <class R, class In, class Out>
[[gnu::always_inline]] inline size_t linear_any(const LinearBlocks<In>& chunk, size_t len, Out* out) {
  switch (chunk.count) {
    case 2: return linear_blocks<R, 2>(chunk, len, out);
    case 3: return linear_blocks<R, 3>(chunk, len, out);
    default: return linear_blocks<R, 0>(chunk, len, out);
  }
}

// linear_any per compute dtype, one clone per instruction set (ALLOY_ELEMENT_KERNEL).
ALLOY_ELEMENT_KERNEL size_t linear_blocks_f32(const LinearBlocks<float>& chunk, size_t len, float* out) {
  return linear_any<RoundF32>(chunk, len, out);
}
ALLOY_ELEMENT_KERNEL size_t linear_blocks_bf16(const LinearBlocks<float>& chunk, size_t len, float* out) {
  return linear_any<RoundBF16>(chunk, len, out);
}
ALLOY_ELEMENT_KERNEL size_t linear_blocks_f16(const LinearBlocks<float>& chunk, size_t len, float* out) {
  return linear_any<RoundF16>(chunk, len, out);
}
// bf16 rows in, bf16 bits out (ChunkedMerge::merge_chunk_bf16).
ALLOY_BF16_BITS_KERNEL size_t linear_blocks_bf16_bits(const LinearBlocks<uint16_t>& chunk, size_t len, uint16_t* out) {
  return linear_any<RoundBF16>(chunk, len, out);
}

class LinearMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "linear"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"weight", true, std::nullopt, true}, {"normalize", false, 1.0, false}};
  }
  // Each block reads every input before it writes its outputs.
  bool merges_in_place() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    run_chunked(*chunked(ctx), ctx, "linear", out);
  }
  // Defined after Chunk: clang instantiates the generic lambda where it stands.
  std::unique_ptr<ChunkedMerge> chunked(const MergeContext& ctx) const override;

 private:
  template <class R>
  class Chunk final : public ChunkedMerge {
   public:
    Chunk(const MergeContext& ctx, R rnd) {
      for (const auto& source : ctx.sources)
        weights_.push_back(rnd.param(require_source_param(ctx, source, "weight")));
      const bool normalize = method_flag(ctx, "normalize", true);
      float weight_sum = 0.0f;  // torch sums the stacked weights in float32 and rounds once
      for (float w : weights_) weight_sum += w;
      weight_sum = rnd(weight_sum);
      if (normalize && weight_sum == 0.0f) {
        fail_non_finite(ctx, "linear", 0,
                        "the weights sum to zero in the compute dtype, so normalize divides by 0");
      }
      step_ = normalize_step(normalize, weight_sum, &factor_);
      lanes_ = std::is_same_v<R, RoundBF16> && can_weighted_sum_bf16_avx512(weights_.size());
    }

    size_t merge_chunk(const float* const* inputs, size_t, size_t len, float* out) const override {
      const LinearBlocks<float> blocks{inputs, weights_.data(), weights_.size(), step_, factor_};
      if constexpr (std::is_same_v<R, RoundBF16>) return linear_blocks_bf16(blocks, len, out);
      if constexpr (std::is_same_v<R, RoundF16>) return linear_blocks_f16(blocks, len, out);
      return linear_blocks_f32(blocks, len, out);
    }
    bool merges_bf16() const override { return std::is_same_v<R, RoundBF16>; }
    size_t merge_chunk_bf16(const uint16_t* const* inputs, size_t, size_t len, uint16_t* out) const override {
      if constexpr (std::is_same_v<R, RoundBF16>) {
        if (lanes_)
          return linear_bf16_avx512(inputs, weights_.data(), weights_.size(), step_, factor_, len,
                                    out);
        const LinearBlocks<uint16_t> blocks{inputs, weights_.data(), weights_.size(), step_, factor_};
        return linear_blocks_bf16_bits(blocks, len, out);
      } else {
        return ChunkedMerge::merge_chunk_bf16(inputs, 0, len, out);
      }
    }

   private:
    std::vector<float> weights_;
    Normalize step_ = Normalize::kNone;
    float factor_ = 1.0f;
    bool lanes_ = false;  // bf16 bits through weighted_sum_lanes.h's kernel (x86-64-v4)
  };
};

std::unique_ptr<ChunkedMerge> LinearMethod::chunked(const MergeContext& ctx) const {
  if (ctx.sources.empty()) fail_recipe(ctx, "linear", "no source models");
  return with_rounding(ctx.compute_dtype, [&](auto rnd) -> std::unique_ptr<ChunkedMerge> {
    return std::make_unique<Chunk<decltype(rnd)>>(ctx, rnd);
  });
}

}  // namespace

const MergeMethod& linear_method() {
  static const LinearMethod method;
  return method;
}

}  // namespace alloy::detail
