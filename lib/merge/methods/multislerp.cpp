// multislerp: barycentric interpolation of any number of models on the hypersphere (Goddard,
// "multislerp"; mergekit/merge_methods/multislerp.py): the unit vectors are averaged, projected
// onto the tangent space at their normalised mean, combined there, mapped back with the
// exponential map and scaled by the weighted mean norm. With a base model the task vectors
// v_i = rnd(x_i - base) are interpolated and the base added back; without one, v_i = x_i. Whole
// tensors (flattened), every torch operation rounded to D:
//   w_i = wD(weight_i); normalize_weights (default): w_i = rnd(w_i / rnd(sum_i w_i))
//   n_i = rnd(sqrt(sum v_i^2)),  u_i = rnd(v_i / rnd(n_i + wD(eps)))
//   m = rnd(sum_i rnd(u_i w_i)),  m = rnd(m / rnd(|m|))
//       (|m| < eps: two models fall back to rnd(rnd(v_0 w_0) + rnd(v_1 w_1)); more are refused)
//   d_i = rnd(sum rnd(u_i m)),  g = rnd(sum_i rnd(rnd(u_i - rnd(d_i m)) w_i))
//   a = rnd(rnd(|g|) + wD(eps)),  r = rnd(rnd(m rnd(cos a)) + rnd(g rnd(rnd(sin a) / a)))
//   out = rnd(r rnd(sum_i rnd(n_i w_i)))  (+ base: rnd(base + out))
// A single model besides the base is returned unchanged, as mergekit does. Sums over models are
// float32 in source order with one rnd; sums over elements accumulate in double (torch: float32,
// pairwise), so results are within 1 ulp.
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

using Sums = std::vector<double>;

Sums add_sums(Sums acc, const Sums& part) {
  for (size_t k = 0; k < acc.size(); ++k) acc[k] += part[k];
  return acc;
}

class MultiSlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "multislerp"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"weight", true, std::nullopt, true},
            {"normalize_weights", false, 1.0, false},
            {"eps", false, 1e-8, false, 0.0}};
  }
  void merge(const MergeContext& ctx, float* out) const override {
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.empty()) fail_recipe(ctx, "multislerp", "needs a model besides the base model");
    if (others.size() == 1) {  // mergekit returns a lone model as it is
      copy_source(ctx, others[0], out);
      return;
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, others, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, const std::vector<size_t>& others, float* out) {
    const size_t n = ctx.numel(), count = others.size();
    const float* base =
        ctx.base_index >= 0 ? ctx.sources[static_cast<size_t>(ctx.base_index)].values : nullptr;
    std::vector<const float*> x;
    std::vector<float> weights;
    for (size_t k : others) {
      x.push_back(ctx.sources[k].values);
      weights.push_back(rnd.param(require_source_param(ctx, ctx.sources[k], "weight")));
    }
    if (method_flag(ctx, "normalize_weights", true)) {
      float sum = 0.0f;
      for (float w : weights) sum += w;
      sum = rnd(sum);
      if (sum == 0.0f) {
        fail_non_finite(ctx, "multislerp", 0,
                        "the weights sum to zero in the compute dtype, so normalize_weights "
                        "divides by 0");
      }
      for (float& w : weights) w = rnd(w / sum);
    }
    const float eps = rnd.param(method_param(ctx, "eps", 1e-8));
    auto v = [&](size_t m, size_t j) { return base ? rnd(x[m][j] - base[j]) : x[m][j]; };
    auto norm_of = [&](double squares) { return rnd(static_cast<float>(std::sqrt(squares))); };
    // A deterministic reduction of `count` (or `slots`) double sums over the elements.
    auto reduce = [&](size_t slots, auto&& term) {
      return parallel_reduce(
          n, kDefaultGrain, Sums(slots, 0.0),
          [&](size_t lo, size_t hi) {
            Sums s(slots, 0.0);
            for (size_t j = lo; j < hi; ++j) term(j, s);
            return s;
          },
          add_sums);
    };

    // The norms and the unit vectors u_i = rnd(v_i / divisor_i).
    const Sums squares = reduce(count, [&](size_t j, Sums& s) {
      for (size_t m = 0; m < count; ++m) {
        const float value = v(m, j);
        s[m] += double(value) * value;
      }
    });
    std::vector<float> norms(count), divisors(count);
    for (size_t m = 0; m < count; ++m) {
      norms[m] = norm_of(squares[m]);
      divisors[m] = rnd(norms[m] + eps);
    }
    auto u = [&](size_t m, size_t j) { return rnd(v(m, j) / divisors[m]); };

    // The weighted mean of the unit vectors, kept in out.
    const double mean_squares = reduce(1, [&](size_t j, Sums& s) {
      float sum = 0.0f;
      for (size_t m = 0; m < count; ++m) sum += rnd(u(m, j) * weights[m]);
      out[j] = rnd(sum);
      s[0] += double(out[j]) * out[j];
    })[0];
    const float mean_norm = norm_of(mean_squares);
    if (mean_norm < eps) {
      if (count != 2) {
        fail_recipe(ctx, "multislerp",
                    "the weighted mean of the models' directions is zero (opposite models whose "
                    "weights balance out); change the weights");
      }
      parallel_for_checked(ctx, "multislerp", n, [&](size_t lo, size_t hi) {
        size_t bad = 0;
        for (size_t j = lo; j < hi; ++j) {
          const float res = rnd(rnd(v(0, j) * weights[0]) + rnd(v(1, j) * weights[1]));
          out[j] = base ? rnd(res + base[j]) : res;
          bad += is_non_finite(out[j]);
        }
        return bad;
      });
      return;
    }

    // Normalise the mean; the projections d_i of the unit vectors on it.
    const Sums dot_sums = reduce(count, [&](size_t j, Sums& s) {
      out[j] = rnd(out[j] / mean_norm);
      for (size_t m = 0; m < count; ++m) s[m] += double(rnd(u(m, j) * out[j]));
    });
    std::vector<float> dots(count);
    for (size_t m = 0; m < count; ++m) dots[m] = rnd(static_cast<float>(dot_sums[m]));
    // The weighted tangent vector g at element j (out[j] holds the mean).
    auto tangent = [&](size_t j) {
      float sum = 0.0f;
      for (size_t m = 0; m < count; ++m)
        sum += rnd(rnd(u(m, j) - rnd(dots[m] * out[j])) * weights[m]);
      return rnd(sum);
    };
    const double tangent_squares = reduce(1, [&](size_t j, Sums& s) {
      const float g = tangent(j);
      s[0] += double(g) * g;
    })[0];
    const float angle = rnd(norm_of(tangent_squares) + eps);
    const float cos_angle = rnd(std::cos(angle));
    const float sin_ratio = rnd(rnd(std::sin(angle)) / angle);
    float scale = 0.0f;
    for (size_t m = 0; m < count; ++m) scale += rnd(norms[m] * weights[m]);
    scale = rnd(scale);

    parallel_for_checked(ctx, "multislerp", n, [&](size_t lo, size_t hi) {
      size_t bad = 0;
      for (size_t j = lo; j < hi; ++j) {
        const float g = tangent(j);
        const float res = rnd(rnd(rnd(out[j] * cos_angle) + rnd(g * sin_ratio)) * scale);
        out[j] = base ? rnd(res + base[j]) : res;
        bad += is_non_finite(out[j]);
      }
      return bad;
    });
  }
};

}  // namespace

const MergeMethod& multislerp_method() {
  static const MultiSlerpMethod method;
  return method;
}

}  // namespace alloy::detail
