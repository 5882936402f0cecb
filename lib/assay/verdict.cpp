// The verdict stage: aggregate the per-tensor fits, decide merge / fine-tune / copy / independent,
// name the method, write the recipe and confirm it by rebuilding sampled tensors. This file holds
// the order in which the outcomes are tried; verdict.h lists the units that decide each.
// docs/assay.md, "Verdicts", states every threshold used here and why.
#include <algorithm>
#include <cmath>
#include <optional>

#include "coverage.h"
#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kSparseEquality = 0.25;  // linear merges: ~0.08 from cancellations
// A deterministic merge rebuilds its sampled tensors exactly or within rounding (relative error
// ~1e-3 in bf16); noise or further training on top leaves a few percent. Above this the recipe
// does not make the suspect, whatever the fit says.
constexpr double kRebuildError = 0.1;

// A suspect stored after a quantization round trip (quantization.h) carries rounding noise that
// no recipe explains: evidence["quantization"] and a note report the grid, for any verdict.
void record_quantization(VerdictContext& v) {
  v.grids = detect_grids(v.suspect);
  const nlohmann::json grid = quantization_finding(v.suspect, v.grids);
  if (grid.is_null()) return;
  v.result.evidence["quantization"] = grid;
  const uint64_t group = grid["group_size"].get<uint64_t>();
  v.note("the suspect's matrices lie on an " + grid["format"].get<std::string>() + " grid (" +
         grid["scheme"].get<std::string>() + ", " + std::to_string(grid["levels"].get<int>()) + " levels, one scale per " +
         (group == 0 ? std::string("row") : std::to_string(group) + " elements") + ") in " +
         std::to_string(grid["tensors"].get<size_t>()) + " of " + std::to_string(grid["tested"].get<size_t>()) +
         " (" + number_text(100 * grid["share"].get<double>(), 3) +
         "% of the parameters): a quantization round trip, whose rounding is noise that no recipe explains");
}

// A fine-tune verdict whose merge test found nothing positive (the weights' sameness untestable, or
// fewer than two significant weights) only because the rounding noise swamps the fit is not
// evidence against a merge: with a grid on at least kQuantizedShare of the parameters, it is
// lowered (the fine-tune is a guess between the two).
bool undecided_under_quantization(VerdictContext& v) {
  AssayResult& r = v.result;
  if (r.verdict != "fine-tune" || !r.evidence.contains("quantization")) return false;
  const nlohmann::json& grid = r.evidence["quantization"];
  if (grid["share"].get<double>() < kQuantizedShare) return false;
  size_t significant = 0;
  const nlohmann::json weight_z = r.evidence.value("weight_z", nlohmann::json::object());
  for (const auto& [path, z] : weight_z.items()) {
    significant += z.is_number() && std::fabs(z.get<double>()) >= kMergeZ;  // NaN is stored as null
  }
  const std::string signature = r.evidence.value("merge_signature", "");
  if (signature != "untestable" && !(signature == "absent" && significant < 2)) return false;
  v.note("the " + grid["format"].get<std::string>() + " rounding (" +
         number_text(100 * r.evidence.value("unexplained_level", 0.0), 2) +
         "% of the weights' norm left unexplained) is what leaves the merge test undecided: a merge of the "
         "candidates that moved the weights less than this noise cannot be told from a fine-tune here");
  return true;
}

// A fine-tune verdict whose sameness test could not decide, while at least two candidates carry a
// significant weight, is a guess too: the fit is too weak to tell a recipe's one weight per layer
// from siblings' spread (a 2-layer Phi-3 merge under noise twice its deviation: weights 0.56 /
// 0.43, both |z| > 5, z_min 3.9; with 4 layers the same merge is found). It is lowered.
bool undecided_sameness(VerdictContext& v) {
  AssayResult& r = v.result;
  if (r.verdict != "fine-tune" || r.evidence.value("merge_signature", "") != "untestable") return false;
  std::vector<std::string> significant;
  const nlohmann::json weight_z = r.evidence.value("weight_z", nlohmann::json::object());
  for (const auto& [path, z] : weight_z.items()) {
    if (z.is_number() && std::fabs(z.get<double>()) >= kMergeZ) significant.push_back(path);
  }
  if (significant.size() < 2) return false;
  v.note("the weights of " + significant[0] + " and " + significant[1] +
         " are significant, but the fit is too weak to test whether they are one weight per layer (a recipe) or "
         "spread from tensor to tensor (siblings): a merge of them cannot be told from a fine-tune here");
  return true;
}

