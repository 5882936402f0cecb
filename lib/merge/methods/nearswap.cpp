// nearswap: takes the fine-tune's value where it is within a distance t of the base, and moves
// toward it less the farther it is (alchemonaut's NearSwap, QuartetAnemoi-70B-t0.0001;
// mergekit/merge_methods/nearswap.py). One model besides the base; per element, every torch
// operation rounded to D:
//   d = rnd(|base - x|),  c = max(d, wD(1e-6))
//   w = clamp(rnd(rnd(1 / c) * wD(t)), 0, 1)        (torch evaluates t / c as reciprocal(c) * t)
//   out = rnd(rnd(w x) + rnd(rnd(1 - w) base))
// Element-wise, so it has a chunked form.
#include <algorithm>
#include <cmath>

#include "method_util.h"

namespace alloy::detail {
namespace {

class NearSwapMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "nearswap"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"t", false, std::nullopt, true, 0.0}};
  }
  bool requires_base_model() const override { return true; }
  bool merges_in_place() const override { return true; }  // element i read before it is written
  void merge(const MergeContext& ctx, float* out) const override {
    run_chunked(*chunked(ctx), ctx, "nearswap", out);
  }
  std::unique_ptr<ChunkedMerge> chunked(const MergeContext& ctx) const override;

 private:
  template <class R>
  class Chunk final : public ChunkedMerge {
   public:
    Chunk(const MergeContext& ctx, R rnd, size_t base, int other)
        : rnd_(rnd), base_(base), other_(other) {
      t_ = rnd.param(require_param(ctx));
      min_distance_ = rnd.param(1e-6);
    }
    size_t merge_chunk(const float* const* sources, size_t, size_t len, float* out) const override {
      const R rnd = rnd_;
      const float* base = sources[base_];
      size_t bad = 0;
      if (other_ < 0) {  // only the base: mergekit returns it
        for (size_t j = 0; j < len; ++j) {
          out[j] = base[j];
          bad += is_non_finite(out[j]);
        }
        return bad;
      }
      const float* x = sources[other_];
      const float t = t_, min_distance = min_distance_;
      for (size_t j = 0; j < len; ++j) {
        const float distance = std::max(std::fabs(rnd(base[j] - x[j])), min_distance);
        const float w = std::clamp(rnd(rnd(1.0f / distance) * t), 0.0f, 1.0f);
        out[j] = rnd(rnd(w * x[j]) + rnd(rnd(1.0f - w) * base[j]));
        bad += is_non_finite(out[j]);
      }
      return bad;
    }

   private:
    static double require_param(const MergeContext& ctx) {
      const auto it = ctx.params.find("t");
      if (it == ctx.params.end()) fail_recipe(ctx, "nearswap", "needs parameter 't'");
      return it->second;
    }
    R rnd_;
    size_t base_;
    int other_;
    float t_ = 0.0f, min_distance_ = 0.0f;
  };
};

std::unique_ptr<ChunkedMerge> NearSwapMethod::chunked(const MergeContext& ctx) const {
  const size_t base = require_base(ctx, "nearswap");
  const std::vector<size_t> others = non_base_sources(ctx);
  if (others.size() > 1) {
    fail_recipe(ctx, "nearswap",
                "merges exactly one model into the base; got " + std::to_string(others.size()));
  }
  const int other = others.empty() ? -1 : static_cast<int>(others[0]);
  return with_rounding(ctx.compute_dtype, [&](auto rnd) -> std::unique_ptr<ChunkedMerge> {
    return std::make_unique<Chunk<decltype(rnd)>>(ctx, rnd, base, other);
  });
}

}  // namespace

const MergeMethod& nearswap_method() {
  static const NearSwapMethod method;
  return method;
}

}  // namespace alloy::detail
