// nuslerp: slerp of two models, or of their task vectors when a base model is given, with weights
// instead of t and a choice of vectors: the whole tensor (flatten), each column (row_wise), or each
// row (mergekit/merge_methods/nuslerp.py). Every torch operation is rounded to D.
#include <algorithm>
#include <cmath>

#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class NuSlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "nuslerp"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"weight", true, std::nullopt, true},
            {"nuslerp_flatten", false, 1.0, false},
            {"nuslerp_row_wise", false, 0.0, false}};
  }
  void merge(const MergeContext& ctx, float* out) const override {
    const Rounder rnd{ctx.compute_dtype};
    std::vector<size_t> others;
    for (size_t k = 0; k < ctx.sources.size(); ++k) {
      if (!ctx.sources[k].is_base) others.push_back(k);
    }
    if (others.size() != 2) {
      throw Error(ErrorCode::kRecipe, "nuslerp merges exactly two models besides the base (tensor '" +
                                          ctx.tensor_name + "' has " + std::to_string(others.size()) + ")");
    }
    const double w0 = require_source_param(ctx, ctx.sources[others[0]], "weight");
    const double w1 = require_source_param(ctx, ctx.sources[others[1]], "weight");
    const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const float t_d = rnd.param(t), one_minus_t = rnd.param(1.0 - t);

    const size_t n = ctx.numel();
    const float* base = ctx.base_index >= 0 ? ctx.sources[static_cast<size_t>(ctx.base_index)].values : nullptr;
    std::vector<float> v0(n), v1(n);
    const float* x0 = ctx.sources[others[0]].values;
    const float* x1 = ctx.sources[others[1]].values;
    parallel_for(n, kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        v0[i] = base ? rnd(x0[i] - base[i]) : x0[i];
        v1[i] = base ? rnd(x1[i] - base[i]) : x1[i];
      }
    });

    // Vector layout: `count` vectors of `length` elements, element j of vector v at
    // v * vector_stride + j * element_stride.
    const bool flatten = method_param(ctx, "nuslerp_flatten", 1.0) != 0.0;
    const bool row_wise = method_param(ctx, "nuslerp_row_wise", 0.0) != 0.0;
    size_t count = 1, length = n, vector_stride = 0, element_stride = 1;
    if (!flatten && ctx.shape.size() >= 2) {
      const size_t rows = ctx.shape[0], cols = n / rows;
      if (row_wise) {  // dim 0 moved last: one vector per column
        count = cols, length = rows, vector_stride = 1, element_stride = cols;
      } else {
        count = rows, length = cols, vector_stride = cols, element_stride = 1;
      }
    }
    parallel_for(count, 1, [&](size_t vb, size_t ve) {
      for (size_t v = vb; v < ve; ++v) {
        auto at = [&](size_t j) { return v * vector_stride + j * element_stride; };
        double sq0 = 0, sq1 = 0;
        for (size_t j = 0; j < length; ++j) {
          sq0 += double(v0[at(j)]) * v0[at(j)];
          sq1 += double(v1[at(j)]) * v1[at(j)];
        }
        const float n0 = std::max(rnd(static_cast<float>(std::sqrt(sq0))), rnd(1e-7f));
        const float n1 = std::max(rnd(static_cast<float>(std::sqrt(sq1))), rnd(1e-7f));
        float c = 0.0f;
        for (size_t j = 0; j < length; ++j) c += rnd(rnd(v0[at(j)] / n0) * rnd(v1[at(j)] / n1));
        c = std::clamp(rnd(c), -1.0f, 1.0f);
        const float theta = rnd(std::acos(c));
        const float s = rnd(std::sin(theta));
        const float c0 = rnd(std::sin(rnd(one_minus_t * theta)));
        const float c1 = rnd(std::sin(rnd(t_d * theta)));
        for (size_t j = 0; j < length; ++j) {
          const size_t i = at(j);
          const float res = std::fabs(s) < 1e-8f ? rnd(rnd(one_minus_t * v0[i]) + rnd(t_d * v1[i]))
                                                 : rnd(rnd(rnd(c0 * v0[i]) + rnd(c1 * v1[i])) / s);
          out[i] = base ? rnd(base[i] + res) : res;
        }
      }
    });
    check_finite(ctx, out, "nuslerp");
  }
};

}  // namespace

const MergeMethod& nuslerp_method() {
  static const NuSlerpMethod method;
  return method;
}

}  // namespace alloy::detail
