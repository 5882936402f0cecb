// Internals of the verdict stage (lib/assay/verdict*.cpp), shared by its units only:
//   verdict.cpp           the entry point: the order in which the outcomes are tried;
//   verdict_evidence.cpp  per-candidate statistics and the evidence the decisions read;
//   verdict_bounds.cpp    per-component z and the false-positive bounds;
//   verdict_signature.cpp significance and sameness of the per-tensor weights;
//   verdict_outcomes.cpp  copy, layer stacking, fine-tune and independent;
//   verdict_sparse.cpp    TIES / DARE;
//   verdict_dense.cpp     slerp, linear and task arithmetic;
//   verdict_grid.cpp      a merge confirmed through the suspect's quantization grid;
//   verdict_sparse_noise.cpp  a sparse merge under noise read as a dense one;
//   verdict_recipe.cpp    recipe helpers and the rebuild check that picks among hypotheses;
//   verdict_summary.cpp   the summary text of a merge.
// docs/assay.md, "Verdicts", states every threshold used here and why.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "internal.h"
#include "quantization.h"

namespace alloy::detail {

// Exact share of a sparse recipe's rebuild that lets it replace a dense reading (sparse_rebuilds).
inline constexpr double kSparseRebuildExact = 0.9;
inline constexpr double kMergeZ = 5.0;  // every major component this many null scales above 0 (siblings: < 1)
inline constexpr double kMergeLog10Bound = -6.0;
// |S - fit| / |C_ref| of a clean merge: rounding to bf16 leaves 0.001-0.002 (docs/assay.md); above
// this the recipe leaves noise or further training unexplained.
inline constexpr double kRoundingLevel = 0.005;

// A number for a sentence: `significant` significant digits, no trailing zeros.
inline std::string number_text(double value, int significant = 3) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.*g", significant, value);
  return buffer;
}

// Numel-weighted values of one per-tensor statistic; non-finite values are left out.
struct Weighted {
  std::vector<std::pair<double, double>> values;  // (value, weight)
  void add(double v, double w) {
    if (std::isfinite(v)) values.push_back({v, w});
  }
  double median() const { return weighted_median(values); }
  double mean() const;
  double std_dev() const;
  bool empty() const { return values.empty(); }
};

// What every verdict unit reads (the fits, the models, the options) and writes (the result).
struct VerdictContext {
  AssayResult& result;
  const Model& suspect;
  const std::vector<const Model*>& models;
  const AssayOptions& options;
  int k = 0;                  // candidates
  uint64_t fitted_numel = 0;  // elements of the fitted tensors (set by aggregate_candidates)
  TensorGrids grids;          // the suspect's tensors on a quantization grid (set by decide)

  CandidateAssay& candidate(int c) { return result.candidates[size_t(c)]; }
  void note(const std::string& text) { result.evidence["notes"].push_back(text); }
  // One statistic over the fitted tensors, weighted by their element counts, in tensor order.
  template <class Value>
  Weighted over_fitted(Value value) const {
    Weighted w;
    for (const auto& t : result.tensors) {
      if (t.fitted) w.add(value(t), double(t.numel));
    }
    return w;
  }
};

// --- evidence (verdict_evidence.cpp) -------------------------------------------------------------
// Per candidate: median correlation, relatedness, mean weight and its spread; sets fitted_numel.
void aggregate_candidates(VerdictContext& v);
// Whether the candidates explain enough of the suspect's deviation for a dense merge (records
// cos_fit_median, cos_fit_bar and common_ancestor_among_candidates; notes a refusal).
bool explains_deviation(VerdictContext& v);
// The candidate most tensors (by elements) take as their reference.
int majority_reference(const VerdictContext& v);
// Mean fraction of resolved elements equal to the reference or to one candidate (tensors >= 4096).
double sparse_fraction(const VerdictContext& v);
// How much more often the suspect equals its reference than the candidate it equals most often
// otherwise (resolved elements, tensors of 4096 elements or more): the weighted mean of
// equal_reference over the largest weighted mean of equal_candidate. Elements made by dropping
// every delta equal the base; bf16 rounding of a suspect a few units in the last place from
// every candidate makes about as many chance equalities with each (docs/assay.md, "DELLA").
double reference_equality_concentration(const VerdictContext& v);

