// passthrough: copies its single source, optionally scaled (mergekit/merge_methods/passthrough.py):
//   out = x,  or  out = rnd(x * wD(scale))  when the model has a `scale`.
// With slices it stacks layers of different models ("frankenmerges"); the planner does that.
#include <cstring>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class PassthroughMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "passthrough"; }
  std::vector<MethodParameter> parameters() const override {
    return {{"scale", true, std::nullopt, false}};
  }
  CropPolicy crop_policy() const override { return CropPolicy::kNone; }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.size() != 1) {
      fail_recipe(ctx, "passthrough",
                  "takes exactly one source per slice, got " + std::to_string(ctx.sources.size()));
    }
    const MergeSource& source = ctx.sources[0];
    const auto scale = source.params.find("scale");
    if (scale == source.params.end()) {
      copy_source(ctx, 0, out);
      return;
    }
    with_rounding(ctx.compute_dtype, [&](auto rnd) {
      const float s = rnd.param(scale->second);
      const float* x = source.values;
      parallel_for_checked(ctx, "passthrough", ctx.numel(), [&](size_t begin, size_t end) {
        size_t bad = 0;
        for (size_t i = begin; i < end; ++i) {
          out[i] = rnd(x[i] * s);
          bad += is_non_finite(out[i]);
        }
        return bad;
      });
    });
  }
};

}  // namespace

const MergeMethod& passthrough_method() {
  static const PassthroughMethod method;
  return method;
}

}  // namespace alloy::detail
