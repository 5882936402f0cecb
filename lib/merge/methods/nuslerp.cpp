// nuslerp: slerp of two models, or of their task vectors when there is a base model, with weights
// instead of t and a choice of vectors: the whole tensor (nuslerp_flatten, the default), one
// vector per column (nuslerp_row_wise: dim 0 moved last), or one vector per row (fibers along the
// last dim) (mergekit/merge_methods/nuslerp.py). Every torch operation is rounded to D:
//   t = w_1 / (w_0 + w_1)  (0.5 when |w_0 + w_1| < 1e-6)       v_k = rnd(x_k - base) or x_k
//   per vector: n_k = max(rnd(sqrt(sum v_k^2)), wD(1e-7)),  u_k = rnd(v_k / n_k)
//     c = rnd(sum rnd(u_0 u_1)), theta = rnd(acos(clamp(c, -1, 1))), s = rnd(sin theta)
//     c_0 = rnd(sin(rnd(wD(1 - t) theta))),  c_1 = rnd(sin(rnd(wD(t) theta)))
//     res = rnd(rnd(rnd(c_0 v_0) + rnd(c_1 v_1)) / s), or where |s| < 1e-8 the lerp
//           rnd(rnd(wD(1 - t) v_0) + rnd(wD(t) v_1))
//   out = rnd(base + res) with a base, else res.
// The sums accumulate in double (torch: float32, pairwise), so results are within 1 ulp; on the
// golden data they are bit-identical.
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

// The per-vector scalars of the formula.
struct VectorCoefficients {
  float n0, n1;  // clamped norms
  float c0, c1, s;
  bool lerp;  // |sin theta| < 1e-8
};

class NuSlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "nuslerp"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"weight", true, std::nullopt, true},
            {"nuslerp_flatten", false, 1.0, false},
            {"nuslerp_row_wise", false, 0.0, false}};
  }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.size() == 1) {  // mergekit passes a lone tensor through
      copy_source(ctx, 0, out);
      return;
    }
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.size() != 2) {
      fail_recipe(ctx, "nuslerp",
                  "merges exactly two models besides the optional base; got " +
                      std::to_string(others.size()));
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, others, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, const std::vector<size_t>& others, float* out) {
    const double w0 = require_source_param(ctx, ctx.sources[others[0]], "weight");
    const double w1 = require_source_param(ctx, ctx.sources[others[1]], "weight");
    const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const float t_d = rnd.param(t), one_minus_t = rnd.param(1.0 - t);
    const float min_norm = rnd.param(1e-7);

    const size_t n = ctx.numel();
    const float* base =
        ctx.base_index >= 0 ? ctx.sources[static_cast<size_t>(ctx.base_index)].values : nullptr;
    const float* x0 = ctx.sources[others[0]].values;
    const float* x1 = ctx.sources[others[1]].values;
    auto v0 = [&](size_t i) { return base ? rnd(x0[i] - base[i]) : x0[i]; };
    auto v1 = [&](size_t i) { return base ? rnd(x1[i] - base[i]) : x1[i]; };

    // Vectors: `count` of `length` elements; element j of vector v is at
    // (v / inner) * length * inner + j * inner + v % inner.
    const bool flatten = method_flag(ctx, "nuslerp_flatten", true);
    const bool row_wise = method_flag(ctx, "nuslerp_row_wise", false);
    size_t length = n, inner = 1;
    if (!flatten && !ctx.shape.empty()) {
      if (row_wise) {  // fibers along dim 0
        length = ctx.shape[0];
        inner = length == 0 ? 0 : n / length;
      } else {  // fibers along the last dim
        length = ctx.shape.back();
      }
    }
    if (n == 0 || length == 0) return;
    const size_t count = n / length;

    auto coefficients = [&](double sq0, double sq1) {
      VectorCoefficients c;
      c.n0 = std::max(rnd(static_cast<float>(std::sqrt(sq0))), min_norm);
      c.n1 = std::max(rnd(static_cast<float>(std::sqrt(sq1))), min_norm);
      return c;
    };
    auto square = [](float x) { return double(x) * x; };
    // rnd(u_0 u_1) of element i, u_k = rnd(v_k / n_k)
    auto unit_product = [&](const VectorCoefficients& c, size_t i) {
      return double(rnd(rnd(v0(i) / c.n0) * rnd(v1(i) / c.n1)));
    };
    auto finish = [&](VectorCoefficients& c, double dot) {
      const float cos_theta = std::clamp(rnd(static_cast<float>(dot)), -1.0f, 1.0f);
      const float theta = rnd(std::acos(cos_theta));
      c.s = rnd(std::sin(theta));
      c.c0 = rnd(std::sin(rnd(one_minus_t * theta)));
      c.c1 = rnd(std::sin(rnd(t_d * theta)));
      c.lerp = std::fabs(c.s) < 1e-8;
    };
    auto element = [&](const VectorCoefficients& c, size_t i) {
      const float a = v0(i), b = v1(i);
      const float res = c.lerp ? rnd(rnd(one_minus_t * a) + rnd(t_d * b))
                               : rnd(rnd(rnd(c.c0 * a) + rnd(c.c1 * b)) / c.s);
      return base ? rnd(base[i] + res) : res;
    };

    if (count == 1) {
      // One long vector: parallel, deterministic reductions.
      using Pair = std::pair<double, double>;
      auto add = [](Pair a, Pair b) { return Pair{a.first + b.first, a.second + b.second}; };
      const Pair squares = parallel_reduce(
          n, kDefaultGrain, Pair{0, 0},
          [&](size_t lo, size_t hi) {
            return Pair{lane_sum(hi - lo, [&](size_t j) { return square(v0(lo + j)); }),
                        lane_sum(hi - lo, [&](size_t j) { return square(v1(lo + j)); })};
          },
          add);
      VectorCoefficients c = coefficients(squares.first, squares.second);
      const double dot = parallel_reduce(
          n, kDefaultGrain, 0.0,
          [&](size_t lo, size_t hi) {
            return lane_sum(hi - lo, [&](size_t j) { return unit_product(c, lo + j); });
          },
          [](double a, double b) { return a + b; });
      finish(c, dot);
      parallel_for_checked(ctx, "nuslerp", n, [&](size_t lo, size_t hi) {
        size_t bad = 0;
        for (size_t i = lo; i < hi; ++i) {
          out[i] = element(c, i);
          bad += is_non_finite(out[i]);
        }
        return bad;
      });
      return;
    }

    // Many vectors: each one sequentially, vectors in parallel.
    const size_t grain = std::max<size_t>(1, kDefaultGrain / length);
    parallel_for_checked(
        ctx, "nuslerp", count,
        [&](size_t vb, size_t ve) {
          size_t bad = 0;
          for (size_t v = vb; v < ve; ++v) {
            const size_t start = (v / inner) * length * inner + v % inner;
            VectorCoefficients c = coefficients(
                lane_sum(length, [&](size_t j) { return square(v0(start + j * inner)); }),
                lane_sum(length, [&](size_t j) { return square(v1(start + j * inner)); }));
            finish(c,
                   lane_sum(length, [&](size_t j) { return unit_product(c, start + j * inner); }));
            for (size_t j = 0; j < length; ++j) {
              const size_t i = start + j * inner;
              out[i] = element(c, i);
              bad += is_non_finite(out[i]);
            }
          }
          return bad;
        },
        grain);
  }
};

}  // namespace

const MergeMethod& nuslerp_method() {
  static const NuSlerpMethod method;
  return method;
}

}  // namespace alloy::detail