// --- false-positive bounds (verdict_bounds.cpp) --------------------------------------------------
// Per component: tensors, median z, cos_fit, weights and the two false-positive bounds.
void aggregate_components(VerdictContext& v);
struct MajorEvidence {
  double z_min = 0;                // smallest median z of a major component
  double log10_false_positive = 0;  // the weakest of their bounds
};
MajorEvidence major_evidence(const VerdictContext& v);
// Records major_evidence() and tells whether it clears kMergeZ and kMergeLog10Bound.
bool strong_evidence(VerdictContext& v);

// --- the merge signature (verdict_signature.cpp) -------------------------------------------------
inline constexpr double kMajorComponent = 0.05;  // share of the fitted elements
struct WeightSignificance {
  double weight = 0;  // inverse-variance mean over the fitted tensors
  double z = 0;       // that mean over its standard error
};
// Per candidate.
std::vector<WeightSignificance> weight_significance(const VerdictContext& v);
struct ComponentSpread {
  std::string component;
  int candidate = -1;
  double weight = 0;  // inverse-variance mean over the component's tensors
  double spread = 0;  // between-tensor sd within a layer beyond the standard errors, / |weight|
  int tensors = 0;    // tensors in layers with at least two of this component
  // Cochran's Q summed over the layers' cells against its chi-square null with sum (m - 1)
  // degrees of freedom, as a normal z (Wilson-Hilferty): how surely the weights differ at all.
  double heterogeneity_z = 0;
  // How far into the lower tail of Q's distribution under siblings' spread (kSiblingSpread of the
  // weight) the observed Q lies, as a normal z: large where the fit is precise enough to tell
  // sameness from siblings.
  double sibling_z = 0;
};
// Per major component and candidate whose weight there is significant and >= kInvolvedWeight.
std::vector<ComponentSpread> weight_spreads(const VerdictContext& v);
// Whether at least two of `involved` carry significant weights (they are kept, the others
// dropped) and every major component's weights are the same within a layer (kUntestable: no layer
// has two tensors of a major component); records weight_z and weight_spread in the evidence and
// notes a refusal.
enum class Signature { kPresent, kAbsent, kUntestable };
Signature consistent_weights(VerdictContext& v, std::vector<int>* involved);

// --- outcomes (verdict_outcomes.cpp, verdict_sparse.cpp, verdict_dense.cpp) ----------------------
void independent(VerdictContext& v, const std::string& why);
// `why`: what the merge hypothesis lacked (from the notes of the failed tests).
void fine_tune(VerdictContext& v, int base, const std::string& why);
bool try_copy(VerdictContext& v);
bool try_stacking(VerdictContext& v);
// The drop profile a sparse reading rests on: medians over the contributing candidates of the
// "nothing kept" rate in their largest 0.5% (top) and 10% (upper) of |delta|, and the magnitude
// step.
struct DropProfile {
  double top = 0, upper = 0, step = 0;
};
// Reads a sparse merge from the sparse statistics (method, recipe, rebuild check) into v.result;
// returns whether it did, and where `profile` is given, the drop profile it read.
bool try_sparse(VerdictContext& v, int base, DropProfile* profile = nullptr);
// Whether a profile shows drops at random, sparing no band (DARE: top ~ upper, no magnitude step),
// unlike the TIES family's (breadcrumbs_ties at 0.8, gamma 0.05, from 5% of its rows: top 0.97,
// upper 0.49, step -1.6, whose kept sets read like DARE's).
bool random_drops(const DropProfile& profile);
// DARE at high densities, where few elements equal the base: nearly every element is made by a
// kept set of rescaled deltas and some candidate is clearly not always kept (verdict_sparse.cpp).
bool dare_signature(const VerdictContext& v);
// The tensors whose kept sets count toward that signature (fitted against `base`, or any reference
// where base < 0), their classified and matched elements, and the largest standard error of a
// candidate's median density over them (from the spread between tensors; 0 with fewer than two).
struct KeptSetTally {
  size_t tensors = 0;
  uint64_t classified = 0, matched = 0;
  double density_se = 0;
};
KeptSetTally kept_set_tally(const VerdictContext& v, int base = -1);
// DELLA's: elements equal to the base beyond linear merges' share, and a drop profile between
// DARE's flat one and TIES's step (verdict_sparse.cpp).
bool della_signature(const VerdictContext& v);
bool try_slerp(VerdictContext& v, const std::vector<int>& involved);
void dense_merge(VerdictContext& v, const std::vector<int>& involved, int base);

