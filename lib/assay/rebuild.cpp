// The rebuild check: the recovered recipe is planned exactly as alloy-merge plans it (the same
// parser and planner) and a few of its tensors are merged through the same methods; the result
// is compared with the suspect bit for bit. A clean merge rebuilds exactly, or within one unit in
// the last place where the original's compute dtype differed; a wrong method or wrong weights do
// not. Random methods (DARE) cannot reproduce the masks without the seed, so for them the check
// reports the error only.
#include <algorithm>
#include <cmath>

#include "alloy/core/error.h"
#include "alloy/merge/lora.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "internal.h"

namespace alloy::detail {
namespace {

// Distance in units of the last place (shifted right by `shift`: 16 for bf16, 13 for f16) between
// two values representable in the target dtype.
inline uint64_t ulp_distance(float a, float b, int shift) {
  const auto ordered = [](float x) {
    const uint32_t u = float_to_bits(x);
    return (u & 0x80000000u) ? int64_t(0x80000000u) - int64_t(u & 0x7FFFFFFFu) : int64_t(0x80000000u) + int64_t(u);
  };
  const int64_t d = ordered(a) - ordered(b);
  return uint64_t(d < 0 ? -d : d) >> shift;
}

// The comparison's running figures. Element i of a tensor goes to lane i % kLanes, and the lanes are
// summed in a fixed order at the end: the sums no longer wait on one another (a serial chain of
// double adds was most of this check's time), and the result is the same for any thread count.
constexpr size_t kLanes = 8;
struct Compared {
  uint64_t exact[kLanes] = {}, max_ulp[kLanes] = {};
  double err2[kLanes] = {}, ref2[kLanes] = {};
};

// Adds `merged` against `expected` (n values) to `c`. No FMA target, so both clones round alike.
__attribute__((target_clones("avx2", "default"))) void compare(const float* merged, const float* expected, size_t n,
                                                               int shift, Compared& out) {
  Compared c = out;  // a local copy the compiler can keep in registers
  const auto one = [&](size_t lane, size_t i) {
    c.exact[lane] += merged[i] == expected[i];
    c.max_ulp[lane] = std::max(c.max_ulp[lane], ulp_distance(merged[i], expected[i], shift));
    const double d = double(merged[i]) - double(expected[i]);
    c.err2[lane] += d * d;
    c.ref2[lane] += double(expected[i]) * double(expected[i]);
  };
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t lane = 0; lane < kLanes; ++lane) one(lane, i + lane);
  }
  for (size_t lane = 0; i < n; ++i, ++lane) one(lane, i);
  out = c;
}

// Grows `v` to at least n elements (never shrinks it) and returns its data. The check runs once per
// hypothesis, several per assay: vectors made afresh for each paid a zero-fill and a page fault per
// 4 KiB of every tensor each time (18% of the CPU samples of a 1 GB assay).
template <class T>
T* at_least(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

nlohmann::json rebuild_check(const nlohmann::json& recipe, const Model& suspect,
                             const std::vector<std::string>& tensor_names) {
  return rebuild_check_plan(plan_merge(parse_recipe(recipe_to_yaml(recipe), "recovered recipe"), PlanOptions{}), suspect,
                       tensor_names);
}

nlohmann::json rebuild_check_plan(const MergePlan& plan, const Model& suspect, const std::vector<std::string>& tensor_names) {
  nlohmann::json out = {{"tensors", 0}, {"elements", 0}};
  uint64_t elements = 0, tensors = 0;
  Compared c;
  // Reused by every call on this thread (at_least).
  static thread_local std::vector<std::vector<float>> inputs;
  static thread_local std::vector<float> merged_buffer, expected_buffer;
  static thread_local std::vector<uint8_t> raw_buffer;  // a tensor's bytes, read with pread (the mapping is never faulted in)
  for (const auto& name : tensor_names) {
    const auto it = std::find_if(plan.tensors.begin(), plan.tensors.end(),
                                 [&](const PlannedTensor& t) { return t.name == name; });
    const ModelTensor* target = suspect.find(name);
    if (it == plan.tensors.end() || !target || target->info->shape != it->shape) continue;
    const PlannedTensor& t = *it;
    const uint64_t n = target->info->numel();
    MergeContext ctx = planned_context(t, 0);
    if (inputs.size() < t.sources.size()) inputs.resize(t.sources.size());
    bool usable = true;
    for (size_t k = 0; k < t.sources.size() && usable; ++k) {
      const PlannedSource& s = t.sources[k];
      const ModelTensor* in = plan.models[s.model]->find(s.tensor);
      usable = in && in->info->shape == t.shape;
      if (!usable) break;
      float* values = at_least(inputs[k], n);
      // A model with a LoRA adapter (`base+adapter` in the claim) is read with its change added.
      uint8_t* raw = at_least(raw_buffer, in->info->nbytes());
      in->shard->read(*in->info, 0, in->info->nbytes(), raw);
      const LoraAdapter* adapter = s.model < plan.adapters.size() ? plan.adapters[s.model].get() : nullptr;
      if (const LoraModule* lora = adapter ? adapter->find(s.tensor) : nullptr) {
        adapter->patch(*lora, in->info->dtype, raw, values);
      }
      load_as_f32(in->info->dtype, raw, n, values);
      if (in->info->dtype != t.compute_dtype) round_to(t.compute_dtype, values, n);
      ctx.sources.push_back({values, s.params, s.is_base, plan.model_names[s.model]});
    }
    if (!usable) continue;
    float* merged = at_least(merged_buffer, n);
    float* expected = at_least(expected_buffer, n);
    plan.method->merge(ctx, merged);
    round_to(t.out_dtype, merged, n);
    uint8_t* raw = at_least(raw_buffer, target->info->nbytes());
    target->shard->read(*target->info, 0, target->info->nbytes(), raw);
    load_as_f32(target->info->dtype, raw, n, expected);
    const DType dtype = target->info->dtype;
    compare(merged, expected, n, dtype == DType::BF16 ? 16 : dtype == DType::F16 ? 13 : 0, c);
    elements += n;
    ++tensors;
  }
  out["tensors"] = tensors;
  out["elements"] = elements;
  if (elements > 0) {
    uint64_t exact = 0, max_ulp = 0;
    double err2 = 0, ref2 = 0;
    for (size_t lane = 0; lane < kLanes; ++lane) {
      exact += c.exact[lane];
      max_ulp = std::max(max_ulp, c.max_ulp[lane]);
      err2 += c.err2[lane];
      ref2 += c.ref2[lane];
    }
    out["exact_fraction"] = double(exact) / double(elements);
    out["max_ulp"] = max_ulp;
    out["relative_error"] = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  }
  return out;
}

}  // namespace alloy::detail
