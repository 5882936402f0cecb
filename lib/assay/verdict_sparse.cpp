// The sparse merge methods: TIES (kept entries chosen by magnitude) and DARE (kept at random),
// told apart by how the chance of keeping an entry depends on its magnitude; DARE's densities,
// weights and combination rule (dare_ties: sign consensus; dare_linear: plain sum) from its kept
// sets read element by element (sparse_subsets.cpp). Within the TIES family, breadcrumbs (the
// largest deltas dropped too) and DELLA (keep chance rising with magnitude rank) by the drop
// profile along each candidate's |delta| (sparse.cpp); "ties_family" where none of them fits.
#include <algorithm>
#include <cmath>
#include <limits>

#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kTiesMagnitudeStep = 0.5;
constexpr double kContributingSoloDensity = 0.02;  // kept alone this often: the candidate contributes
// DARE's signature where few elements equal the base (high densities): nearly every classifiable
// element is made by some kept set, and some candidate is clearly not always kept. A linear merge
// is explained by the full set alone (every density 1); a fine-tune or noise by no set.
constexpr double kSubsetMatched = 0.9;
constexpr double kSubsetSparseDensity = 0.9;
// A tensor's kept sets count from this many classifiable elements (a density's standard error
// ~0.06 per tensor; the verdict takes medians over tensors). With each kept set's own tolerance
// (kept_set_classify.cpp) the tensors of a three-parent merge at hidden 256 have 45-220.
constexpr uint64_t kSubsetMinElements = 64;
// ... and the kept sets count at all from this many over those tensors (a density's standard
// error ~0.03). A single tensor's 92 named a dare_ties merge of four (GPT-OSS layout, hidden 256,
// its other tensors below 64) with densities 0.52 / 0.54 / 0.76 / 0.79 for 0.5 / 0.6 / 0.7 / 0.8;
// the rebuild's tensors, read late, give 500-1800.
constexpr uint64_t kSubsetMinTotal = 256;
// dare_linear over dare_ties: the plain sum makes at least this many opposite-sign elements that
// sign consensus cannot, and at least this share of them (dare_linear: about the chance that
// deltas of both signs are kept, 0.1-0.5 at usual densities; dare_ties: only coincidences).
constexpr uint64_t kRuleMinVotes = 64;
constexpr double kRuleMinShare = 0.02;
// The drop profile (docs/assay.md "Breadcrumbs and DELLA"): the "nothing kept" rate in a
// candidate's largest 0.5% (top) and 10% (upper) of |delta| relative to its smallest 10%.
// TIES: top ~0; breadcrumbs: top ~1 (its largest gamma share is dropped). DARE: upper ~1 (flat);
// DELLA: keep chances from density - epsilon to density + epsilon over the rank, so
// upper = (1 - d - 0.9 e) / (1 - d + 0.9 e), 0.3-0.7 at the usual epsilon 0.1-0.2.
constexpr double kBreadcrumbsTopDrop = 0.5, kTiesTopDrop = 0.2;
constexpr double kDareUpperDrop = 0.85, kDellaUpperLow = 0.15, kDellaUpperHigh = 0.75;
// DELLA reaches the sparse path with fewer elements equal to the base than the other sparse
// methods (its rescaled kept entries rarely equal a parent): 0.5 / 0.6 leaves ~20%, three parents
// at 0.5 / 0.6 / 0.7 about 12% (6% keep nothing, the rest by chance).
constexpr double kDellaEquality = 0.08;
// ... and those equalities are with the base: DELLA rescales what it keeps, so its elements equal a
// parent only by chance (measured 0.24 equal to the base against 0.02 to each parent, hidden 128,
// density 0.5; 2.4 times as often as the densest of three parents at 0.5 / 0.6 / 0.7, whose
// entries rescaled by 1 / 0.7 round back to their own value on a few percent of its small deltas).
// A linear merge trained further by ~1% of the weights' norm in bf16 equals each of base and
// parents by chance about as often (0.03-0.05 each, 0.12 together: ratio 1.1-1.6), which once
// passed for DELLA's share and drop profile on gpt-oss and Gemma 2 layouts.
constexpr double kDellaConcentration = 2;
constexpr double kDellaTopDrop = 0.15;
// DELLA's magnitude step: the drop chance runs from 1 - d + eps (smallest) to 1 - d - eps
// (largest), so the step is about eps / (1 - d + 0.1 eps), up to ~0.9 as eps nears 1 - d (0.59
// measured at density 0.6, epsilon 0.25). Above TIES's 0.5 it is told from TIES by its top drop
// (TIES keeps its largest deltas: top ~0) and from breadcrumbs by top ~ upper (a random drop
// spares no band: within 0.1).
constexpr double kDellaMagnitudeStep = 0.8, kDellaTopUpperGap = 0.1;
// TIES at density d < 0.1: top ~0, upper ~(0.1 - d) / 0.1 (0.52 measured at d 0.05); DARE and
// DELLA: |top - upper| <= 0.06 measured over DARE densities 0.1-0.9 and della(_linear) (hidden 64).
constexpr double kLowDensityTiesGap = 0.25;

