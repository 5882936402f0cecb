// Internals shared by the assay stages (lib/assay_*.cpp). Not part of the public API.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/architecture.h"
#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/page_buffer.h"
#include "alloy/core/units.h"

namespace alloy {
class FileHasher;
struct MergePlan;
}

namespace alloy::detail {

// The audit (lib/assay/audit.cpp): start_audit_hashes starts hashing every file of `models` (the
// suspect first) unless options.hash_files is off; collect_audit waits for the hashes and returns
// the record, with `started` as its time.
void start_audit_hashes(const AssayOptions& options, const std::vector<const Model*>& models, FileHasher* hasher);
AssayAudit collect_audit(const AssayOptions& options, const std::string& started,
                         const std::vector<const Model*>& models, FileHasher* hasher);

// The statistics are fixed-size per chunk: at most kMaxFitted candidates are fitted. alloy-assay
// takes up to kMaxCandidates; with more than kMaxFitted, screen_candidates (screen.cpp) keeps at
// most kMaxFitted of them first.
inline constexpr int kMaxFitted = 8;
inline constexpr int kMaxCandidates = 64;
inline constexpr int kMaxVectors = kMaxFitted + 1;  // suspect + fitted candidates
// |mixing weight| of a candidate that takes part in a merge (the verdict's involved set; a tensor's
// sparse statistics leave out the candidates below it).
inline constexpr double kInvolvedWeight = 0.01;

// The candidate screen (screen.cpp). On at most kScreenElements elements of the tensors every
// candidate holds with the suspect's shape (a run from the middle of each, in proportion to its
// size; a run where the suspect correlates with no candidate above kScreenTensorCorrelation is
// left out), the reference R is the candidate most correlated with the suspect S; then, with
// y = S - R and x_c = C_c - R, greedy forward selection (orthogonal matching pursuit) adds the
// candidate whose x_c correlates best with the part of y the kept ones leave unexplained, while
// that correlation is at least kScreenCorrelation, the unexplained part is more than
// kScreenResidual of |y|^2, and fewer than `keep` are kept. Each step is one pass over the sample
// computing one dot product per candidate: the work is linear in the number of candidates.
inline constexpr uint64_t kScreenElements = 1 << 18;
inline constexpr double kScreenTensorCorrelation = 0.5;
inline constexpr double kScreenCorrelation = 0.05;
inline constexpr double kScreenResidual = 1e-6;
struct CandidateScreen {
  std::vector<size_t> kept;         // candidate indices, ascending (the reference among them)
  int reference = -1;               // candidate index of R (-1: nothing could be compared)
  std::vector<double> correlation;  // per candidate: Pearson correlation with S on the sample
  std::vector<double> score;        // per candidate: |correlation| of x_c with the unexplained part
                                    // of y, at its selection (kept) or at the last step (set aside)
  double residual = 1;              // unexplained share of |y|^2 after the selected ones
  int ancestor = -1;                // candidate index kept as the likely common base (see screen.cpp)
  uint64_t elements = 0;            // sample elements per model
};
CandidateScreen screen_candidates(const Model& suspect, const std::vector<const Model*>& candidates, int keep);

// The prefix pass's statistics of one tensor's first elements: index 0 is the suspect S, 1..k the
// candidates. Enough for the correlations and the reference; the resolved-element statistics and
// the equality counts come from the full pass alone (ResolvedMoments).
struct PrefixMoments {
  int vectors = 0;                                                 // k + 1
  uint64_t n = 0;                                                  // elements read
  std::array<std::array<double, kMaxVectors>, kMaxVectors> gram{};  // raw Gram
  std::array<double, kMaxVectors> sum{};                           // element sums (Pearson)
};

// The mapped views of one tensor: the suspect's and each candidate's (same numel).
struct TensorViews {
  std::vector<const ModelTensor*> inputs;  // [0] suspect, [1..k] candidates
  uint64_t numel = 0;
  const float* suspect_values = nullptr;   // when set: the aligned suspect, used instead of inputs[0]
  // When set (one per input): every input's sampled rows in memory (alloy-assay --sample), used
  // instead of `inputs` and `suspect_values`; numel is then the sampled element count.
  std::vector<const float*> values;
};

// Elements [begin, begin + count) of input v of the views (sampled rows, the aligned suspect or the
// mapped tensor, in that order of precedence) into `out`.
void load_view(const TensorViews& views, size_t v, size_t begin, size_t count, float* out);

// alloy-assay --sample (sample.cpp): the rows of a tensor of `shape` (rows: every axis but the
// last) that a sampled assay reads, a seeded random subset of ceil(fraction x rows) rows (at least
// kMinSampledRows, sorted), drawn from (seed, tensor name) so that every run and thread count
// reads the same rows. Empty when the tensor is read whole: fraction >= 1, a 1-D tensor, or too
// few rows to sample.
inline constexpr uint64_t kMinSampledRows = 8;
std::vector<uint64_t> sampled_rows(const std::vector<uint64_t>& shape, double fraction, uint64_t seed,
                                   const std::string& tensor_name);
// The given rows of every input of the views from `first_input` on, gathered into `buffer` (grown
// if needed, never shrunk): input v's rows x row length floats start at the v-th pointer returned
// (the inputs before first_input get their place, for the caller to fill).
std::vector<float*> gather_rows(const TensorViews& views, uint64_t row_length,
                                const std::vector<uint64_t>& rows, PageBuffer* buffer,
                                size_t first_input = 0);

// The full pass: statistics over the resolved elements in coordinates relative to a pivot candidate
// P (the prefix pass's reference): Y_0 = S - P, Y_c = C_c - P (Y_pivot = 0), Y_{k+1} = P. In
// these coordinates the deviations are small and nothing cancels, so each 256-element block is
// summed in float lanes and blocks are added in double; the Gram of raw vectors is recovered
// exactly by expanding (Y_a + P) . (Y_b + P).
struct ResolvedMoments {
  int vectors = 0;  // k + 1
  int pivot = 1;    // vector index of P
  uint64_t n = 0, n_resolved = 0, n_spread = 0;
  std::array<std::array<double, kMaxVectors + 1>, kMaxVectors + 1> gram{};  // Y space, resolved only
  std::array<uint64_t, kMaxVectors> equal{};           // [c]: S == C_c where the candidates spread
  std::array<uint64_t, kMaxVectors> equal_resolved{};  // [c]: S == C_c on resolved elements
  std::array<uint64_t, kMaxVectors> equal_all{};       // [c]: S == C_c anywhere
};
// One streaming pass over the whole tensor, chunk by chunk. Elements are "resolved" when the spread
// of the candidates in `spread_members` (all when empty or none) reaches `resolve_fraction` of
// their largest magnitude: there rounding the output cannot snap a blend onto one parent.
ResolvedMoments accumulate_resolved(const TensorViews& views, double resolve_fraction, int pivot,
                                    const std::vector<bool>& spread_members);
// acc += part (same vectors and pivot): moments of disjoint element sets add.
void add_into(ResolvedMoments& acc, const ResolvedMoments& part);
// For tests: whether accumulate_resolved may use its fused sub-block steps (default true). The
// fused and the separate steps give the same bits; tests compare them.
void set_fused_statistics(bool enabled);

// The prefix pass: raw Gram and sums of the first `count_limit` elements (all when larger than
// the tensor), streamed chunk by chunk (no full-tensor float buffers). It tells related candidates
// from unrelated ones and picks the pivot of the full pass.
PrefixMoments accumulate_prefix(const TensorViews& views, uint64_t count_limit);

// Sparse-merge statistics relative to a base candidate b (1-based vector index), for the other
// candidates `others` (vector indices): the TIES threshold and density per candidate from
// log-magnitude histograms of delta_i = C_i - C_b split by whether S == C_b (nothing kept) or
// S == C_i (i kept alone); and the DARE scale (S - C_b) / delta_i. The pass over the elements
// that these decide (the kept sets and the weight ratios) is subset_statistics.
struct SparseStats {
  std::vector<double> density;         // TIES: fraction with |delta_i| >= threshold
  std::vector<double> threshold;       // |delta_i| threshold
  std::vector<double> magnitude_step;  // 1 - P(S == C_b | top 10% of |delta_i|) / P(.. | the rest)
  std::vector<double> solo_density;    // solo_i / (solo_i + none): kept fraction, any method
  std::vector<double> kept_scale;      // mode of (S - C_b) / delta_i
  // The drop profile (TensorAssay::top_drop and the rest; NaN where the bottom 10% never shows
  // "nothing kept").
  std::vector<double> top_drop, upper_drop, outlier_share, profile_density;
};
SparseStats sparse_statistics(const TensorViews& views, int base, const std::vector<int>& others);

// DARE's kept sets element by element (sparse_subsets.cpp), given each other candidate's
// approximate rescaled weight a_i (kept_scale): on well-resolved elements whose deltas share one
// sign and whose subset sums are apart, the kept set that makes S; on opposite-sign elements,
// whether only the plain sum (not sign consensus) can make S. At most kMaxSubsetCandidates
// others (2^k kept sets per element); NaN densities when not measured.
inline constexpr size_t kMaxSubsetCandidates = 4;
struct SubsetStats {
  std::vector<double> density;     // per other: share of matched elements whose kept set holds it
  std::vector<double> scale;       // per other: a_i by least squares over the matched elements
  uint64_t classifiable = 0;       // same-sign elements with separated subset sums
  double matched_share = 0;        // of those, the share some kept set explains (NaN: none)
  uint64_t opposite = 0;           // well-resolved elements with deltas of both signs
  uint64_t sum_votes = 0;          // of those, made only by the plain sum of kept deltas
  // The same elements read under a normalised combination (della, ties: S - C_b is the
  // weight-averaged mean of the kept u_i, so every kept set of one member reads as under the plain
  // sum, and a larger set lies between its members' values). Per other: its keep rate, from
  // "nothing kept", "kept alone" and, with two others, "between the two" (both kept); with two
  // others also the relative weights w_i / (w_1 + w_2) by least squares over "between" elements;
  // with three or four, the weights (summing to 1) from each pair's l = w_i / (w_i + w_j), the mode
  // of l over the elements between u_i and u_j (NaN where not measured). With three or more, an
  // opposite-sign element inside the range of one sign's deltas counts as made by consensus (a
  // weighted mean of that sign's kept deltas), not as a plain-sum vote.
  std::vector<double> normalized_density;
  std::vector<double> normalized_weight;
  // Two or more others: the weights (sum 1) from the elements where every other is kept (above
  // its threshold) and all agree in sign (sparse_subsets.cpp); NaN where no element is.
  std::vector<double> ratio_weights;
};
// The kept sets from sparse's kept_scale (not read where a scale is not finite and nonzero) and
// the weight ratios from its thresholds, in one pass over the elements.
SubsetStats subset_statistics(const TensorViews& views, int base, const std::vector<int>& others,
                              const SparseStats& sparse);

// A fitted tensor's sparse statistics (sparse_statistics, then subset_statistics) against its
// reference, over the related candidates that carry a weight in its fit, into `ta`'s sparse fields
// (tensor_pass.cpp runs it where exact equalities betray a sparsifying merge; the verdict, on a few
// tensors, where the dense reading's residual depends on the deltas' magnitudes).
void fill_sparse(const TensorViews& views, TensorAssay* ta);

// What the prefix alone decides: each candidate's Pearson correlation with S and the reference
// (candidate index: the medoid of the related candidates).
struct PrefixFit {
  std::vector<double> correlation;
  int reference = 0;
};
PrefixFit fit_prefix(const PrefixMoments& prefix, int candidates);

// The per-tensor fit (affine, slerp, equality fractions); fills `out` except the sparse fields.
// `prefix` gives the correlations, the reference and the angles; `full` the resolved-element fit
// and the equality counts. k candidates.
void fit_tensor(const PrefixMoments& prefix, const ResolvedMoments& full, int candidates, TensorAssay* out);

// The full pass and the fit of a sampled tensor (views over `rows` gathered rows of `row_length`),
// with standard errors that account for the sampling: the rows are split into kSampleGroups
// groups, the fit is repeated leaving each group out (delete-a-group jackknife), and each weight's
// standard error is the larger of the fit's own and the jackknife's, which also captures errors
// that are correlated within a row. Returns the pooled moments, as accumulate_resolved would.
inline constexpr int kSampleGroups = 16;
ResolvedMoments fit_sampled(const TensorViews& views, uint64_t rows, uint64_t row_length, double resolve_fraction,
                            int pivot, const std::vector<bool>& spread_members, const PrefixMoments& prefix,
                            int candidates, TensorAssay* out);

// Converts `count` elements of a tensor starting at element `begin` into `out`, on this thread.
// The bytes are read with pread through a per-thread buffer of 128 KiB (never by touching the
// mapping), so the assay's resident set does not grow with the model or the number of candidates.
// A read error (a file that shrank) cannot leave a parallel region: the elements are then zeros
// and rethrow_read_error() throws the first such error; every stage calls it after its reads.
void load_range(const ModelTensor& tensor, size_t begin, size_t count, float* out);
void rethrow_read_error();
void discard_read_error();  // a left-over error of an assay that failed otherwise

// The cost matrix of an alignment's assignment: cost[i * n + j] = 1 - <a_i, b_j> / parts for i, j <
// n, over descriptors of `dim` doubles (a and b row-major [n, dim]; `parts` unit vectors each, so
// that the cost is 1 - their mean cosine). Each dot product is one fixed sum whatever the thread
// count: per tile of 512 terms, term t in lane t mod 8 from +0, the lanes added pairwise; the tiles
// added in order (cosine_cost.cpp).
void cosine_cost(const double* a, const double* b, size_t n, size_t dim, double parts,
                 double* cost);
std::vector<double> cosine_cost(const std::vector<double>& a, const std::vector<double>& b,
                                size_t n, size_t dim, double parts);
// out[i * n + j] = <a_i, b_j> for the m rows of a and the n rows of b (row-major, `dim` doubles
// each), in parallel over blocks of a's rows; each sum in cosine_cost's fixed order.
void row_dots(const double* a, size_t m, const double* b, size_t n, size_t dim, double* out);

// Pearson correlation of x[0, n) and y[0, n) (sums in double, in element order); 0 where either is
// constant. Near 1 for a tensor and a blend of its namesakes, near 0 once rows are shuffled.
double pearson(const float* x, const float* y, uint64_t n);

// Grows `v` to at least n elements (never shrinks it) and returns its data: the per-thread scratch
// of the assay's stages. resize() to each tensor's size instead zero-fills the grown part again
// whenever a larger tensor follows a smaller one (78 such memsets, 19 MB, in a 1 GB assay), and
// vectors made afresh paid a page fault per 4 KiB of them as well.
template <class T>
T* at_least(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// While it lives, this thread's read errors (load_range, rethrow_read_error, discard_read_error)
// go to a slot of its own instead of the assay's shared one: for whole stages run concurrently,
// one per thread (the rebuild checks of confirm_by_rebuild), whose parallel regions are then nested
// and run on that one thread. A check must neither throw another check's error nor lose its own.
// Open it only where every read of the stage stays on this thread (in_parallel_region()): the
// reads of other threads still report to the shared slot.
class ReadErrorScope {
 public:
  ReadErrorScope();
  ~ReadErrorScope();
  ReadErrorScope(const ReadErrorScope&) = delete;
  ReadErrorScope& operator=(const ReadErrorScope&) = delete;

 private:
  std::optional<Error> slot_;
  std::optional<Error>* previous_;
};

// slerp coefficients of mergekit: (sin((1-t) theta) / sin theta, sin(t theta) / sin theta), or
// (1 - t, t) when |cos theta| > 0.9995 (mergekit's DOT_THRESHOLD, where it falls back to lerp).
std::array<double, 2> slerp_coefficients(double t, double cos_theta);

// A 64-bit fingerprint of a tensor's bytes (layer-copy detection): each 1 MiB chunk read with
// pread and mixed in four 64-bit lanes, the chunks' hashes combined in order by FNV-1a; the same
// for any thread count. With `rows` (indices over every axis but the last: a sampled assay's),
// only those rows are read and hashed. A read error leaves zeros and is reported by
// rethrow_read_error().
uint64_t tensor_fingerprint(const ModelTensor& tensor, const std::vector<uint64_t>& rows = {});

// The rebuild check: plans `recipe` (JSON form) exactly as alloy-merge would (model paths relative
// to the current directory), merges the named tensors through the merge methods and compares them
// with the suspect: {"tensors", "elements", "exact_fraction", "max_ulp", "relative_error"}.
nlohmann::json rebuild_check(const nlohmann::json& recipe, const Model& suspect,
                             const std::vector<std::string>& tensor_names);
// The same with a plan already made (alloy-assay --verify-claim plans the claimed recipe itself).
nlohmann::json rebuild_check_plan(const MergePlan& plan, const Model& suspect, const std::vector<std::string>& tensor_names);

// Layer stacking: when every decoder layer of the suspect is a bit-exact copy of some candidate's
// layer (all its tensors), returns the passthrough recipe's slices (runs of consecutive layers of
// one candidate) and the layer map; else null. With 0 < sample_fraction < 1 (a sampled assay) each
// tensor is compared on the rows sampled_rows draws for its name within the layer (the same rows
// in every layer and model), so a copy holds on the rows read.
nlohmann::json detect_layer_stacking(const Model& suspect,
                                     const std::vector<const Model*>& candidates,
                                     const std::vector<std::string>& paths,
                                     nlohmann::json* layer_map, double sample_fraction = 0,
                                     uint64_t sample_seed = 0);

// Decoder layer count from tensor names (<layer prefix>N.*, alloy/core/architecture.h).
int count_layers(const Model& model);

}  // namespace alloy::detail

namespace alloy::detail {

// One per-tensor value of a recovered parameter (a weight, t, a density), for profile encoding.
struct ParameterSample {
  std::string tensor;
  int layer = -1;
  uint64_t numel = 0;
  double value = 0;
};

// Encodes per-tensor values as the simplest mergekit setting that reproduces them within
// `tolerance`: a scalar; else a list of {filter, value} entries by tensor group (embed_tokens,
// lm_head, model.norm., self_attn, mlp, input_layernorm, post_attention_layernorm) whose values are
// scalars or per-layer gradients (one point per layer, so layer l gets exactly its value), with a
// final default. `layers` is the model's decoder layer count. Values are rounded to `digits`
// decimals.
nlohmann::json encode_profile(const std::vector<ParameterSample>& samples, int layers, double tolerance, int digits);

// The numel-weighted median of values.
double weighted_median(std::vector<std::pair<double, double>> value_weight);

}  // namespace alloy::detail

namespace alloy::detail {

// Aggregates the per-tensor fits into candidates and components, decides the verdict and the
// method, and writes the recipe and the evidence (lib/assay/verdict.cpp; its units: verdict.h).
void decide_verdict(AssayResult* result, const Model& suspect, const std::vector<const Model*>& candidates,
                    const AssayOptions& options);

}  // namespace alloy::detail

namespace alloy::detail {

// The alignment stage (lib/assay/align.cpp): undoes function-preserving permutations of the
// suspect (routed experts with their router rows, MLP neurons, attention heads within and across
// key-value groups) by linear assignment against a reference candidate, before any fitting.
struct AlignedTensor {
  std::string source;                  // suspect tensor holding this slot's data
  TensorGather gather;                 // aligned element <- source element (alloy/core/units.h)
  std::string candidate;               // the candidates' tensor it is compared with ("" = the slot's name)
  // After the gather: aligned row i (of matrix m: index m * rows + i) divided by row_scale[i] (or
  // multiplied, when !row_divides), aligned column j multiplied by col_scale[j] (or divided).
  std::vector<float> row_scale, col_scale;
  bool row_divides = true, col_divides = false;
  // A norm applied as (1 + w): col_scale scales its gain col_offset + w, so the column becomes
  // (col_offset + w) * col_scale - col_offset (the gain times the scale, stored as the norm stores it).
  float col_offset = 0;
  // Before everything else: an undone residual-stream rotation (rotation_stage below). kRight: the
  // stored [rows, hidden] matrix times Q^T (embeddings and readers), kLeft: Q times the stored
  // [hidden, cols] matrix (writers). `rotation` is Q, hidden x hidden, row-major.
  enum class RotationSide { kNone, kRight, kLeft } rotation_side = RotationSide::kNone;
  std::shared_ptr<const std::vector<double>> rotation;
};
struct Alignment {
  // By slot: each suspect tensor name once, holding (after alignment) the data that corresponds
  // to the candidates' tensor `candidate`. Absent: the suspect tensor as stored, same name.
  std::map<std::string, AlignedTensor> tensors;
  nlohmann::json permutations = nlohmann::json::array();  // what was found (suspect j holds candidate p[j])
  int reference = -1;                             // candidate aligned to
  nlohmann::json folded_norms = nlohmann::json::array();  // gain_stage's findings, one per norm
};
// How align_suspect compares neurons. With sketch_coordinates > 0 (a sampled assay), each
// neuron's descriptor (its gate and up rows and down column, each a unit vector) is taken on a
// seeded subset of that many coordinates of the hidden width, the same for both models, instead
// of all of them: the cost matrices, n^2 x 3 x hidden products per layer, were nearly all of a
// permuted model's assay, and the subset cuts them by hidden / sketch_coordinates. The assignment
// is then optimal for the sketch, not proven so for the full descriptors; the block test still
// drops any tensor whose blocks the result leaves unmatched, and the permutation record says how
// many coordinates were compared ("compared_coordinates").
struct AlignOptions {
  uint64_t sketch_coordinates = 0;  // 0: every coordinate
  uint64_t seed = 0;
};
// A sampled assay's sketch: 128 coordinates, where cosines of unrelated neurons scatter by about
// 1/sqrt(128) = 0.09 around 0 and a matched pair's stay near those of the full descriptors.
inline constexpr uint64_t kSketchCoordinates = 128;
Alignment align_suspect(const Model& suspect, const std::vector<const Model*>& candidates,
                        const AlignOptions& options = {});

// The rotation stage (lib/assay/rotation.cpp), run by align_suspect when the suspect's embeddings
// correlate with no candidate's: estimates an orthogonal Q with S = C Q on the residual stream
// (alloy-synth perturb rotate-residual, QuaRot, SpinQuant) by orthogonal Procrustes, alternated
// with a least-squares blend of the candidates, on the embeddings and, when they have fewer than
// kRotationRowsPerHidden rows per hidden unit, also on the writers (o_proj, down_proj); accepts it
// when the relative residual ||T Q - S|| / ||S|| is below kRotationResidual; then fills `out` with
// the undo of every 2-D reader and writer and a {"kind": "rotation"} entry in its permutations.
// Returns whether a rotation was accepted.
inline constexpr double kRotationResidual = 0.5;
inline constexpr uint64_t kRotationRowsPerHidden = 8;
bool rotation_stage(const Model& suspect, const std::vector<const Model*>& candidates, Alignment* out);
// The folded-gain stage (lib/assay/gains.cpp), run by align_suspect last (after any rotation is
// undone): for each RMSNorm of the language model stored as all ones while some candidate's is
// not, fits per column the gain g and a candidates' blend w with S_j = g_j sum_c w_c C_c,j over the
// norm's readers (at most kGainRows evenly spaced rows of each), the scale fixed by matching g to
// the candidates' gains blended by w; accepted when the relative residual is below kGainResidual
// and below kGainImprovement times the unscaled fit's. Then the readers are compared as S diag(1/g), the norm as g,
// and `out->folded_norms` gets {"norm", "readers", "relative_error" (|g - h| / |h|, h the blended
// candidates' gains), "residual_before", "residual_after", "gain_min", "gain_max",
// "blend_weights", "gains" (when hidden <= kGainsReported)}.
inline constexpr double kGainResidual = 0.5;
inline constexpr double kGainImprovement = 0.9;
inline constexpr uint64_t kGainRows = 1024;
inline constexpr uint64_t kGainsReported = 1024;
void gain_stage(const Model& suspect, const std::vector<const Model*>& candidates, Alignment* out);
// Applies a slot's rotation undo to the stored values (a 2-D tensor of `shape`) in place
// (aligned_read.cpp).
void undo_rotation(const AlignedTensor& a, const std::vector<uint64_t>& shape, float* values);

// Rows (or columns) of a tensor whose rotation is undone at a time, through doubles.
inline constexpr size_t kRotationSlab = 1024;

// Stored rows `rows` (indices over every axis but the last) of `t`, the slot `a` reads, with a's
// rotation undone: rows.size() x shape.back() floats into `out`. Bit for bit the rows undo_rotation
// gives for the whole tensor. A reader's rows are read alone; a writer's row mixes its whole
// [hidden, cols] block, so each block holding a requested row is read, slab_columns columns at a
// time (aligned_read.cpp; smaller in tests, to cross slabs on small models).
void load_rows_unrotated(const AlignedTensor& a, const ModelTensor& t,
                         const std::vector<uint64_t>& rows, float* out,
                         size_t slab_columns = kRotationSlab);

// The suspect's slot `name` in candidate order, as float32 (into `out`, resized)
// (aligned_read.cpp).
void load_aligned(const Model& suspect, const Alignment& alignment, const std::string& name,
                  std::vector<float>* out);
// Rows `rows` of that slot (indices over every axis but the last, row_length = the last axis)
// into `out` (rows.size() x row_length floats), the same bits as load_aligned's: a sampled assay
// reads the stored rows they come from (and, for a rotated writer, the blocks holding them), not
// the whole tensor.
void load_aligned_rows(const Model& suspect, const Alignment& alignment, const std::string& name,
                       const std::vector<uint64_t>& rows, uint64_t row_length, float* out);

// The per-tensor assay (tensor_pass.cpp). What every tensor of one assay shares:
struct TensorPass {
  const Model& suspect;
  ModelArchitecture arch;  // the suspect's
  const Alignment& alignment;
  const std::vector<const Model*>& models;  // the compared candidates
  const std::vector<std::string>& paths;    // their paths, for the reasons a tensor is not fitted
  double sample_fraction = 0;               // AssayOptions::sample_fraction and sample_seed
  uint64_t sample_seed = 0;
  double resolve = 0;  // accumulate_resolved's resolve fraction
};
// The buffers one tensor's assay fills: the aligned suspect's floats and the sampled rows.
struct TensorScratch {
  std::vector<float> aligned;
  PageBuffer sampled;
};
// Scratch for tensors assayed concurrently: a task takes one and gives it back, so at most one per
// thread is ever made, and each is reused by the tensors that follow.
class TensorScratchPool {
 public:
  std::unique_ptr<TensorScratch> take();
  void give(std::unique_ptr<TensorScratch> scratch);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<TensorScratch>> free_;
};
// The block test's outcome (tensor_pass.cpp, test_blocks_of): whether some block of the suspect's
// tensor correlates with the same block of no candidate, a permutation the alignment did not undo.
enum class BlockTest { kUntested, kMatched, kUnaligned };
struct TensorOutcome {
  TensorAssay assay;
  BlockTest blocks = BlockTest::kUntested;
  uint64_t elements_total = 0;  // the tensor's elements, when it was fitted
  uint64_t elements_read = 0;   // those the fit saw (the sampled rows' under --sample)
  bool sampled = false;         // whether a subset of its rows was read
};
// One suspect tensor's fit against the candidates' (the prefix pass, the full or sampled fit, the
// block test and, where exact equalities betray a sparsifying merge, the sparse statistics); its
// pages are released after. Safe to call for several tensors at once, each with its own scratch;
// read errors go to the read-error slot (rethrow_read_error).
TensorOutcome assay_tensor(const TensorPass& pass, const ModelTensor& tensor,
                           TensorScratch* scratch);

}  // namespace alloy::detail
