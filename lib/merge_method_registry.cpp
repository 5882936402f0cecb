// The registry of merge methods: one explicit list (no static-initialisation tricks, which a
// static library would silently drop), looked up by name.
#include <algorithm>

#include "alloy/kernels.h"
#include "method_util.h"

namespace alloy {

uint64_t MergeContext::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

namespace {

const std::vector<const MergeMethod*>& all_methods() {
  static const std::vector<const MergeMethod*> methods = [] {
    std::vector<const MergeMethod*> list = {&detail::linear_method(), &detail::slerp_method(),
                                            &detail::nuslerp_method(), &detail::passthrough_method(),
                                            &detail::model_stock_method()};
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

double require_source_param(const MergeContext& ctx, const MergeSource& source, const std::string& name) {
  const auto it = source.params.find(name);
  if (it == source.params.end()) {
    throw Error(ErrorCode::kRecipe, "tensor '" + ctx.tensor_name + "': model " + source.model +
                                        " has no value for parameter '" + name + "'");
  }
  return it->second;
}

void check_finite(const MergeContext& ctx, const float* out, const char* method) {
  const size_t bad = count_non_finite(ctx.numel(), out);
  if (bad > 0) {
    throw Error(ErrorCode::kNonFinite, "tensor '" + ctx.tensor_name + "': " + method + " would write " +
                                           std::to_string(bad) +
                                           " NaN or infinite values (check the weights: do they sum to zero?)");
  }
}

size_t require_base(const MergeContext& ctx, const char* method) {
  if (ctx.base_index < 0 || static_cast<size_t>(ctx.base_index) >= ctx.sources.size()) {
    throw Error(ErrorCode::kRecipe, std::string(method) + " needs a base_model (tensor '" + ctx.tensor_name + "')");
  }
  return static_cast<size_t>(ctx.base_index);
}

}  // namespace detail
}  // namespace alloy
