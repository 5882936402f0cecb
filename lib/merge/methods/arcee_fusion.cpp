// arcee_fusion: keeps the fine-tune's change only where it matters most (Arcee's "Fusion";
// mergekit/merge_methods/arcee_fusion.py). One model besides the base. Per row r (the fibers along
// the last dim), in D with every torch operation rounded:
//   p = rnd(softmax(x_r) + wD(1e-8)),  q = rnd(softmax(base_r) + wD(1e-8))
//   kl_r = rnd(sum_j rnd(p_j rnd(log rnd(p_j / q_j))))           (KL(p || q) of the row)
//   importance_j = rnd(rnd(|x_j - base_j|) kl_r)
// then over the whole tensor, with s the importances sorted ascending and s[q] = s[int(f32(q) *
// f32(N - 1))], the threshold c = rnd(s[0.5] + rnd(1.5 rnd(s[0.75] - s[0.25]))) (median + 1.5 IQR,
// Tukey's fence) and
//   out_j = base_j + rnd(x_j - base_j)   where importance_j >= c,   base_j elsewhere,
// added in float32: mergekit's mask is float32, so the result is a float32 tensor whatever D is
// (result_dtype). softmax follows torch's CPU kernel: float32 max, exp(x - max), sum, one
// multiplication by the reciprocal of the sum, then rnd.
// mergekit estimates the quantiles from a random sample of 10^6 elements when a tensor has more;
// alloy uses every element (the exact quantiles; deterministic).
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

thread_local std::vector<float> t_importance, t_sorted;  // one tensor's scores, reused

class ArceeFusionMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "arcee_fusion"; }
  std::vector<MethodParameter> parameters() const override { return {}; }
  bool requires_base_model() const override { return true; }
  DType result_dtype(DType compute) const override {
    return compute == DType::F64 ? DType::F64 : DType::F32;
  }
  void merge(const MergeContext& ctx, float* out) const override {
    const size_t base_index = require_base(ctx, "arcee_fusion");
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.empty()) {
      copy_source(ctx, base_index, out);
      return;
    }
    if (others.size() != 1) {
      fail_recipe(ctx, "arcee_fusion",
                  "merges exactly one model into the base; got " + std::to_string(others.size()));
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) {
      run(ctx, rnd, ctx.sources[base_index].values, ctx.sources[others[0]].values, out);
    });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, const float* base, const float* x, float* out) {
    const size_t n = ctx.numel();
    if (n == 0) return;
    const size_t length = ctx.shape.empty() ? n : static_cast<size_t>(ctx.shape.back());
    if (length == 0) return;
    const size_t rows = n / length;
    std::vector<float>& importance = t_importance;
    importance.resize(n);
    const float eps = rnd.param(1e-8);
    parallel_for(rows, std::max<size_t>(1, kDefaultGrain / length), [&](size_t rb, size_t re) {
      std::vector<float> p(length), q(length);
      for (size_t r = rb; r < re; ++r) {
        const size_t start = r * length;
        softmax(rnd, x + start, length, eps, p.data());
        softmax(rnd, base + start, length, eps, q.data());
        const float kl = rnd(static_cast<float>(lane_sum(length, [&](size_t j) {
          return double(rnd(p[j] * rnd(std::log(rnd(p[j] / q[j])))));
        })));
        for (size_t j = 0; j < length; ++j) {
          importance[start + j] = rnd(std::fabs(rnd(x[start + j] - base[start + j])) * kl);
        }
      }
    });

    // Tukey's fence over the sorted scores: s[int(f32(q) * f32(n - 1))].
    std::vector<float>& sorted = t_sorted;
    sorted.assign(importance.begin(), importance.end());
    auto quantile = [&](double q) {
      const auto index = static_cast<size_t>(static_cast<float>(q) * static_cast<float>(n - 1));
      std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(index),
                       sorted.end());
      return sorted[index];
    };
    const float median = quantile(0.5), q1 = quantile(0.25), q3 = quantile(0.75);
    const float threshold = rnd(median + rnd(1.5f * rnd(q3 - q1)));

    parallel_for_checked(ctx, "arcee_fusion", n, [&](size_t lo, size_t hi) {
      size_t bad = 0;
      for (size_t j = lo; j < hi; ++j) {
        const float delta = rnd(x[j] - base[j]);
        // delta * 0 keeps the sign of zero that torch's float32 mask multiplication gives.
        out[j] = base[j] + (importance[j] >= threshold ? delta : delta * 0.0f);
        bad += is_non_finite(out[j]);
      }
      return bad;
    });
  }

  // p = rnd(rnd(softmax(values)) + eps): float32 max, e_j = exp(v_j - max), s = sum e_j,
  // softmax_j = rnd(e_j * (1 / s)).
  template <class R>
  static void softmax(R rnd, const float* values, size_t length, float eps, float* p) {
    float max = -INFINITY;
    for (size_t j = 0; j < length; ++j) max = std::max(max, values[j]);
    // Eight float32 lanes (torch's AVX2 vectors), then the lanes added pairwise.
    float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t whole = length - length % 8;
    for (size_t j = 0; j < length; ++j) {
      p[j] = std::exp(values[j] - max);
      if (j < whole) lanes[j % 8] += p[j];
    }
    float sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
                ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for (size_t j = whole; j < length; ++j) sum += p[j];
    const float reciprocal = 1.0f / sum;
    for (size_t j = 0; j < length; ++j) p[j] = rnd(rnd(p[j] * reciprocal) + eps);
  }
};

}  // namespace

const MergeMethod& arcee_fusion_method() {
  static const ArceeFusionMethod method;
  return method;
}

}  // namespace alloy::detail