// Refuse to guess: what the verdict could not check lowers it. Tensors the alignment could not
// undo (run.cpp leaves them out of the fit, so no candidate carries a weight on them) are listed
// in evidence["unchecked"] and make the confidence "partial"; a rebuild check that misses what a
// merge or copy claims makes it "low". evidence["confidence"] is absent when nothing lowered it.
void qualify(VerdictContext& v) {
  AssayResult& r = v.result;
  uint64_t unaligned = 0, compared = 0;
  size_t count = 0;
  std::vector<std::string> components;
  for (const auto& t : r.tensors) {
    if (t.fitted) compared += t.numel;
    if (t.fitted || t.skipped.rfind("not aligned", 0) != 0) continue;
    unaligned += t.numel;
    ++count;
    if (std::find(components.begin(), components.end(), t.component) == components.end()) {
      components.push_back(t.component);
    }
  }
  std::string confidence, prefix;
  if (count > 0) {
    const double fraction = double(unaligned) / double(unaligned + compared);
    r.evidence["unchecked"] = {{"tensors", count}, {"elements", unaligned}, {"fraction", fraction},
                               {"components", components}};
    std::string list;
    for (const auto& c : components) list += (list.empty() ? "" : ", ") + c;
    v.note("could not align " + std::to_string(count) + " tensors (" + std::to_string(fraction) +
           " of the elements; " + list +
           "): part of each correlates with no candidate, a permutation or layout the assay cannot undo; "
           "they are left out of the fit and nothing is claimed about them");
    confidence = "partial";
    prefix = "partly checked (" + std::to_string(count) + " tensors could not be aligned): ";
  }
  const auto& rebuild = r.evidence.contains("rebuild") ? r.evidence["rebuild"] : nlohmann::json();
  // A merge followed by further training rebuilds only up to what the fit leaves unexplained:
  // that part is reported as the disguise, and only a miss well beyond it lowers the verdict.
  const double unexplained = r.evidence.value("unexplained_level", 0.0);
  const double bar = std::max(kRebuildError, 1.5 * unexplained + 0.02);
  if ((r.verdict == "merge" || r.verdict == "copy") && !is_dare_method(r.method) &&
      rebuild.contains("relative_error") && rebuild["relative_error"].get<double>() > bar) {
    v.note("the recovered recipe rebuilds the sampled tensors only within relative error " +
           number_text(rebuild["relative_error"].get<double>()) + " (bar " + number_text(bar) +
           "): the verdict is not confirmed");
    confidence = "low";
    prefix = "not confirmed by the rebuild check: ";
  }
  if (!r.evidence.value("method_established", true)) {
    confidence = "low";
    prefix = "a merge, but not by the method named (its residual depends on the deltas' magnitudes, as a sparse merge's does): ";
  }
  if (undecided_under_quantization(v)) {
    confidence = "low";
    prefix = "undecided under the quantization noise: ";
  } else if (undecided_sameness(v)) {
    confidence = "low";
    prefix = "undecided, the weights' sameness untestable: ";
  } else if (r.evidence.value("sparse_merge_possible", false)) {
    confidence = "low";
    prefix = "undecided, possibly a sparse merge under noise: ";
  }
  if (confidence.empty()) return;
  r.evidence["confidence"] = confidence;
  r.evidence["summary"] = prefix + r.evidence.value("summary", "");
}

// What a second reading reached: no verdict, a verdict that stands if its recipe rebuilds the
// sample, or one that stands on evidence its rebuild cannot give (DARE's kept sets, whose masks a
// rebuild draws again only where the merge used alloy's generator and seed).
enum class Reading { kNone, kIfRebuilt, kStands };

// Runs `reading` (which sets v.result and returns a Reading) from `undecided`, the result before
// the first reading, and keeps its result when that is a merge that stands or whose recipe
// rebuilds the sampled tensors almost exactly (kSparseRebuildExact); returns the first reading's
// result, set aside, in that case. Otherwise v.result is the first reading's again.
template <class ReadingFn>
std::optional<AssayResult> replaced_if_rebuilt(VerdictContext& v, const AssayResult& undecided,
                                               ReadingFn&& reading) {
  AssayResult first = std::move(v.result);
  v.result = undecided;
  const Reading outcome = reading();
  if (outcome != Reading::kNone && v.result.verdict == "merge" &&
      (outcome == Reading::kStands || rebuilt_exactly(v.result) >= kSparseRebuildExact))
    return first;
  v.result = std::move(first);
  return std::nullopt;
}

