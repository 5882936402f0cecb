// alloy/assay/assay.h: recovering what a released model was made from.
//
// Given a suspect model S and candidate parents C_1..C_k, the assay streams the tensors once and,
// per tensor, accumulates sufficient statistics in double with fixed chunking (deterministic for
// any thread count): the Gram matrix of [S, C_1..C_k] over all elements and over the "resolved"
// elements (where the candidates differ by several units in the last place, so that rounding
// cannot snap a blend onto a parent), element sums for Pearson correlations, and exact-equality
// counts (S == C_b bit for bit) that expose sparsifying methods (TIES, DARE). From these it fits,
// per tensor, the affine model S = sum_i w_i C_i (sum w_i = 1) by constrained least squares, the
// slerp model, and, where the equality counts say so, the task-arithmetic family with its
// densities; it aggregates per component, calibrates the null from the candidates themselves, and
// issues a verdict with evidence. docs/assay.md has the formulas, the JSON schema and the verdict
// rules; tests/test_assay*.cpp check them on round trips through alloy-merge.
//
// Memory: the statistics pass converts chunks of the mapped tensors into per-chunk scratch and
// never holds a whole tensor in float32; only the rebuild check (a few sampled tensors) and the
// density pass use full-tensor buffers, from a pool reused across tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/architecture.h"
#include "alloy/core/model.h"

