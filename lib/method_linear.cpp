// linear: a weighted average of the models (Wortsman et al. 2022, "Model soups", arXiv:2203.05482;
// mergekit/merge_methods/linear.py):
//   out = rnd(sum_i rnd(wD(w_i) * x_i))                 (float32 sum in source order, one rnd)
//   normalize (default): out = rnd(out / W),  W = rnd(sum_i wD(w_i))
// W == 0 makes mergekit write inf/NaN; alloy refuses the tensor (kNonFinite) instead.
#include <algorithm>

#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class LinearMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "linear"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"weight", true, std::nullopt, true}, {"normalize", false, 1.0, false}};
  }
  // Each block reads every input before it writes its outputs.
  bool merges_in_place() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.empty()) fail_recipe(ctx, "linear", "no source models");
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, float* out) {
    const size_t count = ctx.sources.size();
    std::vector<float> weights;
    std::vector<const float*> inputs;
    for (const auto& source : ctx.sources) {
      weights.push_back(rnd.param(require_source_param(ctx, source, "weight")));
      inputs.push_back(source.values);
    }
    const bool normalize = method_flag(ctx, "normalize", true);
    float weight_sum = 0.0f;  // torch sums the stacked weights in float32 and rounds once
    for (float w : weights) weight_sum += w;
    weight_sum = rnd(weight_sum);
    if (normalize && weight_sum == 0.0f) {
      fail_non_finite(ctx, "linear", 0,
                      "the weights sum to zero in the compute dtype, so normalize divides by 0");
    }
    // Blocks of elements, models in the outer loop: the element loops vectorise, and the float32
    // sum still adds the products in source order.
    constexpr size_t kBlock = 512;
    parallel_for_checked(ctx, "linear", ctx.numel(), [&](size_t begin, size_t end) {
      size_t bad = 0;
      float acc[kBlock];
      for (size_t b0 = begin; b0 < end; b0 += kBlock) {
        const size_t len = std::min(kBlock, end - b0);
        std::fill(acc, acc + len, 0.0f);
        for (size_t k = 0; k < count; ++k) {
          const float w = weights[k];
          const float* x = inputs[k] + b0;
          for (size_t j = 0; j < len; ++j) acc[j] += rnd(w * x[j]);
        }
        float* o = out + b0;
        for (size_t j = 0; j < len; ++j)
          o[j] = normalize ? rnd(rnd(acc[j]) / weight_sum) : rnd(acc[j]);
        for (size_t j = 0; j < len; ++j) bad += is_non_finite(o[j]);
      }
      return bad;
    });
  }
};

}  // namespace

const MergeMethod& linear_method() {
  static const LinearMethod method;
  return method;
}

}  // namespace alloy::detail
