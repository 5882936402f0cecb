// The rebuild check: the recovered recipe is planned exactly as alloy-merge plans it (the same
// parser and planner) and a few of its tensors are merged through the same methods; the result
// is compared with the suspect bit for bit. A clean merge rebuilds exactly, or within one unit in
// the last place where the original's compute dtype differed; a wrong method or wrong weights do
// not. Random methods (DARE) cannot reproduce the masks without the seed, so for them the check
// reports the error only.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
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

// One sampled tensor of the check: the planned merge, the suspect's tensor, and each source's
// tensor with its LoRA change (`base+adapter` in a claim), if any.
struct Patch {
  const LoraAdapter* adapter = nullptr;
  const LoraModule* module = nullptr;
};
struct CheckedTensor {
  const PlannedTensor& planned;
  const ModelTensor& target;
  std::vector<const ModelTensor*> inputs;
  std::vector<Patch> patches;
};

int ulp_shift(DType dtype) { return dtype == DType::BF16 ? 16 : dtype == DType::F16 ? 13 : 0; }

// The whole-tensor check, for a method without a chunked form or a source with a LoRA change (the
// adapter patches whole tensors): every source's and the result's floats held at once, as
// alloy-merge's whole-tensor path holds them. Buffers are reused by every call on this thread.
void check_whole(const CheckedTensor& check, const MergeMethod& method, MergeContext& ctx, Compared& c) {
  static thread_local std::vector<std::vector<float>> inputs;
  static thread_local std::vector<float> merged_buffer, expected_buffer;
  static thread_local std::vector<uint8_t> raw_buffer;  // a tensor's bytes, read with pread (the mapping is never faulted in)
  const PlannedTensor& t = check.planned;
  const uint64_t n = check.target.info->numel();
  if (inputs.size() < check.inputs.size()) inputs.resize(check.inputs.size());
  for (size_t k = 0; k < check.inputs.size(); ++k) {
    const ModelTensor& in = *check.inputs[k];
    float* values = at_least(inputs[k], n);
    uint8_t* raw = at_least(raw_buffer, in.info->nbytes());
    in.shard->read(*in.info, 0, in.info->nbytes(), raw);
    if (check.patches[k].module) check.patches[k].adapter->patch(*check.patches[k].module, in.info->dtype, raw, values);
    load_as_f32(in.info->dtype, raw, n, values);
    if (in.info->dtype != t.compute_dtype) round_to(t.compute_dtype, values, n);
    ctx.sources[k].values = values;
  }
  float* merged = at_least(merged_buffer, n);
  float* expected = at_least(expected_buffer, n);
  method.merge(ctx, merged);
  round_to(t.out_dtype, merged, n);
  uint8_t* raw = at_least(raw_buffer, check.target.info->nbytes());
  check.target.shard->read(*check.target.info, 0, check.target.info->nbytes(), raw);
  load_as_f32(check.target.info->dtype, raw, n, expected);
  compare(merged, expected, n, ulp_shift(check.target.info->dtype), c);
}