// --- the quantization grid (verdict_grid.cpp) -----------------------------------------------------
// With a quantization grid on at least kQuantizedShare of the suspect's parameters (recorded in
// evidence["quantization"]), a fine-tune whose merge test the rounding left undecided is lowered
// (verdict.cpp, qualify), unless the blend of `involved` (their inverse-variance weights scaled to
// sum 1) confirms the merge through the grid: over kGridTestRows rows of every fitted tensor stored
// on a grid, the blended values outside the suspect's cells are at most kGridRebuildRatio of the
// reference candidate's (the base, else the heaviest), which must number kGridRebuildMinOutside or
// more. Records evidence["grid_rebuild"] and a note.
inline constexpr double kQuantizedShare = 0.5;
inline constexpr double kGridRebuildRatio = 0.1;
inline constexpr uint64_t kGridRebuildMinOutside = 200;
bool confirmed_through_grid(VerdictContext& v, const std::vector<int>& involved, int base);

// A dense reading whose residual depends on the parents' delta magnitudes (the parents: `involved`
// without `base`; the base, the reference of every delta, need not carry a weight): the slope of
// e = (S - B) - sum w_c delta_c on delta_c among the smaller half of |delta_c| and among the larger
// half differ by |z| >= 5 and by a fifth of w_c, or the mean |e| of the larger half exceeds the
// smaller's by |z| >= 5 and 10%, over 64 rows of the largest fitted tensors (2^20 elements in all).
// Only where the unexplained level is above rounding (kRoundingLevel). A dense merge under isotropic
// noise shows neither; a magnitude-trimmed (TIES family) or randomly
// dropped (DARE) one under noise does. Records
// evidence["residual_by_magnitude"] and returns whether it found the dependence (verdict.cpp then
// notes it and lowers the verdict: a dense merge's method is not established, a fine-tune read from
// weights that differ between tensors is undecided).
bool sparse_under_noise(VerdictContext& v, const std::vector<int>& involved, int base);

// --- sparse statistics read late (verdict_late_sparse.cpp) -------------------------------------
// The first pass reads a tensor's sparse statistics only where a tenth of its resolved elements
// equal the base or a candidate (tensor_pass.cpp): a dense merge is spared two more reads of every
// input. A sparse merge of three parents at moderate densities has fewer (a breadcrumbs_ties of
// 0.5 / 0.6 / 0.7: 4% equal the base, none a parent, as many as a dense blend's rounding makes),
// so its dense reading, whose residual depends on the deltas' magnitudes, had nothing to read it
// as a sparse merge from. These read them afterwards on a few tensors.
// Whether fewer than half the elements of the tensors the statistics apply to have them.
bool sparse_statistics_missing(const AssayResult& result);
struct LateSparse {
  size_t tensors = 0;
  uint64_t elements = 0;
};
// Reads the sparse statistics of up to 16 tensors of the rebuild sample (rebuild_sample) that lack
// them into `into`'s tensors (the fits v's verdict started from); returns what it read.
LateSparse read_late_sparse(const VerdictContext& v, AssayResult* into);

