// run_assay: opens the models, streams the suspect's tensors once through the statistics pass and
// the per-tensor fit (and, where exact equalities betray a sparsifying merge, the sparse pass),
// releasing each tensor's pages after use, then hands the fits to the verdict stage.
#include <algorithm>
#include <cstdio>
#include <cmath>
#include <memory>
#include <set>

#include "alloy/core/error.h"
#include "alloy/core/evidence.h"
#include "alloy/core/hash_cache.h"
#include "alloy/core/hub_cache.h"
#include "alloy/core/parallel.h"
#include "coverage.h"
#include "internal.h"

namespace alloy {
namespace {

constexpr uint64_t kPrefixElements = 1 << 16;
constexpr double kBlockCorrelation = 0.3;  // a block that keeps its place correlates far above this

// Whether some block of the suspect's tensor correlates with the same block of no candidate: a
// permutation the alignment stage did not undo (a fused or interleaved layout it cannot align).
// The rows (axis 0: experts of a fused 3-D tensor, neurons, heads) are split into up to 64 blocks
// of at least 64 elements and the first 4096 elements of each are compared; a blend keeps every
// block in place, a permutation moves blocks or the elements inside them. Tensors of one row or
// fewer than 256 elements (norms, biases) are not tested, nor are constant blocks.
enum class BlockTest { kUntested, kMatched, kUnaligned };
BlockTest test_blocks(const detail::TensorViews& views, const std::vector<uint64_t>& shape) {
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
  const size_t worst = parallel_reduce(size_t(blocks), 1, size_t{kSkipped}, [&](size_t b0, size_t b1) -> size_t {
    static thread_local std::vector<float> x, y;
    float* xs = detail::at_least(x, len);
    float* ys = detail::at_least(y, len);
    size_t result = kSkipped;
    for (uint64_t b = b0; b < b1; ++b) {
      detail::load_view(views, 0, b * stride, len, xs);
      if (std::all_of(xs, xs + len, [&](float v) { return v == xs[0]; }))
        continue;  // shows no order
      bool matched = false;
      for (size_t c = 1; c < views.inputs.size() && !matched; ++c) {
        detail::load_view(views, c, b * stride, len, ys);
        matched = detail::pearson(xs, ys, len) >= kBlockCorrelation;
      }
      result = std::max<size_t>(result, matched ? kBlockMatched : kUnmatched);
    }
    return result;
  }, [](size_t a, size_t b) { return std::max(a, b); });
  if (worst == kUnmatched) return BlockTest::kUnaligned;
  return worst == kBlockMatched ? BlockTest::kMatched : BlockTest::kUntested;
}

// Tensors with an unaligned block are left out of the fit when the suspect is otherwise related to
// a candidate (some other tensor's every block matched one): there the block should have matched,
// so whatever the fit would say about it is a guess. A suspect related to no candidate keeps its
// fits (and is found independent).
void drop_unaligned(const std::vector<BlockTest>& tests, AssayResult* result) {
  std::vector<bool> unaligned(tests.size());
  bool related = false;
  for (size_t i = 0; i < tests.size(); ++i) {
    unaligned[i] = tests[i] == BlockTest::kUnaligned;
    related |= tests[i] == BlockTest::kMatched;
  }
  if (!related) return;
  // A permutation moves a whole unit: its biases and norms (too small to test) go with it, so the
  // component is left out in that layer (outside the layers: everywhere).
  std::set<std::pair<std::string, int>> units;
  for (size_t i = 0; i < result->tensors.size(); ++i) {
    if (unaligned[i]) units.insert({result->tensors[i].component, result->tensors[i].layer});
  }
  for (size_t i = 0; i < result->tensors.size(); ++i) {
    TensorAssay& t = result->tensors[i];
    if (!t.fitted || !units.count({t.component, t.layer})) continue;
    if (!unaligned[i]) {
      t.fitted = false;
      t.skipped = "not aligned: its component in this layer holds a tensor that could not be aligned";
      continue;
    }
    t.fitted = false;
    t.skipped = "not aligned: a block of it correlates with no candidate's (a permutation the assay cannot undo)";
  }
}

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
  // The related candidates that carry a weight in this tensor's fit. A decoy (a sibling of the
  // parents) is related but weightless; left in, its "kept alone" share and the kept-set subsets
  // it spoils turned a dare_ties merge into della when a sibling joined the candidates.
  std::vector<int> others;  // vector indices (candidate + 1)
  for (size_t c = 0; c < ta->correlation.size(); ++c) {
    const bool weightless = c < ta->weights.size() && std::fabs(ta->weights[c]) < detail::kInvolvedWeight;
    if (int(c) != ta->reference && ta->correlation[c] > 0.3 && !weightless) others.push_back(int(c) + 1);
  }
  const size_t k = ta->correlation.size();
  ta->solo_density.assign(k, std::nan(""));
  ta->ratio_weight.assign(k, std::nan(""));
  for (auto* v : {&ta->top_drop, &ta->upper_drop, &ta->outlier_share, &ta->profile_density}) v->assign(k, std::nan(""));
  if (others.empty()) return;
  const detail::SparseStats s = detail::sparse_statistics(views, ta->reference + 1, others);
  for (size_t j = 0; j < others.size(); ++j) {
    const size_t c = size_t(others[j] - 1);
    ta->density[c] = s.density[j];
    ta->magnitude_step[c] = s.magnitude_step[j];
    ta->kept_scale[c] = s.kept_scale[j];
    ta->solo_density[c] = s.solo_density[j];
    ta->ratio_weight[c] = s.ratio_weights[j];
    ta->top_drop[c] = s.top_drop[j];
    ta->upper_drop[c] = s.upper_drop[j];
    ta->outlier_share[c] = s.outlier_share[j];
    ta->profile_density[c] = s.profile_density[j];
  }
  const detail::SubsetStats subsets = detail::subset_statistics(views, ta->reference + 1, others, s.kept_scale);
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

// The assay of at most kMaxFitted candidates.
AssayResult run_fitted(const AssayOptions& options);

// Opens the candidates (local folders, else Hub ids found in the Hub cache), owned by `owned`.
std::vector<const Model*> open_candidates(const AssayOptions& options, std::vector<std::unique_ptr<Model>>* owned) {
  std::vector<const Model*> models;
  for (const auto& path : options.candidates) {
    owned->push_back(std::make_unique<Model>(Model::open(locate_model(path), options.open)));
    models.push_back(owned->back().get());
  }
  return models;
}

// More than kMaxFitted candidates: the screen keeps at most kMaxFitted, the assay fits those, and
// the JSON's evidence.screen says what was kept and what was set aside (docs/assay.md).
AssayResult run_screened(const AssayOptions& options) {
  nlohmann::json screen, set_aside;
  AssayOptions fitted = options;
  bool screened = true;
  {
    const Model suspect = Model::open(locate_model(options.suspect.string()), options.open);
    std::vector<std::unique_ptr<Model>> owned;
    const std::vector<const Model*> opened = open_candidates(options, &owned);
    // Candidates of another width or architecture are set aside first (coverage.cpp): the screen
    // compares only tensors every candidate holds, so one such decoy would leave it nothing.
    const detail::ComparableCandidates comparable = detail::select_comparable(suspect, opened, options.candidates);
    set_aside = comparable.set_aside;
    if (comparable.models.size() <= size_t(detail::kMaxFitted)) {
      fitted.candidates = comparable.paths;
      screened = false;
    }
    const std::vector<const Model*>& models = comparable.models;
    const std::vector<std::string>& paths = comparable.paths;
    if (screened) {
      const detail::CandidateScreen s = detail::screen_candidates(suspect, models, detail::kMaxFitted);
      detail::rethrow_read_error();
      if (s.kept.empty()) {
        throw Error(ErrorCode::kInvalidArgument,
                    "alloy-assay: no tensor of " + options.suspect.string() + " is held with its shape by all " +
                        std::to_string(paths.size()) + " comparable candidates, so the screen (more than " +
                        std::to_string(detail::kMaxFitted) + " candidates) cannot choose; give at most " +
                        std::to_string(detail::kMaxFitted));
      }
      fitted.candidates.clear();
      screen = {{"candidates", paths.size()},
                {"elements", s.elements},
                {"reference", paths[size_t(s.reference)]},
                {"residual", s.residual},
                {"ancestor", s.ancestor >= 0 ? nlohmann::json(paths[size_t(s.ancestor)]) : nlohmann::json(nullptr)},
                {"kept", nlohmann::json::array()},
                {"set_aside", nlohmann::json::array()}};
      for (size_t c = 0; c < paths.size(); ++c) {
        const bool kept = std::find(s.kept.begin(), s.kept.end(), c) != s.kept.end();
        nlohmann::json entry = {{"path", paths[c]}};
        entry["correlation"] = std::isnan(s.correlation[c]) ? nlohmann::json(nullptr) : nlohmann::json(s.correlation[c]);
        entry["score"] = std::isnan(s.score[c]) ? nlohmann::json(nullptr) : nlohmann::json(s.score[c]);
        screen[kept ? "kept" : "set_aside"].push_back(entry);
        if (kept) fitted.candidates.push_back(paths[c]);
      }
    }
  }
  AssayResult result = run_fitted(fitted);
  detail::record_set_aside(set_aside, &result);
  if (!screened) return result;
  result.evidence["screen"] = screen;
  result.evidence["notes"].push_back(
      "candidate screen: " + std::to_string(options.candidates.size()) + " candidates, more than the " +
      std::to_string(detail::kMaxFitted) + " the fit takes; " + std::to_string(fitted.candidates.size()) +
      " kept by forward selection on " + std::to_string(screen["elements"].get<uint64_t>()) +
      " elements per model (evidence.screen" +
      (screen["ancestor"].is_string() ? ", with the candidate nearest the suspect as the likely common base" : "") +
      "), the others set aside: a parent whose share of the suspect's difference from the reference is below the "
      "screen's threshold would be missed");
  return result;
}

}  // namespace

AssayResult run_assay(const AssayOptions& options) {
  detail::discard_read_error();
  if (options.candidates.empty()) throw Error(ErrorCode::kInvalidArgument, "alloy-assay needs at least one candidate");
  if (int(options.candidates.size()) > detail::kMaxCandidates) {
    throw Error(ErrorCode::kInvalidArgument, "alloy-assay takes at most " + std::to_string(detail::kMaxCandidates) +
                                                 " candidates, got " + std::to_string(options.candidates.size()));
  }
  if (int(options.candidates.size()) > detail::kMaxFitted) return run_screened(options);
  return run_fitted(options);
}

namespace {

AssayResult run_fitted(const AssayOptions& options) {
  const std::string started = utc_timestamp();
  // Local folders, else Hub ids found in the Hub cache (alloy/core/hub_cache.h).
  const Model suspect = Model::open(locate_model(options.suspect.string()), options.open);
  std::vector<std::unique_ptr<Model>> owned;
  std::vector<const Model*> models = open_candidates(options, &owned);
  std::vector<const Model*> examined{&suspect};
  examined.insert(examined.end(), models.begin(), models.end());
  FileHasher hasher(hash_cache_at(options.hash_cache));
  detail::start_audit_hashes(options, examined, &hasher);
  // Candidates of another width or architecture are set aside (coverage.cpp), so that they cannot
  // shrink what is compared for the others: from here on `models` and `kept.candidates` are
  // the compared candidates (the audit keeps every model examined).
  const detail::ComparableCandidates comparable = detail::select_comparable(suspect, models, options.candidates);
  models = comparable.models;
  AssayOptions kept = options;
  kept.candidates = comparable.paths;
  const double resolve = resolve_fraction(models);
  const int k = int(models.size());

  AssayResult result;
  result.suspect = options.suspect.string();
  const detail::Alignment alignment = detail::align_suspect(suspect, models);
  detail::rethrow_read_error();  // reads run inside parallel regions: errors surface after each stage
  result.permutations = alignment.permutations;
  std::vector<float> aligned_values;
  PageBuffer sampled_buffer;  // --sample: every input's rows, reused per tensor
  if (options.sample_fraction > 0 && options.sample_fraction < 1) {
    result.sampling.fraction = options.sample_fraction;
    result.sampling.seed = options.sample_seed;
  }
  for (const auto& path : kept.candidates) result.candidates.push_back({path});
  const auto& tensors = suspect.tensors();
  const ModelArchitecture suspect_arch = detect_architecture(suspect);
  std::vector<BlockTest> block_tests(tensors.size(), BlockTest::kUntested);
  const uint64_t total_bytes = suspect.total_bytes();
  uint64_t done_bytes = 0;
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
    ta.skipped = unfit_reason(s, found, kept.candidates);
    if (ta.skipped.empty() && ta.numel > 0) {
      for (const ModelTensor* f : found) views.inputs.push_back(f);
      if (entry != alignment.tensors.end()) {
        detail::load_aligned(suspect, alignment, ta.name, &aligned_values);
        views.suspect_values = aligned_values.data();
        ta.aligned = true;
      }
      // --sample: every pass below sees only the sampled rows, gathered once per input.
      std::vector<uint64_t> shape = s.info->shape;
      const std::vector<uint64_t> rows = detail::sampled_rows(shape, options.sample_fraction, options.sample_seed, ta.name);
      result.sampling.elements_total += ta.numel;
      if (!rows.empty()) {
        const uint64_t row_length = shape.back();
        views.values = detail::gather_rows(views, row_length, rows, &sampled_buffer);
        views.numel = rows.size() * row_length;
        shape = {rows.size(), row_length};
        ++result.sampling.tensors_sampled;
      }
      result.sampling.elements_read += views.numel;
      // A prefix pass tells related candidates from unrelated ones; only the related ones define
      // which elements are resolved (an unrelated candidate would make every element look so).
      const detail::PrefixMoments prefix = detail::accumulate_prefix(views, kPrefixElements);
      const detail::PrefixFit quick = detail::fit_prefix(prefix, k);
      std::vector<bool> related(static_cast<size_t>(k), false);
      for (int c = 0; c < k; ++c) related[size_t(c)] = quick.correlation[size_t(c)] > 0.3;
      // The full pass, in coordinates relative to the prefix's reference (the likely base).
      if (rows.empty()) {
        const detail::ResolvedMoments full = detail::accumulate_resolved(views, resolve, quick.reference + 1, related);
        detail::fit_tensor(prefix, full, k, &ta);
      } else {
        detail::fit_sampled(views, rows.size(), shape.back(), resolve, quick.reference + 1, related, prefix, k, &ta);
      }
      ta.fitted = true;
      block_tests[index] = test_blocks(views, shape);
      double equal = ta.equal_reference;
      for (double e : ta.equal_candidate) equal = std::max(equal, e);
      if (views.numel >= 4096 && equal + ta.equal_reference > 0.1 && ta.copy_of < 0) fill_sparse(views, &ta);
    } else if (ta.skipped.empty()) {
      ta.skipped = "empty tensor";
    }
    for (const ModelTensor* v : views.inputs) v->shard->release(*v->info);
    detail::rethrow_read_error();
    result.tensors.push_back(std::move(ta));
    done_bytes += s.info->nbytes();
    if (options.progress) options.progress(done_bytes, total_bytes);
  }
  drop_unaligned(block_tests, &result);
  detail::decide_verdict(&result, suspect, models, kept);
  detail::rethrow_read_error();
  detail::record_set_aside(comparable.set_aside, &result);
  if (!alignment.folded_norms.empty()) {
    // The gains folded into the readers (gain_stage): per norm, and a one-line summary.
    double worst = 0;
    for (const auto& n : alignment.folded_norms) worst = std::max(worst, n.value("relative_error", 0.0));
    char line[160];
    std::snprintf(line, sizeof line,
                  "%zu norm gains were folded into their readers; recovered and undone before the fit (largest "
                  "relative difference from the candidates' blended gains %.3g)",
                  alignment.folded_norms.size(), worst);
    result.evidence["folded_norms"] = {{"norms", alignment.folded_norms}, {"summary", line}};
  }
  // What the models were opened in spite of (unindexed shards) belongs beside the verdict.
  for (const std::string& warning : suspect.warnings()) result.evidence["notes"].push_back(warning);
  for (const Model* m : models) {
    for (const std::string& warning : m->warnings()) result.evidence["notes"].push_back(warning);
  }
  if (result.sampling.fraction > 0) {
    char share[32];
    std::snprintf(share, sizeof share, "%.3g%%", 100 * result.sampling.fraction);
    result.evidence["notes"].push_back(
        std::string("sampled assay: every tensor of more than ") + std::to_string(detail::kMinSampledRows) +
        " rows was judged on a seeded random " + share + " of its rows (seed " + std::to_string(result.sampling.seed) +
        "); a copy or an equality holds on the rows read, and a full assay (without --sample) reads every element");
  }
  result.audit = detail::collect_audit(options, started, examined, &hasher);
  return result;
}

}  // namespace

}  // namespace alloy
