// The sparse statistics of a few tensors, read by the verdict where the first pass left them out
// (see verdict.h).
#include <algorithm>

#include "verdict.h"

namespace alloy::detail {
namespace {

// The rebuild check's tensors, more of them: each reads only 45-220 classifiable elements for its
// kept sets at hidden 256 with three parents, and the medians over tensors want several.
constexpr int kLateSparseTensors = 16;

bool sparse_statistics_apply(const TensorAssay& t) {
  return t.fitted && t.numel >= 4096 && t.copy_of < 0;
}

}  // namespace

bool sparse_statistics_missing(const AssayResult& result) {
  uint64_t eligible = 0, read = 0;
  for (const auto& t : result.tensors) {
    if (!sparse_statistics_apply(t)) continue;
    eligible += t.numel;
    if (!t.solo_density.empty()) read += t.numel;
  }
  return eligible > 0 && 2 * read < eligible;
}

LateSparse read_late_sparse(const VerdictContext& v, AssayResult* into) {
  LateSparse out;
  for (const std::string& name : rebuild_sample(v, kLateSparseTensors)) {
    const auto it = std::find_if(into->tensors.begin(), into->tensors.end(),
                                 [&](const TensorAssay& t) { return t.name == name; });
    if (it == into->tensors.end() || !sparse_statistics_apply(*it) || !it->solo_density.empty())
      continue;
    const ModelTensor* suspect = v.suspect.find(name);
    if (suspect == nullptr) continue;
    TensorViews views;
    views.inputs.push_back(suspect);
    for (const Model* m : v.models) {
      const ModelTensor* c = m->find(name);
      if (c == nullptr || c->info->shape != suspect->info->shape) break;
      views.inputs.push_back(c);
    }
    if (views.inputs.size() != v.models.size() + 1) continue;
    views.numel = it->numel;
    fill_sparse(views, &*it);
    for (const ModelTensor* in : views.inputs) in->shard->release(*in->info);
    ++out.tensors;
    out.elements += it->numel;
  }
  rethrow_read_error();
  return out;
}

}  // namespace alloy::detail
