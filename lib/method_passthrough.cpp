// passthrough: copies its single source, optionally scaled (mergekit/merge_methods/passthrough.py).
// With slices it stacks layers from different models ("frankenmerges").
#include <cstring>

#include "alloy/parallel.h"
#include "method_util.h"

namespace alloy::detail {
namespace {

class PassthroughMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "passthrough"; }
  std::vector<MethodParameter> parameters() const override { return {{"scale", true, std::nullopt, false}}; }
  CropPolicy crop_policy() const override { return CropPolicy::kNone; }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.size() != 1) {
      throw Error(ErrorCode::kRecipe, "passthrough takes exactly one source per slice (tensor '" +
                                          ctx.tensor_name + "' has " + std::to_string(ctx.sources.size()) + ")");
    }
    const MergeSource& source = ctx.sources[0];
    const auto scale = source.params.find("scale");
    if (scale == source.params.end()) {
      std::memcpy(out, source.values, ctx.numel() * sizeof(float));
      return;
    }
    const Rounder rnd{ctx.compute_dtype};
    const float s = rnd.param(scale->second);
    parallel_for(ctx.numel(), kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) out[i] = rnd(source.values[i] * s);
    });
    check_finite(ctx, out, "passthrough");
  }
};

}  // namespace

const MergeMethod& passthrough_method() {
  static const PassthroughMethod method;
  return method;
}

}  // namespace alloy::detail
