// model_stock: moves the average of the fine-tunes towards the base by a ratio taken from the angle
// between their task vectors (Jang et al. 2024, "Model Stock", arXiv:2403.19522;
// mergekit/merge_methods/model_stock.py). With N fine-tunes x_i, o_i = rnd(x_i - base), per vector
// (the flattened tensor, or with filter_wise each fiber along the last dim), every torch
// operation rounded to D:
//   c_ij = clamp(rnd(rnd(sum rnd(o_i o_j)) / max(rnd(n_i n_j), wD(1e-6))), -1, 1),
//          n_i = rnd(sqrt(sum o_i^2))                                   for the pairs i < j
//   cos  = rnd(rnd(sum_pairs c_ij) / #pairs)
//   t    = rnd(rnd(N cos) / rnd(1 + rnd((N - 1) cos)))
//   avg  = rnd(rnd(rnd(rnd(0 + x_1) + x_2) + ...) / N)                  (Python's sum())
//   out  = rnd(rnd(t avg) + rnd(rnd(1 - t) base))
// The sums over elements accumulate in double (torch: float32, pairwise): within 1 ulp.
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class ModelStockMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "model_stock"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"filter_wise", false, 0.0, false}};
  }
  bool requires_base_model() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    const size_t base_index = require_base(ctx, "model_stock");
    if (ctx.sources.size() == 1) {  // only the base: mergekit returns it
      copy_source(ctx, base_index, out);
      return;
    }
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.size() < 2) {
      fail_recipe(
          ctx, "model_stock",
          "needs at least two models besides the base; got " + std::to_string(others.size()));
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, base_index, others, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, size_t base_index,
                  const std::vector<size_t>& others, float* out) {
    const float* base = ctx.sources[base_index].values;
    std::vector<const float*> models;
    for (size_t k : others) models.push_back(ctx.sources[k].values);
    const size_t count = models.size();
    const size_t pairs = count * (count - 1) / 2;
    const size_t n = ctx.numel();
    const bool filter_wise = method_flag(ctx, "filter_wise", false);
    const size_t length = filter_wise && !ctx.shape.empty() ? ctx.shape.back() : n;
    if (n == 0 || length == 0) return;
    const size_t vectors = n / length;
    const float n_d = rnd.param(static_cast<double>(count)),
                n_minus_1 = rnd.param(static_cast<double>(count - 1));
    const float pairs_d = rnd.param(static_cast<double>(pairs)), min_product = rnd.param(1e-6);

    // Accumulates, over [lo, hi), sums[m] = sum o_m^2 (m < count) and then, pair by pair (a < b),
    // sums[count + p] = sum rnd(o_a o_b). Blocks of elements, models outer: the loops vectorise.
    constexpr size_t kBlock = 256;
    auto accumulate = [&](size_t lo, size_t hi, std::vector<double>& sums) {
      std::vector<float> o(count * kBlock);
      for (size_t b0 = lo; b0 < hi; b0 += kBlock) {
        const size_t len = std::min(kBlock, hi - b0);
        for (size_t m = 0; m < count; ++m) {
          float* om = o.data() + m * kBlock;
          for (size_t j = 0; j < len; ++j) om[j] = rnd(models[m][b0 + j] - base[b0 + j]);
          sums[m] += lane_sum(len, [&](size_t j) { return double(om[j]) * om[j]; });
        }
        size_t p = count;
        for (size_t a = 0; a < count; ++a) {
          for (size_t b = a + 1; b < count; ++b) {
            const float* oa = o.data() + a * kBlock;
            const float* ob = o.data() + b * kBlock;
            sums[p++] += lane_sum(len, [&](size_t j) { return double(rnd(oa[j] * ob[j])); });
          }
        }
      }
    };
    // The interpolation ratio t of one vector from its sums.
    auto ratio = [&](const std::vector<double>& sums) {
      std::vector<float> norms(count);
      for (size_t m = 0; m < count; ++m) norms[m] = rnd(static_cast<float>(std::sqrt(sums[m])));
      float cos_sum = 0.0f;
      size_t p = count;
      for (size_t a = 0; a < count; ++a) {
        for (size_t b = a + 1; b < count; ++b) {
          const float dot = rnd(static_cast<float>(sums[p++]));
          const float denominator = std::max(rnd(norms[a] * norms[b]), min_product);
          cos_sum += std::clamp(rnd(dot / denominator), -1.0f, 1.0f);
        }
      }
      const float cos = rnd(rnd(cos_sum) / pairs_d);
      return rnd(rnd(n_d * cos) / rnd(1.0f + rnd(n_minus_1 * cos)));
    };
    // Writes out[lo, hi) for ratio t; returns the number of non-finite values written.
    auto interpolate = [&](float t, size_t lo, size_t hi) {
      const float one_minus_t = rnd(1.0f - t);
      float sum[kBlock];
      size_t bad = 0;
      for (size_t b0 = lo; b0 < hi; b0 += kBlock) {
        const size_t len = std::min(kBlock, hi - b0);
        for (size_t j = 0; j < len; ++j)
          sum[j] = 0.0f + models[0][b0 + j];  // Python's sum() starts from 0
        for (size_t m = 1; m < count; ++m) {
          for (size_t j = 0; j < len; ++j) sum[j] = rnd(sum[j] + models[m][b0 + j]);
        }
        float* o = out + b0;
        for (size_t j = 0; j < len; ++j)
          o[j] = rnd(rnd(t * rnd(sum[j] / n_d)) + rnd(one_minus_t * base[b0 + j]));
        bad += chunk_non_finite(o, len);
      }
      return bad;
    };
    const size_t slots = count + pairs;

    if (vectors == 1) {
      const std::vector<double> sums = parallel_reduce(
          n, kDefaultGrain, std::vector<double>(slots, 0.0),
          [&](size_t lo, size_t hi) {
            std::vector<double> s(slots, 0.0);
            accumulate(lo, hi, s);
            return s;
          },
          [](std::vector<double> acc, const std::vector<double>& part) {
            for (size_t k = 0; k < acc.size(); ++k) acc[k] += part[k];
            return acc;
          });
      const float t = ratio(sums);
      parallel_for_checked(ctx, "model_stock", n,
                           [&](size_t lo, size_t hi) { return interpolate(t, lo, hi); });
      return;
    }

    parallel_for_checked(
        ctx, "model_stock", vectors,
        [&](size_t vb, size_t ve) {
          size_t bad = 0;
          std::vector<double> sums(slots);
          for (size_t v = vb; v < ve; ++v) {
            std::fill(sums.begin(), sums.end(), 0.0);
            accumulate(v * length, (v + 1) * length, sums);
            bad += interpolate(ratio(sums), v * length, (v + 1) * length);
          }
          return bad;
        },
        std::max<size_t>(1, kDefaultGrain / length));
  }
};

}  // namespace

const MergeMethod& model_stock_method() {
  static const ModelStockMethod method;
  return method;
}

}  // namespace alloy::detail
