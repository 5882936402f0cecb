// linear: a weighted average (Wortsman et al. 2022, "Model soups", arXiv:2203.05482;
// mergekit/merge_methods/linear.py). out = sum_i w_i x_i, divided by sum_i w_i when normalize.
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
  void merge(const MergeContext& ctx, float* out) const override {
    const Rounder rnd{ctx.compute_dtype};
    std::vector<float> weights;
    for (const auto& source : ctx.sources) weights.push_back(rnd.param(require_source_param(ctx, source, "weight")));
    const bool normalize = method_param(ctx, "normalize", 1.0) != 0.0;
    // torch sums the stacked weights in float32 and rounds once.
    float weight_sum = 0.0f;
    for (float w : weights) weight_sum += w;
    weight_sum = rnd(weight_sum);
    parallel_for(ctx.numel(), kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        float acc = 0.0f;
        for (size_t k = 0; k < weights.size(); ++k) acc += rnd(weights[k] * ctx.sources[k].values[i]);
        const float total = rnd(acc);
        out[i] = normalize ? rnd(total / weight_sum) : total;
      }
    });
    check_finite(ctx, out, "linear");
  }
};

}  // namespace

const MergeMethod& linear_method() {
  static const LinearMethod method;
  return method;
}

}  // namespace alloy::detail
