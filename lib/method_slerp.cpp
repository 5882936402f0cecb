// slerp: spherical linear interpolation between the base model and one other model (Shoemake 1985;
// mergekit/merge_methods/slerp.py). mergekit computes it in numpy float32 on the flattened tensors;
// alloy computes the norms, the dot product and the trigonometry in double, rounds the two
// coefficients to float32 and does the element arithmetic in float32 (within 1 ulp of mergekit).
#include <cmath>

#include "alloy/kernels.h"
#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class SlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "slerp"; }
  std::vector<MethodParameter> parameters() const override { return {{"t", false, std::nullopt, true}}; }
  bool requires_base_model() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    const size_t base = require_base(ctx, "slerp");
    if (ctx.sources.size() != 2) {
      throw Error(ErrorCode::kRecipe, "slerp merges exactly two models, the base and one other (tensor '" +
                                          ctx.tensor_name + "' has " + std::to_string(ctx.sources.size()) + ")");
    }
    const auto t_it = ctx.params.find("t");
    if (t_it == ctx.params.end()) {
      throw Error(ErrorCode::kRecipe, "slerp: no value of 't' for tensor '" + ctx.tensor_name + "'");
    }
    const double t = t_it->second;
    const float* a = ctx.sources[base].values;
    const float* b = ctx.sources[1 - base].values;
    const size_t n = ctx.numel();
    const Rounder rnd{ctx.compute_dtype};

    const double norm_a = norm2(n, a), norm_b = norm2(n, b);
    double dot_ab = dot(n, a, b);
    // mergekit normalises a vector only when its norm exceeds 1e-8.
    if (norm_a > 1e-8) dot_ab /= norm_a;
    if (norm_b > 1e-8) dot_ab /= norm_b;
    float s0, s1;
    if (std::fabs(dot_ab) > 0.9995) {
      s0 = static_cast<float>(1.0 - t);  // nearly colinear: plain lerp of the raw tensors
      s1 = static_cast<float>(t);
    } else {
      const double theta = std::acos(dot_ab);
      const double sin_theta = std::sin(theta);
      s0 = static_cast<float>(std::sin(theta - theta * t) / sin_theta);
      s1 = static_cast<float>(std::sin(theta * t) / sin_theta);
    }
    parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; ++i) out[i] = rnd(s0 * a[i] + s1 * b[i]);
    });
    check_finite(ctx, out, "slerp");
  }
};

}  // namespace

const MergeMethod& slerp_method() {
  static const SlerpMethod method;
  return method;
}

}  // namespace alloy::detail