// A DARE reading whose masks are the rebuild's (masks_reproduced) but whose recipe does not rebuild
// the whole sample has its parameters searched: the rebuilds find the recipe (a dare_linear of four
// assayed with --sample 0.02 read densities 0.44 / 0.57 / 0.69 / 0.8, 84% rebuilt).
void refine_own_masks(VerdictContext& v) {
  if (is_dare_method(v.result.method) && rebuilt_exactly(v.result) < 1.0 &&
      masks_reproduced(v.result) && refine_sparse_recipe(v))
    summarise_merge(v);
}

// A clean sparse merge can have too few exact equalities for decide()'s sparse gate (a
// breadcrumbs_ties merge at density 0.5: a delta kept alone is multiplied and divided by its weight
// in bf16 and rarely comes back exactly, so only the elements that both parents dropped equal the
// base, about 10% of them against the gate's 25%), and is then read densely with a residual that
// depends on the delta magnitudes (a merge whose method is not established or, where the trimming
// makes the base's weight differ between tensors, a fine-tune). Read once more as a sparse merge
// from `undecided` (the result before the dense reading), with the sparse statistics read now
// where the first pass left them out, that reading is kept only when its recipe rebuilds the
// sampled tensors almost exactly (kSparseRebuildExact), after a deterministic recipe that rebuilds
// part of them has had its densities and weights refined by rebuilds (refine_sparse_recipe):
// noise, further training or a non-merge never does.
bool sparse_rebuilds(VerdictContext& v, const AssayResult& undecided, int base) {
  AssayResult start = undecided;
  const LateSparse late =
      sparse_statistics_missing(start) ? read_late_sparse(v, &start) : LateSparse{};
  const double dense_exact = rebuilt_exactly(v.result);
  bool by_kept_sets = false;
  const auto reading = [&] {
    DropProfile profile;
    if (!try_sparse(v, base, &profile)) return Reading::kNone;
    const double exact = rebuilt_exactly(v.result);
    // DARE named by its kept sets (nearly every classified element made by one, some parent
    // dropping often) and dropping at random: no dense merge, fine-tune or noise makes them,
    // whatever the masks' seed, while the rebuild reproduces the masks only where the merge drew
    // them as alloy does with the same seed (a mergekit merge never: torch's draws; another seed
    // rebuilt 23-37%). The TIES family's kept sets read the same (random_drops).
    if (is_dare_method(v.result.method) && dare_signature(v) && random_drops(profile)) {
      refine_own_masks(v);
      by_kept_sets = rebuilt_exactly(v.result) < kSparseRebuildExact;
      return Reading::kStands;
    }
    // Part of the sample rebuilt exactly by a deterministic recipe: a parameter is a little off,
    // and the rebuilds find it (noise leaves a few percent at most, so nothing is searched there;
    // random masks rebuild exactly only where they happen to agree, which no search improves).
    // Above the bar too: a breadcrumbs_ties of two at density 0.8 read 0.78 rebuilt 98.3%.
    if (!has_random_masks(v.result.method) && exact >= kRefineFloor && exact < 1.0 &&
        exact > dense_exact && refine_sparse_recipe(v))
      summarise_merge(v);
    return Reading::kIfRebuilt;
  };
  const auto dense = replaced_if_rebuilt(v, start, reading);
  if (!dense) return false;
  v.result.evidence["residual_by_magnitude"] = dense->evidence.value("residual_by_magnitude", nlohmann::json());
  const bool dense_merge = dense->verdict == "merge";
  v.note(
      "read densely first (" + dense->verdict +
      (dense_merge ? " by " + dense->method : std::string()) +
      "), the residual depended on the parents' delta magnitudes (evidence.residual_by_magnitude); "
      "read as a sparse merge, its recipe rebuilds " +
      number_text(100 * rebuilt_exactly(v.result)) + "% of the sampled elements exactly" +
      (dense_merge ? ", the dense recipe " + number_text(100 * dense_exact) + "%" : std::string()));
  if (late.tensors > 0) {
    v.note(
        "too few elements equal the base or a parent for the first pass to read the sparse "
        "statistics; they were read afterwards on " +
        std::to_string(late.tensors) + " tensors (" + std::to_string(late.elements) +
        " elements), and the sparse parameters rest on those");
  }
  if (by_kept_sets) {
    const KeptSetTally tally = kept_set_tally(v);
    const std::string masks = masks_reproduced(v.result)
                                  ? "its masks are the rebuild's, but no recipe searched rebuilds "
                                    "the sample exactly, so the densities "
                                    "and weights are approximate"
                                  : "its masks are not the ones the rebuild draws (another seed, "
                                    "or mergekit's torch generator), so its "
                                    "rebuild says nothing";
    v.note("the method rests on the kept sets, not on the rebuild: " +
           std::to_string(tally.matched) + " of " + std::to_string(tally.classified) +
           " classified elements over " + std::to_string(tally.tensors) +
           " tensors are a sum of rescaled kept deltas, which only DARE makes; " + masks +
           "; the densities are the medians of those tensors' counts (a standard error up to " +
           number_text(tally.density_se) + " from their spread)");
  }
  return true;
}