// kFamily: a magnitude-chosen profile between TIES's members; kRandomFamily: a random-drop profile
// that neither DARE's kept sets nor DELLA's slope explains.
enum class SparseKind { kTies, kBreadcrumbs, kDare, kDella, kFamily, kRandomFamily };

// The sparse statistics of each candidate over the tensors fitted against `base`.
struct SparseEvidence {
  std::vector<Weighted> density, solo, step, scale, ratio, subset_density, subset_scale;  // [candidate]
  std::vector<Weighted> normalized_density, normalized_weight;                            // [candidate]
  std::vector<Weighted> top_drop, upper_drop, outlier_share, profile_density;            // [candidate]
  uint64_t opposite = 0, sum_votes = 0;
};

// Whether tensor t's kept sets count (kSubsetMinElements classified, one per candidate).
bool kept_sets_read(const TensorAssay& t, size_t k) {
  return t.fitted && t.subset_classifiable >= kSubsetMinElements && t.subset_density.size() == k;
}

// Whether the tensors whose kept sets count (against `base`, or any reference where base < 0)
// classify kSubsetMinTotal elements together.
bool enough_kept_sets(const VerdictContext& v, int base) {
  return kept_set_tally(v, base).classified >= kSubsetMinTotal;
}

SparseEvidence gather_sparse_evidence(const VerdictContext& v, int base) {
  const size_t k = size_t(v.k);
  const bool kept_sets = enough_kept_sets(v, base);
  SparseEvidence e;
  for (auto* w : {&e.density, &e.solo, &e.step, &e.scale, &e.ratio, &e.subset_density, &e.subset_scale,
                  &e.normalized_density, &e.normalized_weight, &e.top_drop,
                  &e.upper_drop, &e.outlier_share, &e.profile_density}) {
    w->resize(k);
  }
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.reference != base || t.solo_density.empty()) continue;
    e.opposite += t.opposite_elements;
    e.sum_votes += t.sum_votes;
    if (kept_sets && kept_sets_read(t, k)) {
      for (size_t c = 0; c < k; ++c) {
        e.subset_density[c].add(t.subset_density[c], double(t.numel));
        e.subset_scale[c].add(t.subset_scale[c], double(t.numel));
        if (t.normalized_density.size() == k) {
          e.normalized_density[c].add(t.normalized_density[c], double(t.numel));
          e.normalized_weight[c].add(t.normalized_weight[c], double(t.numel));
        }
      }
    }
    for (size_t c = 0; c < k; ++c) {
      const double w = double(t.numel);
      e.density[c].add(t.density[c], w);
      e.solo[c].add(t.solo_density[c], w);
      e.step[c].add(t.magnitude_step[c], w);
      e.scale[c].add(t.kept_scale[c], w);
      e.ratio[c].add(t.ratio_weight[c], w);
      if (t.top_drop.size() == k) {
        e.top_drop[c].add(t.top_drop[c], w);
        e.upper_drop[c].add(t.upper_drop[c], w);
        e.outlier_share[c].add(t.outlier_share[c], w);
        e.profile_density[c].add(t.profile_density[c], w);
      }
    }
  }
  return e;
}

// DARE's density of candidate c: from its kept sets where they were read, else from the "kept
// alone" against "nothing kept" counts (biased low when the other candidates are dense).
double dare_density(const SparseEvidence& e, int c) {
  const auto& subsets = e.subset_density[size_t(c)];
  return subsets.empty() ? e.solo[size_t(c)].median() : subsets.median();
}

