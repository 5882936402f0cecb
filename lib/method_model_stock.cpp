// model_stock: interpolates between the average of the fine-tunes and the base, with a ratio from
// the angle between their task vectors (Jang et al. 2024, arXiv:2403.19522;
// mergekit/merge_methods/model_stock.py):
//   cos = mean over pairs of cos(o_i, o_j), o_i = x_i - base
//   t   = N cos / (1 + (N - 1) cos)
//   out = t * mean(x_i) + (1 - t) * base
// per tensor, or per row with filter_wise. Every torch operation is rounded to D.
#include <algorithm>
#include <cmath>

#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class ModelStockMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "model_stock"; }
  std::vector<MethodParameter> parameters() const override { return {{"filter_wise", false, 0.0, false}}; }
  bool requires_base_model() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    const Rounder rnd{ctx.compute_dtype};
    const size_t base_index = require_base(ctx, "model_stock");
    std::vector<const float*> models;
    for (size_t k = 0; k < ctx.sources.size(); ++k) {
      if (k != base_index) models.push_back(ctx.sources[k].values);
    }
    if (models.size() < 2) {
      throw Error(ErrorCode::kRecipe, "model_stock needs at least two models besides the base (tensor '" +
                                          ctx.tensor_name + "')");
    }
    const float* base = ctx.sources[base_index].values;
    const size_t n = ctx.numel();
    const bool filter_wise = method_param(ctx, "filter_wise", 0.0) != 0.0 && ctx.shape.size() >= 2;
    const size_t count = filter_wise ? ctx.shape[0] : 1;
    const size_t length = n / std::max<size_t>(count, 1);
    const size_t models_n = models.size();
    const float nf = static_cast<float>(models_n);

    parallel_for(count, 1, [&](size_t vb, size_t ve) {
      for (size_t v = vb; v < ve; ++v) {
        const size_t off = v * length;
        auto delta = [&](size_t m, size_t j) { return rnd(models[m][off + j] - base[off + j]); };
        std::vector<float> norms(models_n);
        for (size_t m = 0; m < models_n; ++m) {
          double sq = 0;
          for (size_t j = 0; j < length; ++j) sq += double(delta(m, j)) * delta(m, j);
          norms[m] = rnd(static_cast<float>(std::sqrt(sq)));
        }
        float cos_sum = 0.0f;
        size_t pairs = 0;
        for (size_t i = 0; i < models_n; ++i) {
          for (size_t j = i + 1; j < models_n; ++j) {
            float d = 0.0f;
            for (size_t e = 0; e < length; ++e) d += rnd(delta(i, e) * delta(j, e));
            const float denominator = std::max(rnd(norms[i] * norms[j]), 1e-6f);
            cos_sum += std::clamp(rnd(rnd(d) / denominator), -1.0f, 1.0f);
            ++pairs;
          }
        }
        const float cos = rnd(rnd(cos_sum) / static_cast<float>(pairs));
        const float t = rnd(rnd(nf * cos) / rnd(1.0f + rnd((nf - 1.0f) * cos)));
        const float one_minus_t = rnd(1.0f - t);
        for (size_t j = 0; j < length; ++j) {
          float sum = models[0][off + j];
          for (size_t m = 1; m < models_n; ++m) sum = rnd(sum + models[m][off + j]);
          const float avg = rnd(sum / nf);
          out[off + j] = rnd(rnd(t * avg) + rnd(one_minus_t * base[off + j]));
        }
      }
    });
    check_finite(ctx, out, "model_stock");
  }
};

}  // namespace

const MergeMethod& model_stock_method() {
  static const ModelStockMethod method;
  return method;
}

}  // namespace alloy::detail
