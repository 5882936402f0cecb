// The sparse merge methods: TIES (kept entries chosen by magnitude) and DARE-TIES (kept at random),
// told apart by how the chance of keeping an entry depends on its magnitude.
#include <algorithm>

#include "verdict.h"

namespace alloy::detail {
namespace {

constexpr double kTiesMagnitudeStep = 0.5;
constexpr double kContributingSoloDensity = 0.02;  // kept alone this often: the candidate contributes

// The sparse statistics of each candidate over the tensors fitted against `base`.
struct SparseEvidence {
  std::vector<Weighted> density, solo, step, scale, ratio;  // [candidate]
};

SparseEvidence gather_sparse_evidence(const VerdictContext& v, int base) {
  const size_t k = size_t(v.k);
  SparseEvidence e{std::vector<Weighted>(k), std::vector<Weighted>(k), std::vector<Weighted>(k),
                   std::vector<Weighted>(k), std::vector<Weighted>(k)};
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.reference != base || t.solo_density.empty()) continue;
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

// The recipe of the sparse merge of `others` onto `base`: TIES reads the density from the
// magnitude threshold and the weights from the kept-set ratios, DARE the density from the kept
// fraction and the weight from the rescaling of the kept entries.
nlohmann::json sparse_recipe(const VerdictContext& v, const SparseEvidence& e, int base,
                             const std::vector<int>& others, bool ties) {
  nlohmann::json models = nlohmann::json::array();
  for (int c : others) {
    double d = ties ? e.density[size_t(c)].median() : e.solo[size_t(c)].median();
    d = std::clamp(d, 0.01, 1.0);
    double w = 1.0;
    if (ties) {
      w = others.size() >= 2 ? e.ratio[size_t(c)].median() : 1.0;
    } else {
      w = e.scale[size_t(c)].median() * d;
    }
    models.push_back({{"model", v.result.candidates[size_t(c)].path},
                      {"parameters", {{"weight", round_digits(w, 4)}, {"density", round_digits(d, 4)}}}});
  }
  return {{"merge_method", v.result.method}, {"base_model", v.result.candidates[size_t(base)].path},
          {"models", models}, {"dtype", torch_dtype_of(v.suspect)}};
}

}  // namespace

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
  r.method = ties ? "ties" : "dare_ties";
  r.base = base;
  v.candidate(base).involved = true;
  const std::vector<nlohmann::json> hypotheses = {sparse_recipe(v, e, base, others, ties)};
  for (int c : others) {
    auto& cand = v.candidate(c);
    cand.involved = true;
    cand.density = ties ? e.density[size_t(c)].median() : e.solo[size_t(c)].median();
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
