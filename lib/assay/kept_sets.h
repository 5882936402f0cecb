// DARE's kept sets, element by element: the classification that subset_statistics
// (sparse_subsets.cpp) runs on the well-resolved elements of each sub-chunk, and the counts it
// keeps. Two forms that give the same counts and the same sums, bit for bit: one element at a time
// for any number of others (kept_set_classify.cpp), and eight elements at a time in AVX-512 lanes
// for one to four others (kept_set_lanes.cpp): a quarter of a sparse merge's assay time had gone
// to the per-element form's unpredictable branches.
#pragma once

#include <Eigen/Dense>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace alloy::detail {

// How far S - C_b may lie from a kept set's value v at an element (base C_b = b, deltas d_j, scaled
// deltas u_j = a_j d_j) and still be made by that set: eps (base |b| + sum |b + v| + kept * the
// sum of the set's |u_j|) for the roundings (eps the unit roundoff of the suspect's dtype), plus
// slack * sum_j |d_j| for what the approximate scales may miss.
struct KeptSetTolerance {
  double base, sum, kept, slack;
};
// With the scales read as the binned mode (0.02 wide bins) of the rescaled weights: the roundings
// of S and of the stored deltas taken generously, and the mode up to 0.015 |d_j| off.
inline constexpr KeptSetTolerance kModeScaleTolerance{4, 4, 0, 0.015};
inline constexpr double kScaleSlack = kModeScaleTolerance.slack;
// With the scales fitted by least squares (fit_kept_scales), for four others: the merge's chain
// rounds S once and each kept term up to three times (its delta, the rescale, the weight), each
// time by at most eps of the value; the fit's error is a small fraction of the mode's. Measured on
// a 0.25 GB dare_ties merge of four (weights 0.4 / 0.3 / 0.2 / 0.1, densities 0.5 to 0.8): no
// separated element of its mlp matrices fell outside every band, and ~1000 of each matrix's
// 786k were separated (none under kModeScaleTolerance, 48 with its rounding terms and this slack).
inline constexpr KeptSetTolerance kFittedScaleTolerance{0, 1, 2, 0.002};
// A kept set's tolerance at an element (KeptSetTolerance; `kept_abs` the sum of the set's |u_j|,
// `slack` the scales' share, already multiplied out). The kept term is left out where its share
// is 0 (an infinite delta would make it NaN). The lanes form (kept_set_lanes.cpp) mirrors it. It
// depends on the hypothesis, never on S itself: read from |S|, the tolerance widened with the kept
// set, so an element whose largest-scale parent was kept failed the separation test more often,
// and that parent's density read 0.44 for 0.5 in a dare_ties merge of three.
[[gnu::always_inline]] inline double kept_set_tolerance(double b, double v, double kept_abs,
                                                        double eps, const KeptSetTolerance& t,
                                                        double slack) {
  const double rounding = t.base * std::fabs(b) + t.sum * std::fabs(b + v);
  return eps * (t.kept != 0 ? rounding + t.kept * kept_abs : rounding) + slack;
}
// The others from which on the scales are fitted before the classification: with fewer, enough
// elements are separated under kModeScaleTolerance.
inline constexpr size_t kFittedScaleCandidates = 4;
// Fewer fitted rows than this leave the mode's scales (and kModeScaleTolerance) in place. Four
// unknowns; 256 left every matrix of a `--sample 0.05` assay (and a Mixtral layout's at hidden 256)
// unclassified. A tensor's kept sets count only with enough classified elements, in one tensor and
// over all (verdict_sparse.cpp), so a small tensor's fit cannot name the merge alone.
inline constexpr uint64_t kFittedScaleMinRows = 32;
// With three or more others, the relative weight l = w_i / (w_i + w_j) of each pair is read as the
// mode of a histogram over (0, 1) in bins this many.
inline constexpr size_t kLambdaBins = 100;

struct KeptSetCounts {
  std::vector<uint64_t> kept;  // [other]
  std::vector<uint64_t> solo;  // [other]: matched by that other alone
  uint64_t classifiable = 0, matched = 0, opposite = 0, sum = 0;
  uint64_t none = 0,
           between = 0;  // matched by no kept delta; (two others) strictly between u_1, u_2
  double lambda_num = 0,
         lambda_den = 0;  // sum (r - u_2)(u_1 - u_2), sum (u_1 - u_2)^2 over "between"
  // Three or more others: per pair (i < j, in pair_index order), the elements strictly between u_i
  // and u_j by bin of l = (r - u_j) / (u_i - u_j), and the sum of l per bin.
  std::vector<uint64_t> pair_bins;
  std::vector<double> pair_sums;
  Eigen::MatrixXd normal;  // [k x (k + 1)]: the normal equations for a, then the right-hand side
  void resize(size_t k);
  void add(const KeptSetCounts& o);
};

// The well-resolved elements of one stretch of a sub-chunk, compacted (compact_resolved), in their
// order: base, suspect and each other's values side by side.
struct ResolvedValues {
  const float* base;
  const float* suspect;
  const float* const* others;  // [other]
  size_t count;
};

// The values at the positions i < count with keep[i] != 0 of each of `vectors` rows, in order,
// into out[v] (room for count + 16 floats: the AVX-512 form stores 16 at a time); returns how many.
size_t compact_resolved(const uint8_t* keep, size_t count, const float* const* in, size_t vectors,
                        float* const* out);

// Adds the classification of every element of `at` (k others, rescaled weights `scale`, unit
// roundoff `eps` of the suspect's dtype, `tolerance` for the scales' kind: kModeScaleTolerance or
// kFittedScaleTolerance) to `part`, in order: the lanes where the CPU has AVX-512 and k <= 4, else
// one element at a time.
void classify_kept_sets(size_t k, const ResolvedValues& at, const double* scale, double eps,
                        const KeptSetTolerance& tolerance, KeptSetCounts& part);

// The two forms on their own, for the tests that compare them. The lanes form returns false, and
// adds nothing, where it does not run (no AVX-512, or k > 4).
void classify_kept_sets_one_by_one(size_t k, const ResolvedValues& at, const double* scale,
                                   double eps, const KeptSetTolerance& tolerance,
                                   KeptSetCounts& part);
bool classify_kept_sets_in_lanes(size_t k, const ResolvedValues& at, const double* scale,
                                 double eps, const KeptSetTolerance& tolerance,
                                 KeptSetCounts& part);

// The normal equations of the scales a (k x (k + 1): the matrix, then the right-hand side) over
// the elements that name their kept set without the separation the classification needs
// (kept_set_scales.cpp), and how many elements entered them.
struct KeptScaleFit {
  Eigen::MatrixXd normal;
  uint64_t rows = 0;
  void resize(size_t k);
  void add(const KeptScaleFit& o);
};

// Adds the elements of `at` (k others, the mode's scales `scale`) that name their kept set to
// `part`, in order, one element at a time.
void fit_kept_scales(size_t k, const ResolvedValues& at, const double* scale, double eps,
                     KeptScaleFit& part);

// The scales that solve `normal` (a KeptScaleFit's or KeptSetCounts' k x (k + 1) sums); where an
// other entered no row, or nothing did, its entry of `fallback`.
std::vector<double> solve_kept_scales(const Eigen::MatrixXd& normal,
                                      const std::vector<double>& fallback);

}  // namespace alloy::detail