bool dare_linear(const SparseEvidence& e) {
  return e.sum_votes >= kRuleMinVotes && double(e.sum_votes) >= kRuleMinShare * double(e.opposite);
}

// The median over `others` of one per-candidate statistic.
double median_of(const std::vector<Weighted>& stat, const std::vector<int>& others) {
  Weighted all;
  for (int c : others) {
    for (const auto& value : stat[size_t(c)].values) all.add(value.first, value.second);
  }
  return all.empty() ? std::numeric_limits<double>::quiet_NaN() : all.median();
}

// The density of candidate c under each kind: TIES from the magnitude threshold, breadcrumbs from
// its drop profile (the threshold also counts the dropped top), DARE and DELLA from the kept sets
// or the "kept alone" counts (approximate for DELLA, whose rescaling varies with the rank).
double kind_density(const SparseEvidence& e, int c, SparseKind kind) {
  switch (kind) {
    case SparseKind::kTies:
    case SparseKind::kFamily:
    case SparseKind::kRandomFamily: return e.density[size_t(c)].median();
    case SparseKind::kBreadcrumbs: return e.profile_density[size_t(c)].median();
    default: return dare_density(e, c);
  }
}

// The recipe of the sparse merge of `others` onto `base`: TIES reads the density from the
// magnitude threshold and the weights from the kept-set ratios, DARE the density from the kept
// fraction and the weight from the rescaling of the kept entries, breadcrumbs the density and
// gamma from the drop profile and the weight from the unrescaled kept entries, DELLA epsilon from
// the profile's slope. "ties_family" writes the TIES recipe (the closest one mergekit runs).
nlohmann::json sparse_recipe(const VerdictContext& v, const SparseEvidence& e, int base,
                             const std::vector<int>& others, SparseKind kind) {
  nlohmann::json models = nlohmann::json::array();
  // della normalises by the weights that took part (the sum of the kept ones): its kept sets of
  // two or more read as weighted means, not sums, and only the weights' ratios matter.
  const bool normalized = kind == SparseKind::kDella && v.result.method == "della";
  for (int c : others) {
    const Weighted& nd = e.normalized_density[size_t(c)];
    const Weighted& nw = e.normalized_weight[size_t(c)];
    const double d = std::clamp(normalized && !nd.empty() ? nd.median() : kind_density(e, c, kind), 0.01, 1.0);
    double w = 1.0;
    nlohmann::json parameters;
    if (normalized && !nw.empty()) {
      w = nw.median();
    } else if (kind == SparseKind::kTies || kind == SparseKind::kFamily || kind == SparseKind::kRandomFamily) {
      w = others.size() >= 2 ? e.ratio[size_t(c)].median() : 1.0;
    } else if (kind == SparseKind::kBreadcrumbs) {
      w = e.scale[size_t(c)].median();
      parameters["gamma"] = round_digits(std::clamp(e.outlier_share[size_t(c)].median(), 0.0, 1.0 - d), 4);
    } else {
      w = (e.subset_scale[size_t(c)].empty() ? e.scale[size_t(c)] : e.subset_scale[size_t(c)]).median() * d;
    }
    if (kind == SparseKind::kDella) {
      // upper = (1 - d - 0.9 eps) / (1 - d + 0.9 eps), solved for eps.
      const double u = e.upper_drop[size_t(c)].median();
      const double eps = (1 - d) * (1 - u) / (0.9 * (1 + u));
      parameters["epsilon"] = round_digits(std::clamp(eps, 0.0, std::min(d, 1 - d) * 0.9), 4);
    }
    parameters["weight"] = round_digits(w, 4);
    parameters["density"] = round_digits(d, 4);
    models.push_back({{"model", v.result.candidates[size_t(c)].path}, {"parameters", parameters}});
  }
  const bool family = kind == SparseKind::kFamily || kind == SparseKind::kRandomFamily;
  const std::string method = family ? "ties" : v.result.method;
  return {{"merge_method", method}, {"base_model", v.result.candidates[size_t(base)].path},
          {"models", models}, {"dtype", torch_dtype_of(v.suspect)}};
}

