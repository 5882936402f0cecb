// run_assay: opens the models, streams the suspect's tensors once through the statistics pass and
// the per-tensor fit (and, where exact equalities betray a sparsifying merge, the sparse pass),
// releasing each tensor's pages after use, then hands the fits to the verdict stage.
#include <algorithm>
#include <cmath>
#include <memory>

#include "alloy/core/error.h"
#include "internal.h"

namespace alloy {
namespace {

constexpr uint64_t kPrefixElements = 1 << 16;

// "Resolved" elements: candidate spread at least four units in the last place of the coarsest
// candidate dtype (relative to the largest magnitude there).
double resolve_fraction(const std::vector<const Model*>& models) {
  int mantissa = 23;
  for (const Model* m : models) {
    for (const auto& t : m->tensors()) {
      if (t.info->dtype == DType::BF16) mantissa = std::min(mantissa, 7);
      if (t.info->dtype == DType::F16) mantissa = std::min(mantissa, 10);
    }
  }
  return 4.0 * std::ldexp(1.0, -mantissa);
}

// Why the tensor cannot be fitted against the candidates, or "" when it can.
std::string unfit_reason(const ModelTensor& s, const std::vector<const ModelTensor*>& found,
                         const std::vector<std::string>& paths) {
  if (!can_load_as_f32(s.info->dtype)) return std::string("dtype ") + dtype_name(s.info->dtype) + " is not numeric";
  for (size_t c = 0; c < found.size(); ++c) {
    if (!found[c]) return "missing in candidate " + paths[c];
    if (found[c]->info->shape != s.info->shape) return "shape differs in candidate " + paths[c];
    if (!can_load_as_f32(found[c]->info->dtype)) return "candidate " + paths[c] + " stores it as a non-float dtype";
  }
  return "";
}

void fill_sparse(const detail::TensorViews& views, TensorAssay* ta) {
  std::vector<int> others;  // vector indices (candidate + 1)
  for (size_t c = 0; c < ta->correlation.size(); ++c) {
    if (int(c) != ta->reference && ta->correlation[c] > 0.3) others.push_back(int(c) + 1);
  }
  const size_t k = ta->correlation.size();
  ta->solo_density.assign(k, std::nan(""));
  ta->ratio_weight.assign(k, std::nan(""));
  if (others.empty()) return;
  const detail::SparseStats s = detail::sparse_statistics(views, ta->reference + 1, others);
  for (size_t j = 0; j < others.size(); ++j) {
    const size_t c = size_t(others[j] - 1);
    ta->density[c] = s.density[j];
    ta->magnitude_step[c] = s.magnitude_step[j];
    ta->kept_scale[c] = s.kept_scale[j];
    ta->solo_density[c] = s.solo_density[j];
    ta->ratio_weight[c] = s.ratio_weights[j];
  }
}

}  // namespace

AssayResult run_assay(const AssayOptions& options) {
  if (options.candidates.empty()) throw Error(ErrorCode::kInvalidArgument, "alloy-assay needs at least one candidate");
  if (int(options.candidates.size()) > detail::kMaxCandidates) {
    throw Error(ErrorCode::kInvalidArgument, "alloy-assay takes at most " + std::to_string(detail::kMaxCandidates) +
                                                 " candidates, got " + std::to_string(options.candidates.size()));
  }
  const Model suspect = Model::open(options.suspect, options.open);
  std::vector<std::unique_ptr<Model>> owned;
  std::vector<const Model*> models;
  for (const auto& path : options.candidates) {
    owned.push_back(std::make_unique<Model>(Model::open(path, options.open)));
    models.push_back(owned.back().get());
  }
  const double resolve = resolve_fraction(models);
  const int k = int(models.size());

  AssayResult result;
  result.suspect = options.suspect.string();
  const detail::Alignment alignment = detail::align_suspect(suspect, models);
  result.permutations = alignment.permutations;
  std::vector<float> aligned_values;
  for (const auto& path : options.candidates) result.candidates.push_back({path});
  const auto& tensors = suspect.tensors();
  const ModelArchitecture suspect_arch = detect_architecture(suspect);
  for (size_t index = 0; index < tensors.size(); ++index) {
    const ModelTensor& s = tensors[index];
    TensorAssay ta;
    ta.name = s.name();
    ta.component = assay_component(suspect_arch, ta.name, &ta.layer, &ta.expert);
    ta.numel = s.info->numel();
    detail::TensorViews views;
    views.inputs.push_back(&s);
    views.numel = ta.numel;
    // The candidates' tensor this slot is compared with (another layer's, after stacking).
    const auto entry = alignment.tensors.find(ta.name);
    const std::string compared = entry != alignment.tensors.end() && !entry->second.candidate.empty()
                                     ? entry->second.candidate
                                     : ta.name;
    std::vector<const ModelTensor*> found;
    for (const Model* m : models) found.push_back(m->find(compared));
    ta.skipped = unfit_reason(s, found, options.candidates);
    if (ta.skipped.empty() && ta.numel > 0) {
      for (const ModelTensor* f : found) views.inputs.push_back(f);
      if (entry != alignment.tensors.end()) {
        detail::load_aligned(suspect, alignment, ta.name, &aligned_values);
        views.suspect_values = aligned_values.data();
        ta.aligned = true;
      }
      // A prefix pass tells related candidates from unrelated ones; only the related ones define
      // which elements are resolved (an unrelated candidate would make every element look so).
      const detail::PrefixMoments prefix = detail::accumulate_prefix(views, kPrefixElements);
      const detail::PrefixFit quick = detail::fit_prefix(prefix, k);
      std::vector<bool> related(static_cast<size_t>(k), false);
      for (int c = 0; c < k; ++c) related[size_t(c)] = quick.correlation[size_t(c)] > 0.3;
      // The full pass, in coordinates relative to the prefix's reference (the likely base).
      const detail::ResolvedMoments full = detail::accumulate_resolved(views, resolve, quick.reference + 1, related);
      detail::fit_tensor(prefix, full, k, &ta);
      ta.fitted = true;
      double equal = ta.equal_reference;
      for (double e : ta.equal_candidate) equal = std::max(equal, e);
      if (ta.numel >= 4096 && equal + ta.equal_reference > 0.1 && ta.copy_of < 0) fill_sparse(views, &ta);
    } else if (ta.skipped.empty()) {
      ta.skipped = "empty tensor";
    }
    for (const ModelTensor* v : views.inputs) v->shard->release(*v->info);
    result.tensors.push_back(std::move(ta));
    if (options.progress) options.progress(index + 1, tensors.size());
  }
  detail::decide_verdict(&result, suspect, models, options);
  // What the models were opened in spite of (unindexed shards) belongs beside the verdict.
  for (const std::string& warning : suspect.warnings()) result.evidence["notes"].push_back(warning);
  for (const Model* m : models) {
    for (const std::string& warning : m->warnings()) result.evidence["notes"].push_back(warning);
  }
  return result;
}

}  // namespace alloy