// The check through the method's chunked form, as alloy-merge's chunked executor runs it: sources
// read range by range (the sparsified methods' passes in prepare(), then chunk by chunk), the
// result merged and compared one window at a time. Memory is a window and a chunk per source and
// thread, whatever the tensor's size and the number of sources (the whole-tensor form held every
// source's floats: the 8-candidate peak of docs/performance.md). The window is a multiple of 8
// elements, so compare() gives each element the lane and the order the whole tensor gives it: the
// same bits.
void check_in_windows(const CheckedTensor& check, ChunkedMerge& merge, const std::string& method, Compared& c) {
  constexpr size_t kWindow = 16 * kDefaultGrain;
  static_assert(kWindow % kLanes == 0);
  static thread_local std::vector<float> merged_buffer, expected_buffer;
  const PlannedTensor& t = check.planned;
  const uint64_t n = check.target.info->numel();
  const size_t count = check.inputs.size();
  // Elements [begin, begin + len) of source k as the whole-tensor path has them.
  const auto load = [&](size_t k, uint64_t begin, size_t len, float* dst) {
    const ModelTensor& in = *check.inputs[k];
    load_range(in, begin, len, dst);
    if (in.info->dtype != t.compute_dtype) round_to(t.compute_dtype, dst, len);
  };
  // Runs body(sources, begin, len) over the chunks of [first, first + len), in parallel, with every
  // source's chunk in this thread's scratch; returns the sum of what body returns.
  const auto over_chunks = [&](uint64_t first, size_t len, auto&& body) {
    return parallel_reduce(len, kDefaultGrain, size_t{0}, [&](size_t lo, size_t hi) -> size_t {
      static thread_local std::vector<float> scratch;
      float* rows = at_least(scratch, count * kDefaultGrain);
      const float* sources[kMaxVectors + 1];
      std::vector<const float*> many(count > kMaxVectors + 1 ? count : 0);
      const float** ptrs = many.empty() ? sources : many.data();
      for (size_t k = 0; k < count; ++k) {
        load(k, first + lo, hi - lo, rows + k * kDefaultGrain);
        ptrs[k] = rows + k * kDefaultGrain;
      }
      return body(ptrs, lo, hi - lo);
    }, [](size_t a, size_t b) { return a + b; });
  };
  merge.prepare(load);
  rethrow_read_error();
  if (const size_t sums = merge.sum_count(); sums > 0) {
    // Partial sums per fixed chunk, added in chunk order (ChunkedMerge's contract).
    const size_t chunks = static_cast<size_t>((n + kDefaultGrain - 1) / kDefaultGrain);
    std::vector<double> partial(chunks * sums, 0.0);
    over_chunks(0, static_cast<size_t>(n), [&](const float* const* sources, size_t lo, size_t len) -> size_t {
      merge.chunk_sums(sources, len, partial.data() + lo / kDefaultGrain * sums);
      return 0;
    });
    rethrow_read_error();
    set_sums_in_chunk_order(merge, partial);
  }
  // A window, or the whole tensor when it is smaller: a sampled assay checks tensors of a few
  // thousand elements, and two fresh 2 MiB windows per thread were most of its check's time.
  const size_t window = static_cast<size_t>(std::min<uint64_t>(kWindow, n));
  float* merged = at_least(merged_buffer, window);
  float* expected = at_least(expected_buffer, window);
  size_t bad = 0;
  for (uint64_t first = 0; first < n; first += kWindow) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kWindow, n - first));
    bad += over_chunks(first, len, [&](const float* const* sources, size_t lo, size_t chunk) {
      return merge.merge_chunk(sources, first + lo, chunk, merged + lo);
    });
    rethrow_read_error();
    round_to(t.out_dtype, merged, len);
    load_range(check.target, first, len, expected);
    rethrow_read_error();
    compare(merged, expected, len, ulp_shift(check.target.info->dtype), c);
  }
  if (bad > 0) {
    throw Error(ErrorCode::kNonFinite, "tensor " + t.name + ": the " + method + " merge gives " + std::to_string(bad) +
                                           " NaN or infinite values");
  }
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
  for (const auto& name : tensor_names) {
    const auto it = std::find_if(plan.tensors.begin(), plan.tensors.end(),
                                 [&](const PlannedTensor& t) { return t.name == name; });
    const ModelTensor* target = suspect.find(name);
    if (it == plan.tensors.end() || !target || target->info->shape != it->shape) continue;
    CheckedTensor check{*it, *target, {}, {}};
    MergeContext ctx = planned_context(check.planned, 0);
    bool usable = true;
    for (const PlannedSource& s : check.planned.sources) {
      const ModelTensor* in = plan.models[s.model]->find(s.tensor);
      usable = in && in->info->shape == check.planned.shape;
      if (!usable) break;
      const LoraAdapter* adapter = s.model < plan.adapters.size() ? plan.adapters[s.model].get() : nullptr;
      check.inputs.push_back(in);
      check.patches.push_back({adapter, adapter ? adapter->find(s.tensor) : nullptr});
      ctx.sources.push_back({nullptr, s.params, s.is_base, plan.model_names[s.model]});
    }
    if (!usable) continue;
    const bool patched = std::any_of(check.patches.begin(), check.patches.end(), [](const Patch& p) { return p.module; });
    std::unique_ptr<ChunkedMerge> chunked = patched ? nullptr : plan.method->chunked(ctx);
    if (chunked) {
      check_in_windows(check, *chunked, std::string(plan.method->name()), c);
    } else {
      check_whole(check, *plan.method, ctx, c);
    }
    elements += target->info->numel();
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
