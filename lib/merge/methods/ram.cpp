// ram: Reinforced Agent Merging (arXiv:2601.13572; mergekit/merge_methods/ram.py). A task-vector
// entry counts when its magnitude exceeds epsilon; an entry only one model changes is kept whole,
// one that several change is averaged over them. Per element, with d_i = rnd(x_i - base) and
// n = #{i : |d_i| > wD(epsilon)} (strictly greater):
//   term_i = 0 where |d_i| <= epsilon, d_i where n == 1, rnd(d_i / n) where n > 1
//   out = rnd(base + rnd(sum_i term_i))                 (float32 sum in source order, one rnd)
// Element-wise, so it has a chunked form.
#include <algorithm>
#include <cmath>

#include "method_util.h"

namespace alloy::detail {
namespace {

class RamMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "ram"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"epsilon", false, 1e-5, false, 0.0}};
  }
  bool requires_base_model() const override { return true; }
  bool merges_in_place() const override { return true; }  // each block read before it is written
  void merge(const MergeContext& ctx, float* out) const override {
    run_chunked(*chunked(ctx), ctx, "ram", out);
  }
  std::unique_ptr<ChunkedMerge> chunked(const MergeContext& ctx) const override;

 private:
  template <class R>
  class Chunk final : public ChunkedMerge {
   public:
    Chunk(const MergeContext& ctx, R rnd, size_t base, std::vector<size_t> others)
        : rnd_(rnd), base_(base), others_(std::move(others)) {
      epsilon_ = rnd.param(method_param(ctx, "epsilon", 1e-5));
    }
    // Blocks of elements, models outer, so that the loops vectorise and the float32 sum still
    // adds the models in source order.
    size_t merge_chunk(const float* const* sources, size_t, size_t len, float* out) const override {
      constexpr size_t kBlock = 256;
      const R rnd = rnd_;
      const float* base = sources[base_];
      const size_t count = others_.size();
      const float epsilon = epsilon_;
      float counts[kBlock], sum[kBlock];
      size_t bad = 0;
      for (size_t b0 = 0; b0 < len; b0 += kBlock) {
        const size_t block = std::min(kBlock, len - b0);
        const float* b = base + b0;
        std::fill(counts, counts + block, 0.0f);
        for (size_t m = 0; m < count; ++m) {
          const float* x = sources[others_[m]] + b0;
          for (size_t j = 0; j < block; ++j)
            counts[j] += std::fabs(rnd(x[j] - b[j])) > epsilon ? 1.0f : 0.0f;
        }
        for (size_t j = 0; j < block; ++j) counts[j] = rnd(std::max(counts[j], 1.0f));
        std::fill(sum, sum + block, 0.0f);
        for (size_t m = 0; m < count; ++m) {
          const float* x = sources[others_[m]] + b0;
          for (size_t j = 0; j < block; ++j) {
            const float delta = rnd(x[j] - b[j]);
            const bool counted = std::fabs(delta) > epsilon;
            // n == 1 divides by 1: d_i exactly, as mergekit's unique branch.
            sum[j] += keep_or_zero(rnd(delta / counts[j]), counted);
          }
        }
        float* o = out + b0;
        for (size_t j = 0; j < block; ++j) o[j] = rnd(b[j] + rnd(sum[j]));
        bad += chunk_non_finite(o, block);
      }
      return bad;
    }

   private:
    R rnd_;
    size_t base_;
    std::vector<size_t> others_;
    float epsilon_ = 0.0f;
  };
};

std::unique_ptr<ChunkedMerge> RamMethod::chunked(const MergeContext& ctx) const {
  const size_t base = require_base(ctx, "ram");
  return with_rounding(ctx.compute_dtype, [&](auto rnd) -> std::unique_ptr<ChunkedMerge> {
    return std::make_unique<Chunk<decltype(rnd)>>(ctx, rnd, base, non_base_sources(ctx));
  });
}

}  // namespace

const MergeMethod& ram_method() {
  static const RamMethod method;
  return method;
}

}  // namespace alloy::detail
