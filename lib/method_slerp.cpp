// slerp: spherical linear interpolation between the base model and one other model (Shoemake 1985,
// "Animating rotation with quaternion curves"; mergekit/merge_methods/slerp.py). On the flattened
// tensors a (base) and b:
//   dot = <a/|a|, b/|b|>      (a vector is normalised only when its norm exceeds 1e-8)
//   |dot| > 0.9995:  out = rnd(f32(1 - t) * a + f32(t) * b)          (nearly colinear: lerp)
//   else:            theta = acos(dot), s0 = f32(sin((1 - t) theta) / sin theta),
//                    s1 = f32(sin(t theta) / sin theta),  out = rnd(s0 * a + s1 * b)
// mergekit computes this in numpy float32 even for bf16 inputs. alloy computes the reductions and
// the trigonometry in double, rounds the two coefficients to float32 and does the element
// arithmetic in float32: within 1 ulp of mergekit (the reduction order and libm differ). t = 0 and
// t = 1 give the endpoints exactly (s0, s1 are exactly 1 and 0).
#include <cmath>

#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

struct SlerpSums {
  double aa = 0, bb = 0, ab = 0;
};

class SlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "slerp"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"t", false, std::nullopt, true}};
  }
  bool requires_base_model() const override { return true; }
  // The sums read everything first; the output pass is element-wise.
  bool merges_in_place() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.size() == 1) {  // mergekit passes a lone tensor through
      copy_source(ctx, 0, out);
      return;
    }
    const size_t base = require_base(ctx, "slerp");
    if (ctx.sources.size() != 2) {
      fail_recipe(ctx, "slerp",
                  "merges exactly two models, the base and one other; got " +
                      std::to_string(ctx.sources.size()));
    }
    const auto t_it = ctx.params.find("t");
    if (t_it == ctx.params.end()) fail_recipe(ctx, "slerp", "no value of 't'");
    const double t = t_it->second;
    const float* a = ctx.sources[base].values;
    const float* b = ctx.sources[1 - base].values;
    const size_t n = ctx.numel();

    const SlerpSums sums = parallel_reduce(
        n, kDefaultGrain, SlerpSums{},
        [a, b](size_t lo, size_t hi) {
          // The terms capture their pointers by value: reached by reference through the
          // parallel_for context, GCC leaves these loops scalar (see lib/kernels.cpp).
          const float* x = a + lo;
          const float* y = b + lo;
          SlerpSums s;
          s.aa = lane_sum(hi - lo, [x](size_t j) { return double(x[j]) * x[j]; });
          s.bb = lane_sum(hi - lo, [y](size_t j) { return double(y[j]) * y[j]; });
          s.ab = lane_sum(hi - lo, [x, y](size_t j) { return double(x[j]) * y[j]; });
          return s;
        },
        [](SlerpSums acc, SlerpSums part) {
          acc.aa += part.aa;
          acc.bb += part.bb;
          acc.ab += part.ab;
          return acc;
        });
    const double norm_a = std::sqrt(sums.aa), norm_b = std::sqrt(sums.bb);
    double dot = sums.ab;
    if (norm_a > 1e-8) dot /= norm_a;
    if (norm_b > 1e-8) dot /= norm_b;
    float s0, s1;
    if (std::fabs(dot) > 0.9995) {
      s0 = static_cast<float>(1.0 - t);  // nearly colinear: a plain lerp of the raw tensors
      s1 = static_cast<float>(t);
    } else {
      const double theta = std::acos(dot);
      const double sin_theta = std::sin(theta);
      const double theta_t = theta * t;
      s0 = static_cast<float>(std::sin(theta - theta_t) / sin_theta);
      s1 = static_cast<float>(std::sin(theta_t) / sin_theta);
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) {
      parallel_for_checked(ctx, "slerp", n, [&](size_t lo, size_t hi) {
        size_t bad = 0;
        for (size_t i = lo; i < hi; ++i) {
          const float first = s0 * a[i];
          const float second = s1 * b[i];
          out[i] = rnd(first + second);
          bad += is_non_finite(out[i]);
        }
        return bad;
      });
    });
  }
};

}  // namespace

const MergeMethod& slerp_method() {
  static const SlerpMethod method;
  return method;
}

}  // namespace alloy::detail