// DELLA's drop profile: part of the top dropped (TIES keeps it) and the upper band between DARE's
// flat profile and TIES's step. NaN (not measured) is never DELLA's.
bool della_drops(double top, double upper) {
  return std::isfinite(top) && top >= kDellaTopDrop && upper > kDellaUpperLow && upper < kDellaUpperHigh;
}

// Which member of the TIES family the profile of `others` shows; `step` is their magnitude step.
SparseKind sparse_kind(const SparseEvidence& e, const std::vector<int>& others, double step, bool dare_sets) {
  const double top = median_of(e.top_drop, others), upper = median_of(e.upper_drop, others);
  // Breadcrumbs first: its dropped top (about gamma / 0.1 of the upper band) lowers the magnitude
  // step below TIES's bar at gamma ~0.02, but the top band is dropped while most of the upper
  // band is kept, which no other member shows (DELLA and DARE drop the top least).
  if (std::isfinite(top) && top > kBreadcrumbsTopDrop && std::isfinite(upper) && upper < 0.5 * top) {
    return SparseKind::kBreadcrumbs;
  }
  const bool della_profile = della_drops(top, upper) && std::fabs(top - upper) <= kDellaTopUpperGap;
  if (step > kTiesMagnitudeStep) {
    if (della_profile && step <= kDellaMagnitudeStep && !dare_sets) return SparseKind::kDella;
    if (!std::isfinite(top) || top < kTiesTopDrop) return SparseKind::kTies;
    return top > kBreadcrumbsTopDrop ? SparseKind::kBreadcrumbs : SparseKind::kFamily;
  }
  // DARE first by its kept sets (constant rescaled weights explain nearly every element); the
  // profile alone does not separate it from DELLA: rounding makes "nothing kept" likelier among the
  // smallest deltas, so DARE's measured upper is 0.4-0.75, not 1. DELLA's top is well above 0 (a
  // linear merge's cancellations never happen at the largest deltas: top 0).
  // TIES below 10% density first: the largest deltas are all kept (top ~0) while part of the
  // largest 10% is dropped, so the step is at most ~0.5 and the kept sets read like DARE's; random
  // drops (DARE, DELLA) never spare the top while dropping the band below it (top ~ upper, measured
  // within 0.05).
  if (std::isfinite(top) && std::isfinite(upper) && top < kTiesTopDrop && upper > top + kLowDensityTiesGap) {
    return SparseKind::kTies;
  }
  if (dare_sets || !std::isfinite(upper) || upper >= kDareUpperDrop) return SparseKind::kDare;
  return della_drops(top, upper) ? SparseKind::kDella : SparseKind::kRandomFamily;
}

}  // namespace

bool dare_signature(const VerdictContext& v) {
  if (!enough_kept_sets(v, -1)) return false;
  Weighted matched;
  std::vector<Weighted> density(size_t(v.k));
  for (const auto& t : v.result.tensors) {
    if (!kept_sets_read(t, size_t(v.k))) continue;
    matched.add(t.subset_matched, double(t.numel));
    for (size_t c = 0; c < size_t(v.k); ++c) density[c].add(t.subset_density[c], double(t.numel));
  }
  if (matched.empty() || matched.median() < kSubsetMatched) return false;
  // A candidate kept (almost) nowhere is not in the merge at all, not one DARE drops from: a blend
  // of the base and ft_1 is made by {ft_1} everywhere and ft_2's density is 0 (read as DARE on
  // GPT-OSS and Qwen3.5-MoE layouts before this bound).
  for (const auto& d : density) {
    if (!d.empty() && d.median() < kSubsetSparseDensity && d.median() >= kContributingSoloDensity) return true;
  }
  return false;
}

KeptSetTally kept_set_tally(const VerdictContext& v, int base) {
  KeptSetTally tally;
  const size_t k = size_t(v.k);
  std::vector<double> sum(k, 0), squares(k, 0);
  std::vector<size_t> count(k, 0);
  for (const auto& t : v.result.tensors) {
    if (!kept_sets_read(t, k) || (base >= 0 && t.reference != base)) continue;
    ++tally.tensors;
    tally.classified += t.subset_classifiable;
    tally.matched += uint64_t(std::llround(t.subset_matched * double(t.subset_classifiable)));
    for (size_t c = 0; c < k; ++c) {
      if (!std::isfinite(t.subset_density[c])) continue;
      sum[c] += t.subset_density[c];
      squares[c] += t.subset_density[c] * t.subset_density[c];
      ++count[c];
    }
  }
  // The standard error of a median over n tensors: sqrt(pi / 2) sd / sqrt(n) for normal spreads.
  for (size_t c = 0; c < k; ++c) {
    if (count[c] < 2) continue;
    const double n = double(count[c]), mean = sum[c] / n;
    const double variance = std::max(0.0, (squares[c] - n * mean * mean) / (n - 1));
    tally.density_se = std::max(tally.density_se, 1.2533 * std::sqrt(variance / n));
  }
  return tally;
}

