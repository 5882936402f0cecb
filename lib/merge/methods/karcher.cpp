// karcher: the Karcher (Riemannian) mean of the models' directions on the unit sphere, scaled by
// the mean of their norms (Karcher 1977; mergekit/merge_methods/karcher.py). Every source takes
// part with weight a = 1/M, the base model included when there is one (mergekit gathers it like
// the others). Whole tensors (flattened), in mergekit's order of float operations, each rounded to
// D; ||.|| is a norm computed in float32 (torch: t.float()), dot products (torch_dot) are rounded to D:
//   n_i = ||x_i||,  u_i = rnd(x_i / rnd(n_i)) (0 when n_i == 0); models with n_i <= tol are left
//   out of the mean (their a renormalised away: a' = a / sum of the kept a, in double)
//   u = sum_i rnd(wD(a') u_i) (rnd after each addition), u = rnd(u / wD(||u||)) (or u_0 when
//   ||u|| < tol)
//   up to max_iter times:
//     T = 0; for each kept i: c = clamp(rnd(u . u_i), -1, 1), th = rnd(acos c); if th >= tol:
//       T = rnd(T + rnd(rnd(wD(a') rnd(th / rnd(sin th))) rnd(u_i - rnd(c u))))
//     stop when ||T|| < tol; else with s = ||T||:
//       u = rnd(rnd(rnd(cos s) u) + rnd(rnd(sin s) rnd(T / rnd(s))));
//       u = rnd(u / rnd(||u||)) when ||u|| > tol
//   out = rnd(wD(sum_i a n_i) u)       (sum in double over every model, zero norms included)
// Norms and dot products follow torch's float32 order (torch_norm, torch_dot below): with them the
// golden karcher_f32 case is within 1 ulp of mergekit everywhere (docs/methods.md).
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

thread_local std::vector<float> t_mean, t_tangent;  // u and T of one tensor, reused

// torch.linalg.norm of a contiguous float32 tensor on an AVX2 CPU (torch 1.13's vectorised
// reduction over the last dim, compiled with FMA): eight float32 lanes, lane k accumulating
// fma(x_j, x_j, lane) for j = k mod 8 in order, the lanes then added 0 to 7, the tail added one by
// one as rnd32(x_j^2), the square root in float32. Checked against that torch: identical on 240
// random vectors whose length is a multiple of 8 (all the golden tensors; without the fma, 13 of
// them differed); a tail of 1 to 7 elements is not always reproduced (torch's scalar tail order
// is not known). The golden karcher_f32 case needs this order: with a double-precision norm its
// scale is off by up to 9 ulps. Sequential, so the same on any thread count; std::fma is exact
// everywhere, the "fma" clone only makes it a single instruction.
__attribute__((target_clones("fma", "default"))) float torch_norm(const float* values, size_t n) {
  constexpr size_t kLanes = 8;
  float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t whole = n - n % kLanes;
  for (size_t j = 0; j < whole; j += kLanes) {
    for (size_t k = 0; k < kLanes; ++k) lanes[k] = std::fma(values[j + k], values[j + k], lanes[k]);
  }
  float sum = lanes[0];
  for (size_t k = 1; k < kLanes; ++k) sum += lanes[k];
  for (size_t j = whole; j < n; ++j) sum += values[j] * values[j];
  return std::sqrt(sum);
}

// torch.dot of two contiguous tensors as the reference outputs were made: float32 on Debian's
// torch 1.13, which calls the BLAS sdot (the reference BLAS: one float32 accumulator adding
// rnd32(x_j y_j) for j = 0, 1, ... in order), and bf16/f16 through torch's own loop (the same
// sequential float32 sum, rounded to D by the caller). Sequential, so the same on any thread count.
template <class Other>
float torch_dot(const float* values, size_t n, Other&& other) {
  float sum = 0.0f;
  for (size_t j = 0; j < n; ++j) sum += values[j] * other(j);
  return sum;
}

class KarcherMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "karcher"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"max_iter", false, 10.0, false, 0.0, 1e6}, {"tol", false, 1e-5, false, 0.0}};
  }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.empty()) fail_recipe(ctx, "karcher", "no source models");
    if (ctx.sources.size() == 1) {  // mergekit returns a lone tensor
      copy_source(ctx, 0, out);
      return;
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, float* out) {
    const size_t n = ctx.numel(), count = ctx.sources.size();
    const double tol = method_param(ctx, "tol", 1e-5);
    const auto max_iter = static_cast<long>(method_param(ctx, "max_iter", 10.0));
    const double alpha = 1.0 / static_cast<double>(count);
    auto norm = [&](const float* values) { return torch_norm(values, n); };

    // The models' norms and unit vectors (recomputed from the sources when needed).
    std::vector<float> norms(count), divisors(count);
    std::vector<size_t> kept;
    double kept_alpha = 0.0;
    for (size_t m = 0; m < count; ++m) {
      norms[m] = norm(ctx.sources[m].values);
      divisors[m] = rnd(norms[m]);
      if (norms[m] > tol) {
        kept.push_back(m);
        kept_alpha += alpha;
      }
    }
    if (kept.empty()) {
      std::fill(out, out + n, 0.0f);
      return;
    }
    const float a = rnd.param(alpha / kept_alpha);
    auto unit = [&](size_t m, size_t j) { return rnd(ctx.sources[m].values[j] / divisors[m]); };

    std::vector<float>& u = t_mean;
    std::vector<float>& tangent = t_tangent;
    u.assign(n, 0.0f);
    tangent.resize(n);
    parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
      for (size_t j = lo; j < hi; ++j) {
        for (size_t m : kept) u[j] = rnd(u[j] + rnd(a * unit(m, j)));
      }
    });
    const float u_norm = norm(u.data());
    if (u_norm < tol) {
      parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
        for (size_t j = lo; j < hi; ++j) u[j] = unit(kept[0], j);
      });
    } else {
      divide(rnd, u, rnd.param(u_norm));
    }

    for (long iteration = 0; iteration < max_iter; ++iteration) {
      std::fill(tangent.begin(), tangent.end(), 0.0f);
      for (size_t m : kept) {
        const float dot = std::clamp(rnd(torch_dot(u.data(), n, [&](size_t j) { return unit(m, j); })),
                                     -1.0f, 1.0f);
        const float theta = rnd(std::acos(dot));
        if (theta < tol) continue;
        const float coefficient = rnd(a * rnd(theta / rnd(std::sin(theta))));
        parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
          for (size_t j = lo; j < hi; ++j) {
            const float toward = rnd(unit(m, j) - rnd(dot * u[j]));
            tangent[j] = rnd(tangent[j] + rnd(coefficient * toward));
          }
        });
      }
      const float tangent_norm = norm(tangent.data());
      if (tangent_norm < tol) break;
      const float cos_d = rnd(std::cos(tangent_norm)), sin_d = rnd(std::sin(tangent_norm));
      const float divisor = rnd(tangent_norm);
      parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
        for (size_t j = lo; j < hi; ++j)
          u[j] = rnd(rnd(cos_d * u[j]) + rnd(sin_d * rnd(tangent[j] / divisor)));
      });
      const float norm_u = norm(u.data());
      if (norm_u > tol) divide(rnd, u, rnd(norm_u));
    }

    double scale = 0.0;
    for (size_t m = 0; m < count; ++m) scale += alpha * norms[m];
    const float scale_d = rnd.param(scale);
    parallel_for_checked(ctx, "karcher", n, [&](size_t lo, size_t hi) {
      size_t bad = 0;
      for (size_t j = lo; j < hi; ++j) {
        out[j] = rnd(scale_d * u[j]);
        bad += is_non_finite(out[j]);
      }
      return bad;
    });
  }

  template <class R>
  static void divide(R rnd, std::vector<float>& values, float divisor) {
    parallel_for(values.size(), kDefaultGrain, [&](size_t lo, size_t hi) {
      for (size_t j = lo; j < hi; ++j) values[j] = rnd(values[j] / divisor);
    });
  }
};

}  // namespace

const MergeMethod& karcher_method() {
  static const KarcherMethod method;
  return method;
}

}  // namespace alloy::detail
