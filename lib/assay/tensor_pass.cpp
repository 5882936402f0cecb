// The per-tensor assay: one suspect tensor against the candidates' (the prefix pass, the full or
// sampled fit, the block test and, where equalities betray a sparsifying merge, the sparse
// statistics). run.cpp calls it for every tensor in the file's order.
#include <algorithm>
#include <cmath>

#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

constexpr uint64_t kPrefixElements = 1 << 16;
constexpr double kBlockCorrelation = 0.3;  // a block that keeps its place correlates far above this

// Whether some block of the suspect's tensor correlates with the same block of no candidate: a
// permutation the alignment stage did not undo (a fused or interleaved layout it cannot align).
// The rows (axis 0: experts of a fused 3-D tensor, neurons, heads) are split into up to 64 blocks
// of at least 64 elements and the first 4096 elements of each are compared; a blend keeps every
// block in place, a permutation moves blocks or the elements inside them. Tensors of one row or
// fewer than 256 elements (norms, biases) are not tested, nor are constant blocks.
BlockTest test_blocks_of(const TensorViews& views, const std::vector<uint64_t>& shape) {
  if (shape.size() < 2 || shape[0] < 2 || views.numel < 256) return BlockTest::kUntested;
  const uint64_t rows = shape[0], cols = views.numel / rows;
  const uint64_t rows_per_block = std::max<uint64_t>({1, rows / 64, (64 + cols - 1) / cols});
  const uint64_t blocks = rows / rows_per_block, stride = rows_per_block * cols;
  const uint64_t len = std::min<uint64_t>(stride, 4096);
  if (blocks < 2) return BlockTest::kUntested;
  // The blocks are tested in parallel (each reads its own 4096 elements of every input, one pread
  // each: serial, they were a tenth of a 1 GB assay's time on its main thread alone); a block is
  // skipped (constant), matched, or unmatched, and any unmatched block makes the tensor unaligned.
  enum : size_t { kSkipped = 0, kBlockMatched = 1, kUnmatched = 2 };
  const size_t worst = parallel_reduce(
      size_t(blocks), 1, size_t{kSkipped},
      [&](size_t b0, size_t b1) -> size_t {
        static thread_local std::vector<float> x, y;
        float* xs = at_least(x, len);
        float* ys = at_least(y, len);
        size_t result = kSkipped;
        for (uint64_t b = b0; b < b1; ++b) {
          load_view(views, 0, b * stride, len, xs);
          if (std::all_of(xs, xs + len, [&](float v) { return v == xs[0]; }))
            continue;  // shows no order
          bool matched = false;
          for (size_t c = 1; c < views.inputs.size() && !matched; ++c) {
            load_view(views, c, b * stride, len, ys);
            matched = pearson(xs, ys, len) >= kBlockCorrelation;
          }
          result = std::max<size_t>(result, matched ? kBlockMatched : kUnmatched);
        }
        return result;
      },
      [](size_t a, size_t b) { return std::max(a, b); });
  if (worst == kUnmatched) return BlockTest::kUnaligned;
  return worst == kBlockMatched ? BlockTest::kMatched : BlockTest::kUntested;
}

// Why the tensor cannot be fitted against the candidates, or "" when it can.
std::string unfit_reason(const ModelTensor& s, const std::vector<const ModelTensor*>& found,
                         const std::vector<std::string>& paths) {
  if (!can_load_as_f32(s.info->dtype))
    return std::string("dtype ") + dtype_name(s.info->dtype) + " is not numeric";
  for (size_t c = 0; c < found.size(); ++c) {
    if (!found[c]) return "missing in candidate " + paths[c];
    if (found[c]->info->shape != s.info->shape) return "shape differs in candidate " + paths[c];
    if (!can_load_as_f32(found[c]->info->dtype))
      return "candidate " + paths[c] + " stores it as a non-float dtype";
  }
  return "";
}

}  // namespace

void fill_sparse(const TensorViews& views, TensorAssay* ta) {
  // The related candidates that carry a weight in this tensor's fit. A decoy (a sibling of the
  // parents) is related but weightless; left in, its "kept alone" share and the kept-set subsets
  // it spoils turned a dare_ties merge into della when a sibling joined the candidates.
  std::vector<int> others;  // vector indices (candidate + 1)
  for (size_t c = 0; c < ta->correlation.size(); ++c) {
    const bool weightless = c < ta->weights.size() && std::fabs(ta->weights[c]) < kInvolvedWeight;
    if (int(c) != ta->reference && ta->correlation[c] > 0.3 && !weightless)
      others.push_back(int(c) + 1);
  }
  const size_t k = ta->correlation.size();
  ta->solo_density.assign(k, std::nan(""));
  ta->ratio_weight.assign(k, std::nan(""));
  for (auto* v : {&ta->top_drop, &ta->upper_drop, &ta->outlier_share, &ta->profile_density})
    v->assign(k, std::nan(""));
  if (others.empty()) return;
  const SparseStats s = sparse_statistics(views, ta->reference + 1, others);
  for (size_t j = 0; j < others.size(); ++j) {
    const size_t c = size_t(others[j] - 1);
    ta->density[c] = s.density[j];
    ta->magnitude_step[c] = s.magnitude_step[j];
    ta->kept_scale[c] = s.kept_scale[j];
    ta->solo_density[c] = s.solo_density[j];
    ta->top_drop[c] = s.top_drop[j];
    ta->upper_drop[c] = s.upper_drop[j];
    ta->outlier_share[c] = s.outlier_share[j];
    ta->profile_density[c] = s.profile_density[j];
  }
  const SubsetStats subsets = subset_statistics(views, ta->reference + 1, others, s);
  for (size_t j = 0; j < others.size(); ++j)
    ta->ratio_weight[size_t(others[j] - 1)] = subsets.ratio_weights[j];
  ta->subset_density.assign(k, std::nan(""));
  ta->subset_scale.assign(k, std::nan(""));
  ta->normalized_density.assign(k, std::nan(""));
  ta->normalized_weight.assign(k, std::nan(""));
  for (size_t j = 0; j < others.size() && !subsets.density.empty(); ++j) {
    const size_t c = size_t(others[j] - 1);
    ta->subset_density[c] = subsets.density[j];
    ta->subset_scale[c] = subsets.scale[j];
    ta->normalized_density[c] = subsets.normalized_density[j];
    ta->normalized_weight[c] = subsets.normalized_weight[j];
  }
  ta->subset_matched = subsets.matched_share;
  ta->subset_classifiable = subsets.classifiable;
  ta->opposite_elements = subsets.opposite;
  ta->sum_votes = subsets.sum_votes;
}