bool della_signature(const VerdictContext& v) {
  if (sparse_fraction(v) <= kDellaEquality || reference_equality_concentration(v) < kDellaConcentration ||
      dare_signature(v)) {
    return false;
  }
  Weighted upper, step, top;
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.upper_drop.size() != size_t(v.k)) continue;
    for (size_t c = 0; c < size_t(v.k); ++c) {
      upper.add(t.upper_drop[c], double(t.numel));
      top.add(t.top_drop[c], double(t.numel));
      step.add(t.magnitude_step[c], double(t.numel));
    }
  }
  return !upper.empty() && della_drops(top.median(), upper.median()) && step.median() <= kDellaMagnitudeStep;
}

bool random_drops(const DropProfile& p) {
  return std::isfinite(p.top) && std::isfinite(p.upper) &&
         std::fabs(p.top - p.upper) <= kDellaTopUpperGap && std::fabs(p.step) <= kTiesMagnitudeStep;
}

bool try_sparse(VerdictContext& v, int base, DropProfile* profile) {
  const SparseEvidence e = gather_sparse_evidence(v, base);
  // Which candidates contribute (kept alone often enough), and how: TIES or DARE.
  std::vector<int> others;
  Weighted all_steps;
  for (int c = 0; c < v.k; ++c) {
    if (c == base || e.density[size_t(c)].empty()) continue;
    // A decoy that slipped into some tensors' statistics (run.cpp leaves out a tensor's weightless
    // candidates, but a small tensor's weights scatter): its overall dense weight is nil, a
    // parent's is not. Kept, it entered the recipe with weight 0 and shifted the others'.
    if (std::fabs(v.candidate(c).weight) < kInvolvedWeight) continue;
    if (e.solo[size_t(c)].median() >= kContributingSoloDensity) {
      others.push_back(c);
      for (const auto& value : e.step[size_t(c)].values) all_steps.add(value.first, value.second);
    }
  }
  if (others.empty() || !strong_evidence(v)) return false;
  const SparseKind kind = sparse_kind(e, others, all_steps.median(), dare_signature(v));
  const bool ties = kind == SparseKind::kTies || kind == SparseKind::kBreadcrumbs || kind == SparseKind::kFamily;
  // The combination rule, from the opposite-sign elements only the plain sum makes (sparse_subsets.cpp):
  // it separates the *_linear / plain members from the sign-consensus ones wherever it was read.
  const bool plain_sum = dare_linear(e);
  AssayResult& r = v.result;
  r.verdict = "merge";
  switch (kind) {
    case SparseKind::kTies: r.method = "ties"; break;
    case SparseKind::kBreadcrumbs: r.method = plain_sum ? "breadcrumbs" : "breadcrumbs_ties"; break;
    case SparseKind::kDare: r.method = plain_sum ? "dare_linear" : "dare_ties"; break;
    case SparseKind::kDella: r.method = plain_sum ? "della_linear" : "della"; break;
    case SparseKind::kFamily:
    case SparseKind::kRandomFamily: r.method = "ties_family"; break;
  }
  const double top = median_of(e.top_drop, others), upper = median_of(e.upper_drop, others);
  if (profile != nullptr) *profile = {top, upper, all_steps.median()};
  v.note("drop profile (nothing-kept rate relative to the smallest 10% of each delta): largest 0.5% " +
         std::to_string(top) + " (TIES ~0, breadcrumbs ~1), largest 10% " + std::to_string(upper) +
         " (TIES 0, DELLA between, DARE 1)");
  if (kind == SparseKind::kFamily) {
    // Without plain-sum elements, sign consensus: plain breadcrumbs is ruled out.
    r.evidence["method_alternatives"] = plain_sum ? nlohmann::json{"ties", "breadcrumbs_ties", "breadcrumbs"}
                                                  : nlohmann::json{"ties", "breadcrumbs_ties"};
    r.evidence["confidence"] = "low";
    v.note("a sparse merge of the TIES family whose drop profile fits none of its members clearly (the "
           "largest deltas partly dropped: a breadcrumbs gamma too small to read, or TIES); the recipe is "
           "written as ties, the closest mergekit runs");
  } else if (kind == SparseKind::kRandomFamily) {
    r.evidence["method_alternatives"] = plain_sum ? nlohmann::json{"dare_linear", "della_linear"}
                                                  : nlohmann::json{"dare_ties", "della"};
    r.evidence["confidence"] = "low";
    v.note("a sparse merge with entries dropped at random whose kept sets and drop profile fit neither DARE "
           "nor DELLA clearly; the recipe is written as ties, the closest mergekit runs");
  } else if (kind == SparseKind::kDella) {
    v.note("DELLA signature: the keep chance rises with the magnitude rank (between DARE's flat profile and "
           "TIES's step); the density is approximate");
    // della's weights come only from elements kept by two or more parents (weighted means); where
    // too few were classifiable (small tensors, several parents) the recipe's weights are not della's.
    const bool weights_read = std::all_of(others.begin(), others.end(),
                                          [&](int c) { return !e.normalized_weight[size_t(c)].empty(); });
    if (r.method == "della" && others.size() >= 3) {
      v.note("with " + std::to_string(others.size()) +
             " parents the densities read high in every case measured (0.7 for each of 0.5 / 0.6 / "
             "0.7; 0.55-0.62 for 0.5 / 0.6 / 0.5): take them as upper bounds");
    }
    if (r.method == "della" && !weights_read) {
      r.evidence["confidence"] = "low";
      v.note("della's relative weights could not be read (too few elements kept by two parents could be "
             "classified); the recipe's weights and densities are those of a plain sum and are not della's");
    }
  } else if (kind == SparseKind::kDare && plain_sum) {
    // della_linear rescales by one factor per tensor and sums without consensus or normalising, so
    // its kept sets read exactly like dare_linear's; only the rank dependence of the keep chance
    // differs, and the drop profile does not resolve it (both flat within 0.05, docs/assay.md).
    r.evidence["method_alternatives"] = nlohmann::json{"dare_linear", "della_linear"};
    v.note("dare_linear and della_linear are not told apart: both sum kept deltas rescaled by one factor "
           "per tensor; DELLA's rank-dependent keep chance is not resolved by the drop profile");
  }
  if (kind != SparseKind::kTies) {
    v.note("combination rule: " + std::to_string(e.sum_votes) + " of " + std::to_string(e.opposite) +
           " well-resolved elements with deltas of both signs are made only by the plain sum of the kept deltas " +
           (plain_sum ? "(no sign consensus)" : "(too few: sign consensus)"));
  }
  r.base = base;
  v.candidate(base).involved = true;
  const std::vector<nlohmann::json> hypotheses = {sparse_recipe(v, e, base, others, kind)};
  for (int c : others) {
    auto& cand = v.candidate(c);
    cand.involved = true;
    cand.density = kind_density(e, c, kind);
  }
  const char* kept = kind == SparseKind::kTies          ? "the largest-magnitude deltas"
                     : kind == SparseKind::kBreadcrumbs ? "large-magnitude deltas below the largest (the outliers)"
                     : kind == SparseKind::kDare        ? "independent of magnitude"
                     : kind == SparseKind::kDella       ? "more often the larger, at random"
                     : kind == SparseKind::kFamily      ? "chosen by magnitude in a way no member fits"
                                                        : "dropped at random in a way no member fits";
  v.note(std::string(ties ? "TIES-family" : "DARE-family") + " signature: " + std::to_string(sparse_fraction(v)) +
         " of resolved elements equal the base or one parent exactly; the kept entries are " + kept +
         " (magnitude step " + std::to_string(all_steps.median()) + ")");
  r.recipe = hypotheses.front();
  confirm_by_rebuild(v, hypotheses);
  summarise_merge(v);
  return true;
}

}  // namespace alloy::detail