// `reread_sparse`: whether a residual that depends on the delta magnitudes sends the suspect to a
// sparse reading (sparse_rebuilds); not when the dense reading is itself the comparison for one.
void decide_dense(VerdictContext& v, int base, bool reread_sparse = true);

// The converse of sparse_rebuilds: equalities to the base are counted where the related candidates
// spread, so sibling decoys (which spread where the parents agree with the base, and the suspect
// with them) inflate them; with five siblings among 8 candidates a linear merge passed the sparse
// gate and was read as ties, its recipe rebuilding 6% of the sample exactly, and a linear merge of
// four parents beside three siblings as della_linear (weights 0.35 / 0.16 / 0.15 / 0.14 for 0.4 /
// 0.3 / 0.2 / 0.1, full confidence). A sparse reading gives way to the dense reading from
// `undecided` when that one is a merge whose recipe rebuilds the sample almost exactly
// (kSparseRebuildExact): a merge that dropped deltas never is one. Deterministic readings that
// rebuild that much themselves keep it; readings with random masks (DARE, DELLA, the undecided
// TIES family) are always compared, since their rebuild shows nothing (a merge made elsewhere has
// other masks). Returns whether it gave way (v.result is then the dense verdict).
bool dense_rebuilds_instead(VerdictContext& v, const AssayResult& undecided, int base) {
  if (!has_random_masks(v.result.method) && rebuilt_exactly(v.result) >= kSparseRebuildExact)
    return false;
  const auto sparse = replaced_if_rebuilt(v, undecided, [&] {
    decide_dense(v, base, false);
    // A dense reading whose residual depends on the delta magnitudes is itself evidence of the
    // dropping: it never replaces the sparse one.
    return v.result.evidence.value("method_established", true) ? Reading::kIfRebuilt
                                                               : Reading::kNone;
  });
  if (!sparse) return false;
  v.note("the equalities to the base first suggested a sparse merge (" + sparse->method + "), whose recipe rebuilds only " +
         number_text(100 * rebuilt_exactly(*sparse)) + "% of the sampled elements exactly; the dense recipe rebuilds " +
         number_text(100 * rebuilt_exactly(v.result)) +
         "% (equalities where decoys spread and the parents agree with the base say nothing)");
  return true;
}

void decide(VerdictContext& v) {
  aggregate_candidates(v);
  aggregate_components(v);
  v.result.evidence = {{"notes", nlohmann::json::array()}};
  record_quantization(v);
  if (v.fitted_numel == 0 || try_stacking(v)) {
    if (v.fitted_numel == 0 && v.result.verdict.empty()) independent(v, "no tensor of the suspect could be compared");
    return;
  }
  if (try_copy(v)) return;
  const int base = majority_reference(v);
  bool any_related = false;
  for (const auto& c : v.result.candidates) any_related |= c.related;
  if (!any_related) {
    independent(v, "no candidate correlates with the suspect beyond chance");
    return;
  }
  if (sparse_fraction(v) > kSparseEquality || dare_signature(v) || della_signature(v)) {
    const AssayResult undecided = v.result;
    if (try_sparse(v, base)) {
      refine_own_masks(v);
      if (!dense_rebuilds_instead(v, undecided, base)) return;
    }
  }
  decide_dense(v, base);
}

