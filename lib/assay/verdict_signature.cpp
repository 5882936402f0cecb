// The statistical signature of a merge in the per-tensor weights (docs/assay.md, "The merge
// signature"): a recipe gives every tensor of a component in one layer the same mixing weight, so
// the weights are significant and, within each (component, layer) cell, equal up to their standard
// errors. Siblings (fine-tunes trained on similar data) correlate with each other by an amount that
// changes from tensor to tensor, so their fitted weights spread far beyond the errors. Gradients
// over layers and per-component filters are allowed: only tensors of one cell are compared.
#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "verdict.h"

namespace alloy::detail {
namespace {

// The spread between the tensors of one cell beyond what their standard errors explain, as a
// share of the weight: merges measure 0.00-0.05 under noise up to 4x their deviation and further
// fine-tuning; correlated siblings 0.3-0.7 (tests/assay/test_assay_null.cpp, bench/robustness).
constexpr double kHomogeneousSpread = 0.15;
// ... and only where the excess is real: Cochran's Q beyond its chi-square null by this many
// standard normal units (one-sided p ~ 1e-4). A merge under heavy disguise (int4 rounding at ten
// times its deviation) has standard errors so wide that its point estimate of the spread scatters
// past the bar by chance (0.2 measured on one 4-layer model) while Q stays at its null.
constexpr double kHeterogeneityZ = 3.7;
// Sameness is shown, not assumed: a component's weights are "the same" only where Q lies this far
// (as a normal z; one-sided p ~ 1e-3) in the lower tail of its distribution under a siblings'
// spread of kSiblingSpread x the weight. Where neither test decides, the fit is too weak to tell,
// and the sameness is untestable (the verdict then needs the older z rule, which siblings fail).
constexpr double kSiblingSpread = 0.3;
constexpr double kSiblingZ = 3.0;
// Standard errors are floored so that an exact float32 merge (zero residual) has finite weights.
constexpr double kSeFloor = 1e-9;
// The weights' tests treat each standard error as known. One estimated from d residual degrees of
// freedom makes (w - mean)^2 / se^2 an F(1, d), whose mean d / (d - 2) is infinite for d <= 2, and
// at d = 0 the residual, and so the error, is 0: a 4-element tensor (gpt-oss attention sinks,
// Qwen3-Next's A_log and dt_bias) fitted on four candidates then outweighs every matrix in the
// inverse-variance mean, and one equal to its reference has no error at all (either once made both
// weights' z 0 and a clean gpt-oss merge a fine-tune); on three candidates such tensors put Q of a
// rounded merge's attention at heterogeneity z 3.8. From 30 residual degrees of freedom on, the
// term's mean is within 7% of 1 and Q keeps its chi-square null.
constexpr double kMinResidualDf = 30;

// Whether tensor t's weight for candidate c enters the weights' tests: fitted, with a finite weight
// and standard error, and enough elements (above).
bool weighs_in(const TensorAssay& t, int c, int k) {
  return t.fitted && std::isfinite(t.weights[size_t(c)]) && std::isfinite(t.weight_se[size_t(c)]) &&
         double(t.numel) >= kMinResidualDf + k;
}

struct CellSums {
  double sw = 0, swx = 0, swxx = 0, sww = 0;  // sum of 1/se^2, of w/se^2, of w^2/se^2, of 1/se^4
  double swww = 0;                            // sum of 1/se^6
  uint64_t numel = 0;
  int tensors = 0;
  void add(double w, double se, uint64_t n) {
    const double iv = 1 / std::max(se * se, kSeFloor * kSeFloor);
    sw += iv, swx += iv * w, swxx += iv * w * w, sww += iv * iv, swww += iv * iv * iv;
    numel += n;
    ++tensors;
  }
  // Cochran's Q = sum (w - mean)^2 / se^2, chi-square with m - 1 degrees of freedom under sameness.
  double cochran_q() const { return tensors < 2 ? 0 : std::max(0.0, swxx - swx * swx / sw); }
  // Q's mean and variance when the weights spread by tau^2 beyond their errors: the mean is exact,
  // (m - 1) + tau^2 (S1 - S2/S1); the variance treats Q as sum_t (1 + tau^2 v_t)(1 - v_t/S1) chi2_1
  // terms, exact at tau = 0 and for equal errors.
  double expected_q(double tau2) const { return tensors < 2 ? 0 : (tensors - 1) + tau2 * (sw - sww / sw); }
  double variance_q(double tau2) const {
    if (tensors < 2) return 0;
    return 2 * ((tensors - 1) + 2 * tau2 * (sw - sww / sw) + tau2 * tau2 * (sww - swww / sw));
  }
  // DerSimonian-Laird: the between-tensor variance tau^2 = max(0, (Q - (m - 1)) / (S1 - S2 / S1)).
  double excess_variance() const {
    if (tensors < 2) return 0;
    const double q = cochran_q();
    const double denominator = sw - sww / sw;
    return denominator > 0 ? std::max(0.0, (q - (tensors - 1)) / denominator) : 0.0;
  }
};

// The upper tail of a chi-square with `df` degrees of freedom at `q`, as a standard normal z
// (Wilson and Hilferty 1931: (q/df)^(1/3) is nearly normal with mean 1 - 2/(9 df), variance 2/(9 df)).
double chi_square_z(double q, double df) {
  if (df <= 0) return 0;
  const double v = 2 / (9 * df);
  return (std::cbrt(q / df) - (1 - v)) / std::sqrt(v);
}

Signature record(VerdictContext& v, Signature s) {
  v.result.evidence["merge_signature"] = s == Signature::kPresent ? "present" : s == Signature::kAbsent ? "absent" : "untestable";
  return s;
}

}  // namespace

std::vector<WeightSignificance> weight_significance(const VerdictContext& v) {
  std::vector<WeightSignificance> out(size_t(v.k));
  for (int c = 0; c < v.k; ++c) {
    CellSums all;
    for (const auto& t : v.result.tensors) {
      if (weighs_in(t, c, v.k)) all.add(t.weights[size_t(c)], t.weight_se[size_t(c)], t.numel);
    }
    if (all.sw > 0) out[size_t(c)] = {all.swx / all.sw, all.swx / std::sqrt(all.sw)};
  }
  return out;
}

std::vector<ComponentSpread> weight_spreads(const VerdictContext& v) {
  std::vector<ComponentSpread> out;
  for (const auto& comp : v.result.components) {
    if (double(comp.numel) < kMajorComponent * double(v.fitted_numel)) continue;
    for (int c = 0; c < v.k; ++c) {
      std::map<int, CellSums> cells;  // by layer; tensors outside the layers are cells of their own
      CellSums whole;
      int outside = 0;
      for (const auto& t : v.result.tensors) {
        if (t.component != comp.name || !weighs_in(t, c, v.k)) continue;
        const double w = t.weights[size_t(c)], se = t.weight_se[size_t(c)];
        whole.add(w, se, t.numel);
        cells[t.layer >= 0 ? t.layer : -1 - outside++].add(w, se, t.numel);
      }
      if (whole.sw <= 0) continue;
      const double mean = whole.swx / whole.sw;
      const double z = whole.swx / std::sqrt(whole.sw);
      // Only a weight the recipe clearly gives this component can be tested for sameness.
      if (std::fabs(mean) < kInvolvedWeight || std::fabs(z) < kMergeZ) continue;
      const double sibling_tau2 = std::pow(kSiblingSpread * mean, 2);
      double tau2 = 0, numel = 0, q = 0, df = 0, q_sibling = 0, var_sibling = 0;
      int compared = 0;
      for (const auto& [layer, cell] : cells) {
        if (cell.tensors < 2) continue;
        tau2 += double(cell.numel) * cell.excess_variance();
        numel += double(cell.numel);
        q += cell.cochran_q();
        df += cell.tensors - 1;
        q_sibling += cell.expected_q(sibling_tau2);
        var_sibling += cell.variance_q(sibling_tau2);
        compared += cell.tensors;
      }
      if (compared == 0) continue;
      // Q under the siblings' spread as a scaled chi-square c chi2_nu with its mean and variance
      // (Satterthwaite), and how far into its lower tail the observed Q lies, as a normal z.
      const double nu = var_sibling > 0 ? 2 * q_sibling * q_sibling / var_sibling : 0;
      const double sibling_z = nu > 0 ? -chi_square_z(q * nu / q_sibling, nu) : 0;
      out.push_back({comp.name, c, mean, std::sqrt(tau2 / numel) / std::fabs(mean), compared, chi_square_z(q, df), sibling_z});
    }
  }
  return out;
}

Signature consistent_weights(VerdictContext& v, std::vector<int>* involved) {
  const auto significance = weight_significance(v);
  std::vector<int> kept;
  nlohmann::json z = nlohmann::json::object();
  for (int c : *involved) {
    z[v.candidate(c).path] = significance[size_t(c)].z;
    if (std::fabs(significance[size_t(c)].z) >= kMergeZ) kept.push_back(c);
  }
  v.result.evidence["weight_z"] = z;
  const auto spreads = weight_spreads(v);
  nlohmann::json table = nlohmann::json::array();
  const ComponentSpread* worst = nullptr;  // the widest significant spread over the bar
  const ComponentSpread* loose = nullptr;  // the widest spread whose sameness could not be told
  bool any_same = false;
  for (const auto& s : spreads) {
    const bool differs = s.spread > kHomogeneousSpread && s.heterogeneity_z >= kHeterogeneityZ;
    const bool same = !differs && s.spread <= kHomogeneousSpread && s.sibling_z >= kSiblingZ;
    table.push_back({{"component", s.component}, {"candidate", v.candidate(s.candidate).path},
                     {"weight", s.weight}, {"spread", s.spread}, {"tensors", s.tensors},
                     {"heterogeneity_z", s.heterogeneity_z}, {"sibling_z", s.sibling_z},
                     {"sameness", differs ? "differs" : same ? "same" : "untestable"}});
    any_same |= same;
    if (differs && (!worst || s.spread > worst->spread)) worst = &s;
    if (!differs && !same && (!loose || s.spread > loose->spread)) loose = &s;
  }
  v.result.evidence["weight_spread"] = table;
  v.result.evidence["weight_spread_bar"] = kHomogeneousSpread;
  v.result.evidence["weight_heterogeneity_z_bar"] = kHeterogeneityZ;
  v.result.evidence["weight_sibling_z_bar"] = kSiblingZ;
  if (kept.size() < 2) {
    v.note("fewer than two candidates carry a weight significantly different from 0 (|z| >= " +
           std::to_string(int(kMergeZ)) + ")");
    return record(v, Signature::kAbsent);
  }
  if (worst) {
    v.note("the weight of " + v.candidate(worst->candidate).path + " on " + worst->component +
           " changes from tensor to tensor within a layer by " + number_text(worst->spread, 2) +
           " of its value (a recipe gives them one weight; bar " + number_text(kHomogeneousSpread) +
           ", heterogeneity z " + number_text(worst->heterogeneity_z, 2) +
           "): the correlation of siblings trained on similar data, not a merge");
    return record(v, Signature::kAbsent);
  }
  *involved = kept;
  if (!spreads.empty() && !any_same) {
    v.note("the fit is too weak to tell the weights' sameness from siblings' spread: the weight of " +
           v.candidate(loose->candidate).path + " on " + loose->component + " spreads by " +
           number_text(loose->spread, 2) + " of its value between the tensors of a layer (heterogeneity z " +
           number_text(loose->heterogeneity_z, 2) + ", " + number_text(loose->sibling_z, 2) +
           " normal units into the lower tail of a sibling spread of " + number_text(kSiblingSpread) + "; needs " +
           number_text(kSiblingZ) + ")");
    return record(v, Signature::kUntestable);
  }
  if (spreads.empty()) {
    v.note("no layer has two compared tensors of one component: the sameness of the weights could not be tested");
    return record(v, Signature::kUntestable);
  }
  return record(v, Signature::kPresent);
}

}  // namespace alloy::detail