// --- recipes (verdict_recipe.cpp) ----------------------------------------------------------------
// The torch name of the dtype holding most of the model's bytes (the recipe's dtype).
std::string torch_dtype_of(const Model& model);
double round_digits(double value, int digits);
// The tensors the rebuild check reads: the largest fitted unaligned tensor of each component, then
// the largest others, `most` in all, each of at most 2^20 elements so that trying several
// hypotheses stays cheap whatever the model size; a sampled assay (--sample F) takes tensors of at
// most max(4096, F x 2^22) elements, so that its checks cost about as much less as its statistics.
std::vector<std::string> rebuild_sample(const VerdictContext& v, int most);
// Rebuilds sampled tensors under each hypothesis (and rounder variants of it), keeps the best
// recipe in result.recipe and records the check in evidence["rebuild"].
// The last `fallbacks` hypotheses are tried only when none of the others rebuilds every sampled
// element exactly (then they could not be strictly better), and are listed as alternatives only
// when tried.
void confirm_by_rebuild(VerdictContext& v, const std::vector<nlohmann::json>& hypotheses,
                        size_t fallbacks = 0);
// The share of the rebuild check's sampled elements that a result's recipe rebuilt exactly (0 when
// no check ran: a hypothesis whose parameters mergekit refuses, for one).
double rebuilt_exactly(const AssayResult& r);

// A deterministic sparse recipe (the TIES family) that rebuilds part of the sample exactly has some
// parameter a little off (read from small tensors, or a third parent's density from a drop profile
// that rounding blurs: a breadcrumbs_ties of 0.5 / 0.6 / 0.7 read as 0.51 / 0.3 / 0.2 at 0.5 / 0.6
// / 0.67 rebuilt 83% exactly). Each parent's density, then its weight, is searched in steps of
// kRefineStep within kRefineSteps (weights kRefineWeightSteps) steps of the reading, one at a time
// (walking on while the farthest step is the best), after breadcrumbs' gamma (verdict_recipe.cpp,
// refine_gamma), in at most kRefineRounds sweeps, each step scored by its rebuild (exact share
// first, ties to the earlier step, so the result does not depend on the threads). Keeps the best
// recipe and its check in v.result and notes the search; returns whether it improved the rebuild.
// DARE's too, where its masks are the rebuild's (masks_reproduced): each density step then takes
// its weight along (rounded to 0.01), since the kept-set scale w / d is what the statistics read
// well (a Mixtral-layout merge of four read 0.379 / 0.474 for 0.4 / 0.5, 87% rebuilt).
inline constexpr double kRefineStep = 0.01;
inline constexpr int kRefineSteps = 5;
inline constexpr int kRefineWeightSteps = 3;
inline constexpr int kRefineRounds = 2;
inline constexpr int kRefineWalks = 4;        // reach-long walks on from the farthest step
inline constexpr double kRefineFloor = 0.25;  // exact share below which no search is tried
bool refine_sparse_recipe(VerdictContext& v);
// Whether a recipe with random masks (DARE, DELLA) rebuilds the sample beyond what masks drawn
// independently would: halfway from chance, prod_i (d_i^2 + (1 - d_i)^2) over its densities (every
// parent's keep decision the same), to 1. Masks drawn elsewhere (another seed, mergekit's torch
// generator) rebuilt 23-37% of merges of two to four parents at densities 0.5-0.8 (chance 10-27%).
bool masks_reproduced(const AssayResult& result);

// --- summary (verdict_summary.cpp) ---------------------------------------------------------------
// evidence["unexplained_level"]: the median |S - fit| / |C_ref| over the fitted tensors.
void record_unexplained(VerdictContext& v);
// evidence["summary"] of a merge, with the evidence it rests on.
void summarise_merge(VerdictContext& v);

}  // namespace alloy::detail