// The dense verdicts: a merge with one weight per candidate and layer (linear, task arithmetic,
// slerp), a fine-tune, or a merge whose method is not established.
void decide_dense(VerdictContext& v, int base, bool reread_sparse) {
  std::vector<int> involved;
  for (int c = 0; c < v.k; ++c) {
    if (std::fabs(v.candidate(c).weight) >= kInvolvedWeight) involved.push_back(c);
  }
  if (involved.size() < 2) {
    fine_tune(v, base, "no second candidate carries a weight of at least " + number_text(kInvolvedWeight));
    return;
  }
  // The merge signature decides (significant weights, the same within each layer); where it
  // cannot be tested, the false-positive bound of the calibrated z does. Either way the fit must
  // explain the deviation when siblings of an absent ancestor could fit each other. A failed test
  // leaves its reason as the last note; the fine-tune's summary quotes it.
  const bool strong = strong_evidence(v);
  const auto note_of = [&](size_t before) {
    const auto& notes = v.result.evidence["notes"];
    return notes.size() > before ? notes.back().get<std::string>() : std::string();
  };
  size_t before = v.result.evidence["notes"].size();
  const Signature signature = consistent_weights(v, &involved);
  const std::string signature_why = note_of(before);
  before = v.result.evidence["notes"].size();
  const bool explained = explains_deviation(v);
  const std::string explained_why = note_of(before);
  if ((signature == Signature::kPresent || (signature == Signature::kUntestable && strong)) && explained) {
    const AssayResult undecided = v.result;  // for a sparse reading after the dense one
    for (int c : involved) v.candidate(c).involved = true;
    if (involved.size() == 2 && try_slerp(v, involved)) return;
    dense_merge(v, involved, base);
    // Under noise the exact equalities of a sparse merge are gone; its magnitude trimming is not.
    if (sparse_under_noise(v, involved, base)) {
      if (reread_sparse && sparse_rebuilds(v, undecided, base)) return;
      v.result.evidence["method_established"] = false;
      v.note("the residual of the dense reading depends on the parents' delta magnitudes (its slope on a "
             "parent's delta, or its size, differs between the smaller and the larger half of them; "
             "evidence.residual_by_magnitude): a magnitude-trimmed (TIES family) or randomly dropped (DARE) merge "
             "whose exact equalities noise, further training or the compute dtype's rounding removed (a kept delta "
             "multiplied and divided by its weight in bf16 rarely comes back exactly), not a dense one; the method is not "
             "established and the weights are those of the dense reading");
    }
    return;
  }
  // Too weak to test under a quantization grid's rounding: the grid itself can confirm the blend.
  if (signature == Signature::kUntestable && confirmed_through_grid(v, involved, base)) {
    for (int c : involved) v.candidate(c).involved = true;
    if (!(involved.size() == 2 && try_slerp(v, involved))) dense_merge(v, involved, base);
    return;
  }
  const AssayResult before_fine_tune = v.result;  // for a sparse reading after the fine-tune
  fine_tune(v, base, signature == Signature::kAbsent ? signature_why
                     : !explained                    ? explained_why
                                                     : signature_why + "; z_min " + number_text(v.result.evidence["z_min"].get<double>()) +
                                                           " < " + number_text(kMergeZ));
  // Read densely, a sparse merge under noise gives the base a weight that is an artefact of the
  // trimming and differs from tensor to tensor, so the sameness test takes it for siblings
  // (GPT-OSS, breadcrumbs_ties under noise half its deviation: the base's weight on experts spread
  // 0.17, bar 0.15). Siblings' residuals do not depend on the deltas' magnitudes; a trimmed merge's
  // do. A sparse reading that rebuilds the sample replaces the fine-tune (a breadcrumbs_ties of
  // three parents assayed with --sample 0.05: the base's weight on attention spread 0.19, bar
  // 0.15).
  if (signature == Signature::kAbsent && sparse_under_noise(v, involved, base)) {
    if (reread_sparse && sparse_rebuilds(v, before_fine_tune, base)) return;
    v.result.evidence["sparse_merge_possible"] = true;
    v.note("the residual of the dense reading depends on the candidates' delta magnitudes (its slope on a "
           "delta, or its size, differs between the smaller and the larger half of them; "
           "evidence.residual_by_magnitude), as a magnitude-trimmed (TIES family) or randomly dropped (DARE) "
           "merge under noise or further training leaves it and siblings do not: the weights that differ between tensors may be "
           "that merge's trimming, so the fine-tune is not established");
  }
}

}  // namespace

void decide_verdict(AssayResult* result, const Model& suspect, const std::vector<const Model*>& candidates,
                    const AssayOptions& options) {
  VerdictContext context{*result, suspect, candidates, options, int(candidates.size()), 0, {}};
  decide(context);
  qualify(context);
  qualify_coverage(result);
}

}  // namespace alloy::detail
