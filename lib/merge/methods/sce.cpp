// sce: Select, Calculate, Erase (FuseChat 2.0, Wan et al. 2024, arXiv:2408.07990;
// mergekit/merge_methods/sce.py). With M fine-tunes, d_i = rnd(x_i - base), every torch operation
// rounded to D:
//   select (select_topk < 1): var_j = rnd(population variance over i of d_ij) (torch.var,
//     unbiased=False); k = int(f32(count of var_j != 0) * f32(select_topk)); the k elements of
//     largest var_j keep their entries in every d_i, the others become 0 (k == 0 or
//     select_topk <= 0: all become 0).
//   calculate: w_i = rnd(rnd(sum_j rnd(d_ij^2)) / wD(numel)); S = rnd(sum_i w_i);
//     w_i = rnd(w_i / S), or rnd(1 / wD(M)) each when |S| < 1e-6.
//   erase: sgn_j = +1 if rnd(sum_i d_ij) >= 0 else -1; e_ij = sign(d_ij) == sgn_j (zeros never).
//   out_j = rnd(base_j + rnd(rnd(sum_i rnd(d_ij * e_ij w_i)) / max(rnd(sum_i e_ij w_i), wD(1e-6))))
// Sums over models are float32 in source order with one rnd; sums over elements accumulate in
// double (torch: float32, pairwise), so results are within 1 ulp. The top-k ranks equal variances
// by ascending flat index (torch.topk's tie order is unspecified).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

thread_local std::vector<uint32_t> t_keys;      // the variance keys of one tensor, reused
thread_local std::vector<uint64_t> t_selected;  // the top-k mask, one bit per element

class SceMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "sce"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"select_topk", false, 1.0, false, 0.0, 1.0},
            {"int8_mask", false, 0.0, false}};  // accepted; changes no bit of the result
  }
  bool requires_base_model() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    const size_t base_index = require_base(ctx, "sce");
    const std::vector<size_t> others = non_base_sources(ctx);
    if (others.empty()) {  // mergekit returns the base when there is no task vector
      copy_source(ctx, base_index, out);
      return;
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) { run(ctx, rnd, base_index, others, out); });
  }

 private:
  template <class R>
  static void run(const MergeContext& ctx, R rnd, size_t base_index,
                  const std::vector<size_t>& others, float* out) {
    const size_t n = ctx.numel(), count = others.size();
    const float* base = ctx.sources[base_index].values;
    std::vector<const float*> x;
    for (size_t k : others) x.push_back(ctx.sources[k].values);
    auto delta = [&](size_t m, size_t j) { return rnd(x[m][j] - base[j]); };

    // Select: which elements keep their task-vector entries.
    const double topk = method_param(ctx, "select_topk", 1.0);
    const uint64_t* selected = nullptr;  // null: every element kept
    std::vector<uint64_t>& words = t_selected;
    if (topk < 1.0) {
      words.assign((n + 63) / 64, 0);
      if (topk > 0.0) select_top_variance(rnd, n, count, delta, topk, words);
      selected = words.data();
    }
    auto masked = [&](size_t m, size_t j) {
      const float d = delta(m, j);
      return selected == nullptr || ((selected[j >> 6] >> (j & 63)) & 1u) ? d : 0.0f;
    };

    // Calculate: each model's weight, the mean square of its (selected) task vector.
    const std::vector<double> squares = parallel_reduce(
        n, kDefaultGrain, std::vector<double>(count, 0.0),
        [&](size_t lo, size_t hi) {
          std::vector<double> s(count);
          for (size_t m = 0; m < count; ++m) {
            s[m] = lane_sum(hi - lo, [&](size_t j) {
              const float d = masked(m, lo + j);
              return double(rnd(d * d));
            });
          }
          return s;
        },
        [](std::vector<double> acc, const std::vector<double>& part) {
          for (size_t m = 0; m < acc.size(); ++m) acc[m] += part[m];
          return acc;
        });
    const float numel_d = rnd.param(static_cast<double>(n));
    std::vector<float> weights(count);
    float weight_sum = 0.0f;
    for (size_t m = 0; m < count; ++m) {
      weights[m] = rnd(rnd(static_cast<float>(squares[m])) / numel_d);
      weight_sum += weights[m];
    }
    weight_sum = rnd(weight_sum);
    for (float& w : weights) {
      w = std::fabs(double(weight_sum)) < 1e-6 ? rnd(1.0f / rnd.param(static_cast<double>(count)))
                                               : rnd(w / weight_sum);
    }
    const float min_divisor = rnd.param(1e-6);

    // Erase and combine, per element.
    parallel_for_checked(ctx, "sce", n, [&](size_t lo, size_t hi) {
      size_t bad = 0;
      for (size_t j = lo; j < hi; ++j) {
        float vote = 0.0f;
        for (size_t m = 0; m < count; ++m) vote += masked(m, j);
        const float sign = rnd(vote) >= 0.0f ? 1.0f : -1.0f;
        float mixed = 0.0f, divisor = 0.0f;
        for (size_t m = 0; m < count; ++m) {
          const float d = masked(m, j);
          const bool agrees = d * sign > 0.0f;
          mixed += keep_or_zero(rnd(d * weights[m]), agrees);
          divisor += keep_or_zero(weights[m], agrees);
        }
        out[j] = rnd(base[j] + rnd(rnd(mixed) / std::max(rnd(divisor), min_divisor)));
        bad += is_non_finite(out[j]);
      }
      return bad;
    });
  }

  // Sets the bits of the k = int(f32(nonzero) * f32(topk)) elements whose variance across the
  // task vectors (rounded to D) is largest; equal variances rank by ascending index.
  template <class R, class Delta>
  static void select_top_variance(R rnd, size_t n, size_t count, const Delta& delta, double topk,
                                  std::vector<uint64_t>& words) {
    std::vector<uint32_t>& keys = t_keys;
    keys.resize(n);
    parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
      for (size_t j = lo; j < hi; ++j) {
        double mean = 0.0;
        for (size_t m = 0; m < count; ++m) mean += delta(m, j);
        mean /= static_cast<double>(count);
        double var = 0.0;
        for (size_t m = 0; m < count; ++m) {
          const double c = delta(m, j) - mean;
          var += c * c;
        }
        const float v = rnd(static_cast<float>(var / static_cast<double>(count)));
        std::memcpy(&keys[j], &v, 4);  // v >= 0: its bits order as its value
      }
    });
    const size_t nonzero = static_cast<size_t>(std::count_if(
        keys.begin(), keys.end(), [](uint32_t key) { return (key & 0x7FFFFFFFu) != 0; }));
    const auto k = static_cast<size_t>(static_cast<float>(nonzero) * static_cast<float>(topk));
    if (k == 0) return;
    // The k-th largest key, then every larger key and the first (lowest-index) equal ones.
    std::vector<uint32_t> order(keys);
    std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1), order.end(),
                     std::greater<uint32_t>());
    const uint32_t cut = order[k - 1];
    std::vector<uint32_t>().swap(order);
    size_t equal_left = k;  // how many elements with key == cut are kept
    for (uint32_t key : keys) equal_left -= key > cut;
    for (size_t j = 0; j < n; ++j) {
      bool keep = keys[j] > cut;
      if (keys[j] == cut && equal_left > 0) {
        keep = true;
        --equal_left;
      }
      words[j >> 6] |= uint64_t{keep} << (j & 63);
    }
  }
};

}  // namespace

const MergeMethod& sce_method() {
  static const SceMethod method;
  return method;
}

}  // namespace alloy::detail