std::unique_ptr<TensorScratch> TensorScratchPool::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_.empty()) return std::make_unique<TensorScratch>();
  std::unique_ptr<TensorScratch> scratch = std::move(free_.back());
  free_.pop_back();
  return scratch;
}

void TensorScratchPool::give(std::unique_ptr<TensorScratch> scratch) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(std::move(scratch));
}

TensorOutcome assay_tensor(const TensorPass& pass, const ModelTensor& s, TensorScratch* scratch) {
  TensorOutcome out;
  TensorAssay& ta = out.assay;
  ta.name = s.name();
  ta.component = assay_component(pass.arch, ta.name, &ta.layer, &ta.expert);
  ta.numel = s.info->numel();
  TensorViews views;
  views.inputs.push_back(&s);
  views.numel = ta.numel;
  // The candidates' tensor this slot is compared with (another layer's, after stacking).
  const auto entry = pass.alignment.tensors.find(ta.name);
  const std::string compared =
      entry != pass.alignment.tensors.end() && !entry->second.candidate.empty()
          ? entry->second.candidate
          : ta.name;
  std::vector<const ModelTensor*> found;
  for (const Model* m : pass.models) found.push_back(m->find(compared));
  ta.skipped = unfit_reason(s, found, pass.paths);
  const int k = int(pass.models.size());
  if (ta.skipped.empty() && ta.numel > 0) {
    for (const ModelTensor* f : found) views.inputs.push_back(f);
    // --sample: every pass below sees only the sampled rows, gathered once per input (an aligned
    // suspect's through its alignment, from the stored rows they come from).
    std::vector<uint64_t> shape = s.info->shape;
    const std::vector<uint64_t> rows =
        sampled_rows(shape, pass.sample_fraction, pass.sample_seed, ta.name);
    ta.aligned = entry != pass.alignment.tensors.end();
    if (ta.aligned && rows.empty()) {
      load_aligned(pass.suspect, pass.alignment, ta.name, &scratch->aligned);
      views.suspect_values = scratch->aligned.data();
    }
    out.elements_total = ta.numel;
    if (!rows.empty()) {
      const uint64_t row_length = shape.back();
      const std::vector<float*> gathered =
          gather_rows(views, row_length, rows, &scratch->sampled, ta.aligned ? 1 : 0);
      if (ta.aligned)
        load_aligned_rows(pass.suspect, pass.alignment, ta.name, rows, row_length, gathered[0]);
      views.values.assign(gathered.begin(), gathered.end());
      views.numel = rows.size() * row_length;
      shape = {rows.size(), row_length};
      out.sampled = true;
    }
    out.elements_read = views.numel;
    // A prefix pass tells related candidates from unrelated ones; only the related ones define
    // which elements are resolved (an unrelated candidate would make every element look so).
    const PrefixMoments prefix = accumulate_prefix(views, kPrefixElements);
    const PrefixFit quick = fit_prefix(prefix, k);
    std::vector<bool> related(static_cast<size_t>(k), false);
    for (int c = 0; c < k; ++c) related[size_t(c)] = quick.correlation[size_t(c)] > 0.3;
    // The full pass, in coordinates relative to the prefix's reference (the likely base).
    if (rows.empty()) {
      const ResolvedMoments full =
          accumulate_resolved(views, pass.resolve, quick.reference + 1, related);
      fit_tensor(prefix, full, k, &ta);
    } else {
      fit_sampled(views, rows.size(), shape.back(), pass.resolve, quick.reference + 1, related,
                  prefix, k, &ta);
    }
    ta.fitted = true;
    out.blocks = test_blocks_of(views, shape);
    double equal = ta.equal_reference;
    for (double e : ta.equal_candidate) equal = std::max(equal, e);
    if (views.numel >= 4096 && equal + ta.equal_reference > 0.1 && ta.copy_of < 0)
      fill_sparse(views, &ta);
  } else if (ta.skipped.empty()) {
    ta.skipped = "empty tensor";
  }
  for (const ModelTensor* v : views.inputs) v->shard->release(*v->info);
  return out;
}

}  // namespace alloy::detail