namespace alloy {

struct AssayOptions {
  std::filesystem::path suspect;
  std::vector<std::string> candidates;  // paths exactly as given (the recipe names them so)
  // Tensors per model checked by re-running the recovered recipe through the merge methods.
  int rebuild_check_tensors = 6;
  ModelOpenOptions open;  // how the models are opened (unindexed shards); warnings become notes
  // Called after each tensor with (suspect bytes examined, the suspect's total bytes); may be
  // empty (tools draw alloy/core/progress.h's bar with it).
  std::function<void(uint64_t, uint64_t)> progress;
  // Recorded in the audit (the tool's arguments, argv[0] as its file name only).
  std::vector<std::string> command_line;
  // sha256 of every file of every model, on background threads beside the analysis (the audit).
  bool hash_files = true;
  // A directory of digests keyed by fstat (alloy/core/hash_cache.h, which says how far to trust it);
  // empty: none. The audit marks digests taken from it ("sha256_source": "cache").
  std::filesystem::path hash_cache;
  // alloy-assay --sample FRACTION: in (0, 1), every tensor's statistics come from a seeded random
  // subset of ceil(FRACTION x rows) of its rows (at least 8; rows: every axis but the last; 1-D
  // tensors and tensors of few rows are read whole), so that judging a model reads about FRACTION
  // of its bytes. The fitted weights' standard errors come from the elements read, so they widen
  // by about 1/sqrt(FRACTION). 0 (the default) or 1: every element. Same seed, same rows.
  double sample_fraction = 0;
  uint64_t sample_seed = 0;
};

// What a sampled assay read (AssayResult::sampling; fraction 0 when everything was read).
struct AssaySampling {
  double fraction = 0;
  uint64_t seed = 0;
  uint64_t tensors_sampled = 0;   // tensors of which a subset of rows was read
  uint64_t elements_read = 0;     // per model, over the fitted tensors
  uint64_t elements_total = 0;    // what a full assay would have read of the same tensors
};

// What was examined, so that a finding can be tied to the exact bytes it is about: the tool's
// version, the time (UTC, RFC 3339), the command line, and per model its files with size and
// sha256 (for a weight file, the Hub's LFS oid) and, for a folder inside a Hugging Face cache
// (models--org--name/snapshots/REVISION), the Hub id and revision. docs/assay.md, "audit".
struct ExaminedFile {
  std::string path;               // the model path as given joined with the file name
  uint64_t size = 0;
  std::string sha256;             // "" when not hashed (--no-file-hashes)
  bool sha256_from_cache = false; // the digest came from --hash-cache ("sha256_source": "cache")
};
struct ExaminedModel {
  std::string role;               // "suspect" or "candidate"
  std::string path;               // as given
  std::string hub_id, hub_revision;  // "" when not in a Hub cache
  std::vector<ExaminedFile> files;
};
struct AssayAudit {
  std::string alloy_version;
  std::string time;
  std::vector<std::string> command_line;
  std::vector<ExaminedModel> models;  // the suspect first, then the candidates in order
  std::vector<std::string> notices;   // e.g. a hash cache that could not be written (stderr, not JSON)
};

// The fit of one suspect tensor against the candidates.
struct TensorAssay {
  std::string name;
  std::string component;          // see assay_component_names()
  int layer = -1;                 // -1 outside the decoder layers
  int expert = -1;                // routed expert index, or -1
  uint64_t numel = 0;
  bool fitted = false;            // false: shapes differ or a candidate lacks it (see `skipped`)
  bool aligned = false;           // compared after undoing a permutation (see permutations)
  std::string skipped;            // why it was not fitted
  int reference = -1;             // candidate the deviation is measured from (the fitted base)
  std::vector<double> weights;    // affine least-squares mixing weights, one per candidate, sum 1
  std::vector<double> weight_se;  // their standard errors
  double cos_fit = 0;             // cos(S - C_ref, fit - C_ref)
  double null_cos = 0;            // calibrated scale of cos_fit for unrelated deviations
  // Largest |cos(C_i - C_ref, C_j - C_ref)| over pairs of other related candidates: near 0 when the
  // reference is their common ancestor, about 1/2 when it is one of several siblings; NaN when
  // fewer than two other candidates are related.
  double ancestor_cos = 0;
  double z = 0;                   // cos_fit / null_cos
  double deviation = 0;           // |S - C_ref| / |C_ref|
  double residual = 0;            // |S - fit| / |S - C_ref|
  std::vector<double> correlation;  // Pearson correlation of S with each candidate
  int copy_of = -1;               // candidate S equals bit for bit, or -1
  // slerp between the two candidates with the largest weights (parent_a at t = 0).
  int parent_a = -1, parent_b = -1;
  double slerp_theta = 0;         // angle between the parents, radians
  double coefficient_sum = 0;     // unconstrained least-squares s_a + s_b
  double coefficient_sum_se = 0;
  double slerp_t = 0;             // t recovered from the unconstrained coefficients
  double slerp_excess = 0;        // predicted s_a + s_b - 1 under slerp at slerp_t
  // Sparsification evidence relative to `reference`, over resolved elements.
  double equal_reference = 0;     // fraction of elements with S == C_ref exactly
  std::vector<double> equal_candidate;  // per candidate: fraction with S == C_i != C_ref
  std::vector<double> density;    // estimated kept fraction per candidate (NaN when not estimated)
  std::vector<double> magnitude_step;   // 1 - P(nothing kept | large |delta|) / P(.. | small |delta|)
  std::vector<double> kept_scale;       // (S - C_ref) / delta_i where i alone is kept (median)
  std::vector<double> solo_density;     // kept fraction from "kept alone" vs "nothing kept" counts
  std::vector<double> ratio_weight;     // TIES weight ratios (sum 1) where all kept agree
  // The drop profile of each candidate along its |delta| (docs/assay.md "Breadcrumbs and DELLA"),
  // each "nothing kept" rate relative to the one among its smallest 10% of deltas (always
  // dropped under TIES and breadcrumbs): in its largest 0.5% (TIES ~0, breadcrumbs ~1), in its
  // largest 10% (TIES 0, DELLA between, DARE 1); the share of its elements dropped above its
  // kept ones (breadcrumbs' gamma) and the kept share those rates imply.
  std::vector<double> top_drop, upper_drop, outlier_share, profile_density;
  // DARE's kept sets read element by element (docs/assay.md "DARE densities and rules"): per
  // candidate its keep rate and rescaled weight a_i = w_i / density_i (NaN where not measured);
  // the share of classifiable elements some kept set explains; the well-resolved elements with
  // deltas of both signs, and how many of them only the plain sum (no sign consensus) explains.
  std::vector<double> subset_density;
  std::vector<double> subset_scale;
  // The same read under a normalised combination (della): keep rates and, with two candidates
  // besides the base, their relative weights (sum 1). NaN where not measured.
  std::vector<double> normalized_density;
  std::vector<double> normalized_weight;
  double subset_matched = 0;
  uint64_t subset_classifiable = 0;
  uint64_t opposite_elements = 0, sum_votes = 0;
};

struct CandidateAssay {
  std::string path;
  double correlation = 0;         // median Pearson correlation with the suspect (numel-weighted)
  bool related = false;           // shares weights with the suspect beyond the null
  bool involved = false;          // carries a weight in the recovered recipe
  double weight = 0;              // numel-weighted mean mixing weight
  double weight_std = 0;          // spread across tensors
  double density = 0;             // recovered density (sparsifying methods), else 1
};

struct ComponentAssay {
  std::string name;
  size_t tensors = 0;
  uint64_t numel = 0;
  std::vector<double> weight_mean, weight_std;  // per candidate, across the component's tensors
  double cos_fit_mean = 0, cos_fit_min = 0;
  double z = 0;                   // median per-tensor z
  // Bounds on the chance that unrelated weights give this z: with a sub-Gaussian null of the
  // calibrated scale (P(z_t >= x) <= exp(-x^2/2)), and distribution-free (Cantelli, 1/(1+x^2)).
  double log10_false_positive = 0;
  double log10_false_positive_distribution_free = 0;
};

struct AssayResult {
  std::string verdict;            // "merge", "fine-tune", "copy", "independent"
  std::string method;             // merge method for "merge" (else "")
  std::optional<int> base;        // index of the candidate the suspect derives from
  std::vector<CandidateAssay> candidates;
  std::vector<ComponentAssay> components;
  std::vector<TensorAssay> tensors;
  nlohmann::json recipe;          // mergekit recipe (JSON form); empty object when none
  nlohmann::json evidence;        // z-scores, bounds, rebuild check, notes
  nlohmann::json permutations = nlohmann::json::array();  // filled by the alignment stage
  std::string suspect;
  AssayAudit audit;
  AssaySampling sampling;
};

// Component names in display order: "embeddings", "lm_head", "attention", "linear_attention",
// "mlp", "experts", "shared_experts", "router", "norms", "other".
const std::vector<std::string>& assay_component_names();
// The component of a tensor name (Llama, Qwen2/3-MoE and similar layouts).
std::string assay_component(const std::string& tensor_name, int* layer, int* expert);
// The component of a tensor of a model whose architecture is known: from the tensor's role
// (alloy/core/architecture.h), so Mixtral's block_sparse_moe.gate is the router and
// linear_attn.norm is linear attention; sub-model tensors (vision tower, MTP head) are "other" and in
// no decoder layer. Falls back to the name rules above for inferred architectures.
std::string assay_component(const ModelArchitecture& arch, const std::string& tensor_name, int* layer, int* expert);

// Methods whose recipe drops deltas (ties, breadcrumbs, breadcrumbs_ties, dare_ties, dare_linear,
// della, della_linear, and ties_family, the assay's name for a TIES-family merge whose member it
// could not tell): the plain fit blends whole tensors, so its weights and its residual are not
// the recipe's; the rebuild check measures the recipe.
bool is_sparse_method(const std::string& method);
// Sparse methods whose masks may be random (DARE, DELLA, ties_family): no rebuild reproduces them
// except by chance, so a rebuild's exact share says nothing and only its error is meaningful.
bool has_random_masks(const std::string& method);
// DARE's members (dare_ties, dare_linear): masks drawn independently of magnitude.
bool is_dare_method(const std::string& method);

// Runs the assay. Throws Error naming the model or tensor on unreadable input.
AssayResult run_assay(const AssayOptions& options);

// alloy-assay SUSPECT --verify-claim RECIPE.yml: does a published recipe (a repository's
// mergekit_config.yml, say) make these weights? The recipe is planned exactly as alloy-merge plans
// it (model paths relative to the current directory); its tensor names and shapes must be the
// suspect's; sampled tensors are merged again through the merge methods and compared with the
// suspect's. The claim holds when they rebuild bit for bit, or, for the methods whose arithmetic
// order alloy matches only to one unit in the last place (slerp, nuslerp, model_stock), when every
// element is within one ulp and at most 1% differ; else it is refuted. A method that draws random
// masks (dare_*, della*) cannot be rebuilt without the original seed: "unverifiable" unless exact.
struct ClaimOptions {
  std::filesystem::path suspect;
  std::filesystem::path recipe;
  // Tensors rebuilt, evenly spaced over the recipe's tensors of at most 2^24 elements (0: all).
  int tensors = 16;
  ModelOpenOptions open;
  std::vector<std::string> command_line;  // for the audit
  bool hash_files = true;
  std::filesystem::path hash_cache;  // as AssayOptions::hash_cache
};
struct ClaimResult {
  std::string verdict;            // "holds", "refuted", "unverifiable"
  std::string statement;          // one sentence saying why, with the figures
  std::string tolerance;          // "bit for bit" or "one ulp on at most 1% of the elements"
  std::string recipe_path, recipe_sha256, merge_method;
  std::vector<std::string> tensors;  // rebuilt
  nlohmann::json rebuild;         // {"tensors", "elements", "exact_fraction", "max_ulp", "relative_error"}
  AssayAudit audit;               // the suspect and every model the recipe names
};
ClaimResult verify_claim(const ClaimOptions& options);
nlohmann::json claim_to_json(const ClaimResult& claim);
std::string claim_summary(const ClaimResult& claim);

// Output forms (docs/assay.md): the JSON document, the recipe as YAML that alloy-merge runs, a
// readable text summary, and a self-contained HTML report.
nlohmann::json assay_to_json(const AssayResult& result);
nlohmann::json audit_to_json(const AssayAudit& audit);

// alloy-assay --fail-on: whether the verdict matches `condition`, one of
//   "merge":   the verdict is merge;
//   "related": the suspect derives from a candidate (merge, fine-tune or copy);
//   "any":     anything but a fully checked "independent" (related, or independent with the
//              confidence lowered: part of the suspect could not be compared).
// Throws Error(kInvalidArgument) on another condition.
bool verdict_matches(const AssayResult& result, const std::string& condition);
std::string recipe_to_yaml(const nlohmann::json& recipe);
std::string assay_summary(const AssayResult& result);
std::string assay_report_html(const nlohmann::json& assay_json);

}  // namespace alloy
