// The sparse merge methods: TIES (kept entries chosen by magnitude) and DARE (kept at random),
// told apart by how the chance of keeping an entry depends on its magnitude; DARE's densities,
// weights and combination rule (dare_ties: sign consensus; dare_linear: plain sum) from its kept
// sets read element by element (sparse_subsets.cpp).
#include <algorithm>

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
constexpr uint64_t kSubsetMinElements = 256;
// dare_linear over dare_ties: the plain sum makes at least this many opposite-sign elements that
// sign consensus cannot, and at least this share of them (dare_linear: about the chance that
// deltas of both signs are kept, 0.1-0.5 at usual densities; dare_ties: only coincidences).
constexpr uint64_t kRuleMinVotes = 64;
constexpr double kRuleMinShare = 0.02;

// The sparse statistics of each candidate over the tensors fitted against `base`.
struct SparseEvidence {
  std::vector<Weighted> density, solo, step, scale, ratio, subset_density, subset_scale;  // [candidate]
  uint64_t opposite = 0, sum_votes = 0;
};

SparseEvidence gather_sparse_evidence(const VerdictContext& v, int base) {
  const size_t k = size_t(v.k);
  SparseEvidence e;
  for (auto* w : {&e.density, &e.solo, &e.step, &e.scale, &e.ratio, &e.subset_density, &e.subset_scale}) w->resize(k);
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.reference != base || t.solo_density.empty()) continue;
    e.opposite += t.opposite_elements;
    e.sum_votes += t.sum_votes;
    if (t.subset_classifiable >= kSubsetMinElements && t.subset_density.size() == k) {
      for (size_t c = 0; c < k; ++c) {
        e.subset_density[c].add(t.subset_density[c], double(t.numel));
        e.subset_scale[c].add(t.subset_scale[c], double(t.numel));
      }
    }
    for (size_t c = 0; c < k; ++c) {
      const double w = double(t.numel);
      e.density[c].add(t.density[c], w);
      e.solo[c].add(t.solo_density[c], w);
      e.step[c].add(t.magnitude_step[c], w);
      e.scale[c].add(t.kept_scale[c], w);
      e.ratio[c].add(t.ratio_weight[c], w);
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

// The recipe of the sparse merge of `others` onto `base`: TIES reads the density from the
// magnitude threshold and the weights from the kept-set ratios, DARE the density from the kept
// fraction and the weight from the rescaling of the kept entries.
nlohmann::json sparse_recipe(const VerdictContext& v, const SparseEvidence& e, int base,
                             const std::vector<int>& others, bool ties) {
  nlohmann::json models = nlohmann::json::array();
  for (int c : others) {
    double d = ties ? e.density[size_t(c)].median() : dare_density(e, c);
    d = std::clamp(d, 0.01, 1.0);
    double w = 1.0;
    if (ties) {
      w = others.size() >= 2 ? e.ratio[size_t(c)].median() : 1.0;
    } else {
      w = (e.subset_scale[size_t(c)].empty() ? e.scale[size_t(c)] : e.subset_scale[size_t(c)]).median() * d;
    }
    models.push_back({{"model", v.result.candidates[size_t(c)].path},
                      {"parameters", {{"weight", round_digits(w, 4)}, {"density", round_digits(d, 4)}}}});
  }
  return {{"merge_method", v.result.method}, {"base_model", v.result.candidates[size_t(base)].path},
          {"models", models}, {"dtype", torch_dtype_of(v.suspect)}};
}

}  // namespace

bool dare_signature(const VerdictContext& v) {
  Weighted matched;
  std::vector<Weighted> density(size_t(v.k));
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.subset_classifiable < kSubsetMinElements || t.subset_density.size() != size_t(v.k)) continue;
    matched.add(t.subset_matched, double(t.numel));
    for (size_t c = 0; c < size_t(v.k); ++c) density[c].add(t.subset_density[c], double(t.numel));
  }
  if (matched.empty() || matched.median() < kSubsetMatched) return false;
  for (const auto& d : density) {
    if (!d.empty() && d.median() < kSubsetSparseDensity) return true;
  }
  return false;
}

bool try_sparse(VerdictContext& v, int base) {
  const SparseEvidence e = gather_sparse_evidence(v, base);
  // Which candidates contribute (kept alone often enough), and how: TIES or DARE.
  std::vector<int> others;
  Weighted all_steps;
  for (int c = 0; c < v.k; ++c) {
    if (c == base || e.density[size_t(c)].empty()) continue;
    if (e.solo[size_t(c)].median() >= kContributingSoloDensity) {
      others.push_back(c);
      for (const auto& value : e.step[size_t(c)].values) all_steps.add(value.first, value.second);
    }
  }
  if (others.empty() || !strong_evidence(v)) return false;
  const bool ties = all_steps.median() > kTiesMagnitudeStep;
  AssayResult& r = v.result;
  r.verdict = "merge";
  r.method = ties ? "ties" : dare_linear(e) ? "dare_linear" : "dare_ties";
  r.base = base;
  v.candidate(base).involved = true;
  const std::vector<nlohmann::json> hypotheses = {sparse_recipe(v, e, base, others, ties)};
  for (int c : others) {
    auto& cand = v.candidate(c);
    cand.involved = true;
    cand.density = ties ? e.density[size_t(c)].median() : dare_density(e, c);
  }
  if (!ties) {
    v.note("combination rule: " + std::to_string(e.sum_votes) + " of " + std::to_string(e.opposite) +
           " well-resolved elements with deltas of both signs are made only by the plain sum of the kept deltas " +
           (r.method == "dare_linear" ? "(dare_linear; sign consensus cannot make them)"
                                      : "(too few for dare_linear: sign consensus, dare_ties)"));
  }
  v.note(std::string(ties ? "TIES" : "DARE") + " signature: " + std::to_string(sparse_fraction(v)) +
         " of resolved elements equal the base or one parent exactly; the kept entries are " +
         (ties ? "the largest-magnitude deltas (magnitude step " : "independent of magnitude (magnitude step ") +
         std::to_string(all_steps.median()) + ")");
  r.recipe = hypotheses.front();
  confirm_by_rebuild(v, hypotheses);
  summarise_merge(v);
  return true;
}

}  // namespace alloy::detail
