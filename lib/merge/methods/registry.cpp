// The registry of merge methods: one explicit list (no static-initialisation tricks, which a
// static library would silently drop), looked up by name; and the helpers of method_util.h.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy {

uint64_t MergeContext::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

void set_sums_in_chunk_order(ChunkedMerge& merge, const std::vector<double>& partial) {
  const size_t sums = merge.sum_count();
  if (sums == 0) return;  // nothing to add (and the loop below would not advance)
  std::vector<double> total(sums, 0.0);
  for (size_t at = 0; at + sums <= partial.size(); at += sums) {
    for (size_t j = 0; j < sums; ++j) total[j] += partial[at + j];
  }
  merge.set_sums(total.data());
}

void ChunkedMerge::chunk_sums_bf16(const uint16_t* const*, size_t, double*) const {
  throw std::logic_error("chunk_sums_bf16 called on a merge without a bf16 form");
}

size_t ChunkedMerge::merge_chunk_bf16(const uint16_t* const*, size_t, size_t, uint16_t*) const {
  throw std::logic_error("merge_chunk_bf16 called on a merge without a bf16 form");
}

void run_chunked(ChunkedMerge& merge, const MergeContext& ctx, const char* method, float* out,
                 size_t grain) {
  const size_t n = ctx.numel();
  const size_t count = ctx.sources.size();
  merge.prepare([&](size_t k, uint64_t begin, size_t len, float* dst) {
    std::memcpy(dst, ctx.sources[k].values + begin, len * sizeof(float));
  });
  // Pointers to the chunk's first element of each source (small: no allocation per chunk).
  auto at = [&](size_t begin, const float** sources) {
    for (size_t k = 0; k < count; ++k) sources[k] = ctx.sources[k].values + begin;
  };
  if (const size_t sums = merge.sum_count(); sums > 0) {
    const size_t chunks = (n + kDefaultGrain - 1) / kDefaultGrain;
    std::vector<double> partial(chunks * sums, 0.0);
    parallel_for(n, kDefaultGrain, [&](size_t begin, size_t end) {
      std::vector<const float*> sources(count);
      at(begin, sources.data());
      merge.chunk_sums(sources.data(), end - begin, partial.data() + begin / kDefaultGrain * sums);
    });
    set_sums_in_chunk_order(merge, partial);
  }
  detail::parallel_for_checked(ctx, method, n, [&](size_t begin, size_t end) {
    std::vector<const float*> sources(count);
    at(begin, sources.data());
    return merge.merge_chunk(sources.data(), begin, end - begin, out + begin);
  }, grain == 0 ? kDefaultGrain : grain);
}

namespace {

const std::vector<const MergeMethod*>& all_methods() {
  static const std::vector<const MergeMethod*> methods = [] {
    std::vector<const MergeMethod*> list = {
        &detail::linear_method(), &detail::slerp_method(), &detail::nuslerp_method(),
        &detail::passthrough_method(), &detail::model_stock_method(),
        &detail::sce_method(),         &detail::karcher_method(),
        &detail::multislerp_method(),  &detail::arcee_fusion_method(),
        &detail::nearswap_method(),    &detail::ram_method()};
    for (const MergeMethod* m : detail::task_arithmetic_family()) list.push_back(m);
    return list;
  }();
  return methods;
}

}  // namespace

const MergeMethod* find_merge_method(std::string_view name) {
  for (const MergeMethod* m : all_methods()) {
    if (m->name() == name) return m;
  }
  return nullptr;
}

std::vector<std::string> merge_method_names() {
  std::vector<std::string> names;
  for (const MergeMethod* m : all_methods()) names.emplace_back(m->name());
  std::sort(names.begin(), names.end());
  return names;
}

namespace detail {

double require_source_param(const MergeContext& ctx, const MergeSource& source,
                            const std::string& name) {
  const auto it = source.params.find(name);
  if (it == source.params.end()) {
    throw Error(ErrorCode::kRecipe, "tensor '" + ctx.tensor_name + "': model " + source.model +
                                        " has no value for parameter '" + name + "'");
  }
  return it->second;
}

void fail_recipe(const MergeContext& ctx, const char* method, const std::string& what) {
  throw Error(ErrorCode::kRecipe, "tensor '" + ctx.tensor_name + "': " + method + " " + what);
}

void fail_non_finite(const MergeContext& ctx, const char* method, size_t count,
                     const std::string& why) {
  const std::string amount = count > 0 ? std::to_string(count) + " " : "";
  throw Error(ErrorCode::kNonFinite, "tensor '" + ctx.tensor_name + "': " + method +
                                         " would write " + amount + "NaN or infinite values (" +
                                         why + ")");
}

size_t require_base(const MergeContext& ctx, const char* method) {
  if (ctx.base_index < 0 || static_cast<size_t>(ctx.base_index) >= ctx.sources.size()) {
    fail_recipe(ctx, method, "needs a base_model");
  }
  return static_cast<size_t>(ctx.base_index);
}

std::vector<size_t> non_base_sources(const MergeContext& ctx) {
  std::vector<size_t> others;
  for (size_t k = 0; k < ctx.sources.size(); ++k) {
    if (static_cast<int>(k) != ctx.base_index) others.push_back(k);
  }
  return others;
}

void copy_source(const MergeContext& ctx, size_t index, float* out) {
  const float* in = ctx.sources[index].values;
  if (in == out) return;  // merged in place: out already holds the source
  parallel_for(ctx.numel(), kDefaultGrain,
               [&](size_t b, size_t e) { std::memcpy(out + b, in + b, (e - b) * sizeof(float)); });
}

}  // namespace detail
}  // namespace alloy
