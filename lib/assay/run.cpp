// run_assay: opens the models, streams the suspect's tensors once through the statistics pass and
// the per-tensor fit (and, where exact equalities betray a sparsifying merge, the sparse pass),
// releasing each tensor's pages after use, then hands the fits to the verdict stage.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
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

// Tensors per batch of a sampled assay (see run_fitted): enough to keep every core busy, few
// enough for progress to move.
constexpr size_t kSampledBatch = 64;

// Tensors with an unaligned block are left out of the fit when the suspect is otherwise related to
// a candidate (some other tensor's every block matched one): there the block should have matched,
// so whatever the fit would say about it is a guess. A suspect related to no candidate keeps its
// fits (and is found independent).
void drop_unaligned(const std::vector<detail::BlockTest>& tests, AssayResult* result) {
  std::vector<bool> unaligned(tests.size());
  bool related = false;
  for (size_t i = 0; i < tests.size(); ++i) {
    unaligned[i] = tests[i] == detail::BlockTest::kUnaligned;
    related |= tests[i] == detail::BlockTest::kMatched;
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

  AssayResult result;
  result.suspect = options.suspect.string();
  const bool sampling = options.sample_fraction > 0 && options.sample_fraction < 1;
  detail::AlignOptions align_options;
  if (sampling)
    align_options = {.sketch_coordinates = detail::kSketchCoordinates, .seed = options.sample_seed};
  const detail::Alignment alignment = detail::align_suspect(suspect, models, align_options);
  detail::rethrow_read_error();  // reads run inside parallel regions: errors surface after each stage
  result.permutations = alignment.permutations;
  if (sampling) {
    result.sampling.fraction = options.sample_fraction;
    result.sampling.seed = options.sample_seed;
  }
  for (const auto& path : kept.candidates) result.candidates.push_back({path});
  const auto& tensors = suspect.tensors();
  const detail::TensorPass pass{.suspect = suspect,
                                .arch = detect_architecture(suspect),
                                .alignment = alignment,
                                .models = models,
                                .paths = kept.candidates,
                                .sample_fraction = options.sample_fraction,
                                .sample_seed = options.sample_seed,
                                .resolve = resolve};
  std::vector<detail::BlockTest> block_tests;
  const uint64_t total_bytes = suspect.total_bytes();
  uint64_t done_bytes = 0;
  // A full assay takes the tensors one at a time, each pass spread over the cores. A sampled one
  // reads a few rows of each tensor, too few to split: its passes' parallel regions were mostly
  // threads waking up, so it takes batches of tensors, one tensor per task, every pass of a tensor
  // on its task's thread. The bits are the same either way (a pass's chunks do not depend on the
  // threads), and so is the order the fits are kept in. An aligned tensor's sampled rows are read
  // through its alignment (load_aligned_rows), so it joins the batches too; at most a rotated
  // writer's [hidden, cols] block is held per task.
  detail::TensorScratchPool scratch;
  for (size_t first = 0; first < tensors.size();) {
    const size_t count = sampling ? std::min(kSampledBatch, tensors.size() - first) : 1;
    std::vector<detail::TensorOutcome> outcomes(count);
    std::vector<std::exception_ptr> failures(count);  // an exception must not leave the region
    parallel_for(count, 1, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        try {
          std::unique_ptr<detail::TensorScratch> lease = scratch.take();
          outcomes[i] = detail::assay_tensor(pass, tensors[first + i], lease.get());
          scratch.give(std::move(lease));
        } catch (...) {
          failures[i] = std::current_exception();
        }
      }
    });
    for (const std::exception_ptr& failure : failures) {
      if (failure) std::rethrow_exception(failure);
    }
    detail::rethrow_read_error();
    for (size_t i = 0; i < count; ++i) {
      detail::TensorOutcome& o = outcomes[i];
      result.sampling.elements_total += o.elements_total;
      result.sampling.elements_read += o.elements_read;
      result.sampling.tensors_sampled += o.sampled;
      block_tests.push_back(o.blocks);
      result.tensors.push_back(std::move(o.assay));
      done_bytes += tensors[first + i].info->nbytes();
    }
    if (options.progress) options.progress(done_bytes, total_bytes);
    first += count;
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
    size_t sketched = 0;
    for (const auto& p : result.permutations) sketched += p.contains("compared_coordinates");
    if (sketched > 0) {
      result.evidence["notes"].push_back(
          "sampled assay: the neurons of " + std::to_string(sketched) +
          " permuted MLP units were matched on " + std::to_string(detail::kSketchCoordinates) +
          " seeded coordinates of their descriptors (permutations[].compared_coordinates), "
          "so each matching is the best for those coordinates, not proven the best for all; "
          "a full assay compares every coordinate");
    }
  }
  result.audit = detail::collect_audit(options, started, examined, &hasher);
  return result;
}

}  // namespace

}  // namespace alloy
