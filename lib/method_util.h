// Private helpers shared by the merge methods (lib/method_*.cpp).
//
// Every method reproduces mergekit's torch arithmetic in the compute dtype D: each operation is
// done in float32 and its result rounded to D (rnd), and every scalar parameter is rounded to
// float32 then to D before use (wD). See docs/methods.md.
#pragma once

#include <cmath>
#include <string>

#include "alloy/dtype.h"
#include "alloy/error.h"
#include "alloy/merge_method.h"

namespace alloy::detail {

// rnd(): rounds a float32 result to the compute dtype.
struct Rounder {
  DType dtype;
  float operator()(float x) const { return round_to(dtype, x); }
  // wD(): a double parameter as torch sees it in dtype D.
  float param(double value) const { return round_to(dtype, static_cast<float>(value)); }
};

// A resolved per-model parameter, or `fallback` when unset.
inline double source_param(const MergeSource& source, const std::string& name, double fallback) {
  const auto it = source.params.find(name);
  return it == source.params.end() ? fallback : it->second;
}

// A required per-model parameter; throws naming the tensor and the model when unset.
double require_source_param(const MergeContext& ctx, const MergeSource& source, const std::string& name);

// A method-level parameter, or `fallback` when unset.
inline double method_param(const MergeContext& ctx, const std::string& name, double fallback) {
  const auto it = ctx.params.find(name);
  return it == ctx.params.end() ? fallback : it->second;
}

// Throws Error(kNonFinite) naming the tensor when `out` holds NaN or infinity.
void check_finite(const MergeContext& ctx, const float* out, const char* method);

// Index of the base source; throws when the method needs one and there is none.
size_t require_base(const MergeContext& ctx, const char* method);

// A deterministic hash of a 64-bit counter (splitmix64 finaliser), for random masks.
inline uint64_t mix_bits(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0, 1) for element `index` of stream `stream`.
inline double uniform01(uint64_t stream, uint64_t index) {
  return static_cast<double>(mix_bits(stream + index * 0x9E3779B97F4A7C15ull) >> 11) * 0x1p-53;
}

// The method objects; the registry lists them.
const MergeMethod& linear_method();
const MergeMethod& slerp_method();
const MergeMethod& nuslerp_method();
const MergeMethod& passthrough_method();
const MergeMethod& model_stock_method();
std::vector<const MergeMethod*> task_arithmetic_family();

}  // namespace alloy::detail
