// The dense merge methods: slerp (two parents whose coefficients sum to more than 1 by the slerp
// excess), else linear, or task arithmetic when the base is among the parents.
#include <algorithm>
#include <cmath>
#include <map>

#include "verdict.h"

namespace alloy::detail {
namespace {

// A per-tensor value of a candidate as a mergekit parameter profile (4 decimals, 0.005 tolerance).
nlohmann::json parameter_profile(const std::vector<ParameterSample>& samples, const Model& suspect) {
  return encode_profile(samples, count_layers(suspect), 0.005, 4);
}

// Whether the tensors fitted to the pair `involved` show the slerp excess where it is measurable,
// and, if so, which of the two is the slerp's base (the parent_a of most elements); notes what
// it found.
bool slerp_signature(VerdictContext& v, const std::vector<int>& involved, int* base) {
  int agree = 0, lerp = 0, significant = 0;
  std::map<int, double> base_votes;
  for (const auto& t : v.result.tensors) {
    if (!t.fitted || t.parent_a < 0) continue;
    const bool pair = (t.parent_a == involved[0] && t.parent_b == involved[1]) ||
                      (t.parent_a == involved[1] && t.parent_b == involved[0]);
    if (!pair) continue;
    base_votes[t.parent_a] += double(t.numel);
    const double se = std::max(t.coefficient_sum_se, 1e-12);
    if (std::fabs(t.slerp_excess) < 5 * se) continue;  // slerp and lerp look alike here
    ++significant;
    const double measured = t.coefficient_sum - 1;
    agree += std::fabs(measured - t.slerp_excess) < std::max(3 * se, 0.1 * std::fabs(t.slerp_excess));
    lerp += std::fabs(measured) < 3 * se;
  }
  if (significant == 0 || agree <= lerp || 2 * agree < significant) return false;
  int a = involved[0];
  for (const auto& [c, votes] : base_votes) {
    if (votes > base_votes[a]) a = c;
  }
  *base = a;
  v.note("slerp: on " + std::to_string(agree) + " of " + std::to_string(significant) +
         " tensors where slerp and lerp differ measurably, the coefficients sum to 1 + the slerp excess");
  return true;
}

}  // namespace

bool try_slerp(VerdictContext& v, const std::vector<int>& involved) {
  int a = -1;
  if (!slerp_signature(v, involved, &a)) return false;
  const int b = a == involved[0] ? involved[1] : involved[0];
  std::vector<ParameterSample> t_samples;
  for (const auto& t : v.result.tensors) {
    if (!t.fitted) continue;
    double tv = t.slerp_t;
    if (t.parent_a == b && t.parent_b == a) tv = 1 - tv;
    else if (t.parent_a != a || t.parent_b != b) continue;
    t_samples.push_back({t.name, t.layer, t.numel, tv});
  }
  AssayResult& r = v.result;
  r.verdict = "merge";
  r.method = "slerp";
  r.base = a;
  r.recipe = {{"merge_method", "slerp"},
              {"base_model", v.candidate(a).path},
              {"models", {{{"model", v.candidate(a).path}}, {{"model", v.candidate(b).path}}}},
              {"parameters", {{"t", parameter_profile(t_samples, v.suspect)}}},
              {"dtype", torch_dtype_of(v.suspect)}};
  confirm_by_rebuild(v, {r.recipe});
  summarise_merge(v);
  return true;
}

// How far from 1 the fitted weights of the other candidates may sum for task arithmetic with an
// uninvolved base to be read beside linear (the fit's weights of such a merge: 1.0015).
constexpr double kWeightsSumToOne = 0.02;

void dense_merge(VerdictContext& v, const std::vector<int>& involved, int base) {
  AssayResult& r = v.result;
  r.verdict = "merge";
  const auto weight_profile = [&](int c) {
    std::vector<ParameterSample> samples;
    for (const auto& t : r.tensors) {
      if (t.fitted) samples.push_back({t.name, t.layer, t.numel, t.weights[size_t(c)]});
    }
    return parameter_profile(samples, v.suspect);
  };
  const auto weighted_model = [&](int c) -> nlohmann::json {
    return {{"model", v.candidate(c).path}, {"parameters", {{"weight", weight_profile(c)}}}};
  };
  const std::string dtype = torch_dtype_of(v.suspect);
  nlohmann::json linear_models = nlohmann::json::array();
  for (int c : involved) linear_models.push_back(weighted_model(c));
  const nlohmann::json linear = {{"merge_method", "linear"}, {"models", linear_models}, {"dtype", dtype}};
  const bool base_involved = std::find(involved.begin(), involved.end(), base) != involved.end();
  nlohmann::json ta_models = nlohmann::json::array();  // linear's, less the base's
  double weight_sum = 0;
  for (size_t i = 0; i < involved.size(); ++i) {
    if (involved[i] == base) continue;
    ta_models.push_back(linear_models[i]);
    weight_sum += v.candidate(involved[i]).weight;
  }
  const nlohmann::json task = {{"merge_method", "task_arithmetic"},
                               {"base_model", v.candidate(base).path},
                               {"models", ta_models},
                               {"dtype", dtype}};
  std::vector<nlohmann::json> hypotheses;
  size_t fallbacks = 0;
  if (base_involved) {
    // Negative base weight: an extrapolation, which task arithmetic is the natural reading of.
    if (v.candidate(base).weight < -kInvolvedWeight) hypotheses = {task, linear};
    else hypotheses = {linear, task};
  } else if (v.candidate(base).related && std::fabs(weight_sum - 1) < kWeightsSumToOne) {
    // The base a related candidate with no weight of its own and the weights summing to 1: task
    // arithmetic with those weights gives the same values through another chain of roundings
    // (base + sum w_i (x_i - base)), and the rebuild tells the two apart. A task_arithmetic merge
    // of four (0.4 / 0.3 / 0.2 / 0.1) was read as linear, rebuilding 94% of the sample exactly.
    hypotheses = {linear, task};
    fallbacks = 1;  // a linear recipe that rebuilds every sampled element settles it
  } else {
    hypotheses = {linear};
  }
  r.recipe = hypotheses.front();
  confirm_by_rebuild(v, hypotheses, fallbacks);
  r.method = r.recipe["merge_method"];
  if (r.method == "task_arithmetic") r.base = base;
  summarise_merge(v);
}

}  // namespace alloy::detail
