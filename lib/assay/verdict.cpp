// The verdict stage: aggregate the per-tensor fits, decide merge / fine-tune / copy / independent,
// name the method, write the recipe and confirm it by rebuilding sampled tensors.
// docs/assay.md, "Verdicts", states every threshold used here and why.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "alloy/core/dtype.h"
#include "internal.h"

namespace alloy::detail {
namespace {

constexpr double kRelated = 0.2;        // median Pearson correlation: shares weights
constexpr double kInvolvedWeight = 0.01;
constexpr double kMergeZ = 5.0;  // every major component this many null scales above 0 (siblings: < 1)
constexpr double kMergeLog10Bound = -6.0;
constexpr double kCopyDeviation = 0.002;  // |S - C| / |C| at bf16 re-rounding level
constexpr double kSparseEquality = 0.25;  // linear merges: ~0.08 from cancellations
constexpr double kTiesMagnitudeStep = 0.5;
constexpr double kMajorComponent = 0.05;  // share of the fitted elements
// Independent derivations of an ancestor that is not among the candidates fit each other: with k
// sibling candidates the best affine fit is their centroid and cos_fit^2 = 1 - (1 + 1/k) / 2, from
// 0.5 (k = 1) towards 0.71. When the reference is shown to be the common ancestor of the other
// related candidates (their deltas from it are mutually near-orthogonal), siblings fit with
// cos_fit ~ sqrt(p/n), which z already tests, and the bar only guards against degenerate fits:
// a merge hidden under noise, int4 re-quantization or further training keeps cos_fit 0.35-0.7
// (tests/test_assay_robust.cpp). Otherwise a dense merge must explain at least 0.8.
constexpr double kDenseMergeCosFit = 0.2;
constexpr double kDenseMergeCosFitNoAncestor = 0.8;
constexpr double kAncestorCos = 0.25;

struct Weighted {
  std::vector<std::pair<double, double>> values;
  void add(double v, double w) {
    if (std::isfinite(v)) values.push_back({v, w});
  }
  double median() const { return weighted_median(values); }
  double mean() const {
    double s = 0, w = 0;
    for (const auto& [v, wt] : values) s += v * wt, w += wt;
    return w > 0 ? s / w : std::nan("");
  }
  double std_dev() const {
    const double m = mean();
    double s = 0, w = 0;
    for (const auto& [v, wt] : values) s += (v - m) * (v - m) * wt, w += wt;
    return w > 0 ? std::sqrt(s / w) : std::nan("");
  }
  bool empty() const { return values.empty(); }
};

// log10 of C(n, h) p^h: a bound on the chance that at least h of n independent null tensors reach
// z, with p = exp(-z^2 / 2) (sub-Gaussian null) or p = 1 / (1 + z^2) (Cantelli, any null with
// that scale).
double log10_bound(size_t n, size_t h, double z, bool distribution_free) {
  if (h == 0) return 0;
  const double log_choose = (std::lgamma(double(n) + 1) - std::lgamma(double(h) + 1) - std::lgamma(double(n - h) + 1)) /
                            std::log(10.0);
  const double log_p = distribution_free ? -std::log10(1 + z * z) : -z * z / (2 * std::log(10.0));
  return std::min(0.0, log_choose + double(h) * log_p);
}

std::string torch_dtype_of(const Model& model) {
  std::map<DType, uint64_t> bytes;
  for (const auto& t : model.tensors()) bytes[t.info->dtype] += t.info->nbytes();
  DType best = DType::F32;
  uint64_t most = 0;
  for (const auto& [d, b] : bytes) {
    if (b > most) most = b, best = d;
  }
  return dtype_torch_name(best);
}

class Verdict {
 public:
  Verdict(AssayResult* r, const Model& suspect, const std::vector<const Model*>& models, const AssayOptions& o)
      : r_(*r), suspect_(suspect), models_(models), options_(o), k_(int(models.size())) {}

  void run() {
    aggregate_candidates();
    aggregate_components();
    r_.evidence = {{"notes", nlohmann::json::array()}};
    if (fitted_numel_ == 0 || try_stacking()) {
      if (fitted_numel_ == 0 && r_.verdict.empty()) independent("no tensor of the suspect could be compared");
      return;
    }
    if (try_copy()) return;
    const int base = majority_reference();
    bool any_related = false;
    for (const auto& c : r_.candidates) any_related |= c.related;
    if (!any_related) {
      independent("no candidate correlates with the suspect beyond chance");
      return;
    }
    if (sparse_fraction() > kSparseEquality && try_sparse(base)) return;
    std::vector<int> involved;
    for (int c = 0; c < k_; ++c) {
      if (std::fabs(r_.candidates[size_t(c)].weight) >= kInvolvedWeight) involved.push_back(c);
    }
    if (involved.size() >= 2 && strong_evidence() && explains_deviation()) {
      for (int c : involved) r_.candidates[size_t(c)].involved = true;
      if (involved.size() == 2 && try_slerp(involved)) return;
      dense_merge(involved, base);
      return;
    }
    fine_tune(base);
  }

 private:
  // --- aggregation -------------------------------------------------------------------------
  void aggregate_candidates() {
    for (int c = 0; c < k_; ++c) {
      Weighted corr, weight;
      for (const auto& t : r_.tensors) {
        if (!t.fitted) continue;
        corr.add(t.correlation[size_t(c)], double(t.numel));
        weight.add(t.weights[size_t(c)], double(t.numel));
      }
      auto& out = r_.candidates[size_t(c)];
      out.correlation = corr.empty() ? 0 : corr.median();
      out.related = out.correlation > kRelated;
      out.weight = weight.empty() ? 0 : weight.mean();
      out.weight_std = weight.empty() ? 0 : weight.std_dev();
      out.density = 1;
    }
    for (const auto& t : r_.tensors) fitted_numel_ += t.fitted ? t.numel : 0;
  }

  void aggregate_components() {
    for (const auto& name : assay_component_names()) {
      ComponentAssay comp;
      comp.name = name;
      Weighted z, cos;
      std::vector<Weighted> w{size_t(k_)};
      std::vector<double> zs;
      for (const auto& t : r_.tensors) {
        if (!t.fitted || t.component != name) continue;
        ++comp.tensors;
        comp.numel += t.numel;
        z.add(t.z, double(t.numel));
        zs.push_back(t.z);
        cos.add(t.cos_fit, double(t.numel));
        for (int c = 0; c < k_; ++c) w[size_t(c)].add(t.weights[size_t(c)], double(t.numel));
      }
      if (comp.tensors == 0) continue;
      comp.z = z.median();
      comp.cos_fit_mean = cos.mean();
      comp.cos_fit_min = 1;
      for (const auto& [v, wt] : cos.values) comp.cos_fit_min = std::min(comp.cos_fit_min, v);
      for (int c = 0; c < k_; ++c) {
        comp.weight_mean.push_back(w[size_t(c)].mean());
        comp.weight_std.push_back(w[size_t(c)].std_dev());
      }
      // At least h = ceil(n/2) tensors reach the median z (unweighted count, to be safe).
      std::sort(zs.begin(), zs.end());
      const double z_half = zs[(zs.size() - 1) / 2];
      const size_t h = zs.size() - (zs.size() - 1) / 2;
      comp.log10_false_positive = log10_bound(zs.size(), h, std::max(z_half, 0.0), false);
      comp.log10_false_positive_distribution_free = log10_bound(zs.size(), h, std::max(z_half, 0.0), true);
      r_.components.push_back(comp);
    }
  }

  // Major components: z_min and the weakest bound.
  std::pair<double, double> major_evidence() const {
    double z_min = std::numeric_limits<double>::infinity(), bound = -std::numeric_limits<double>::infinity();
    for (const auto& c : r_.components) {
      if (double(c.numel) < kMajorComponent * double(fitted_numel_)) continue;
      z_min = std::min(z_min, c.z);
      bound = std::max(bound, c.log10_false_positive);
    }
    if (!std::isfinite(z_min)) z_min = 0, bound = 0;
    return {z_min, bound};
  }

  bool strong_evidence() {
    const auto [z_min, bound] = major_evidence();
    r_.evidence["z_min"] = z_min;
    r_.evidence["log10_false_positive"] = bound;
    return z_min >= kMergeZ && bound <= kMergeLog10Bound;
  }

  bool explains_deviation() {
    Weighted cos;
    for (const auto& t : r_.tensors) {
      if (t.fitted) cos.add(t.cos_fit, double(t.numel));
    }
    Weighted ancestor;
    for (const auto& t : r_.tensors) {
      if (t.fitted) ancestor.add(t.ancestor_cos, double(t.numel));
    }
    const bool has_ancestor = !ancestor.empty() && ancestor.median() < kAncestorCos;
    const double bar = has_ancestor ? kDenseMergeCosFit : kDenseMergeCosFitNoAncestor;
    const double median = cos.empty() ? 0 : cos.median();
    r_.evidence["cos_fit_median"] = median;
    r_.evidence["cos_fit_bar"] = bar;
    r_.evidence["common_ancestor_among_candidates"] = has_ancestor;
    if (median >= bar) return true;
    note("the candidates explain only cos_fit " + std::to_string(median) + " of the suspect's deviation (bar " +
         std::to_string(bar) + "): siblings of a common ancestor fit each other that well");
    return false;
  }

  int majority_reference() const {
    std::vector<double> votes(size_t(k_), 0.0);
    for (const auto& t : r_.tensors) {
      if (t.fitted && t.reference >= 0) votes[size_t(t.reference)] += double(t.numel);
    }
    return int(std::max_element(votes.begin(), votes.end()) - votes.begin());
  }

  double sparse_fraction() const {
    Weighted f;
    for (const auto& t : r_.tensors) {
      if (!t.fitted || t.numel < 4096) continue;
      double e = t.equal_reference;
      for (double x : t.equal_candidate) e += x;
      f.add(e, double(t.numel));
    }
    return f.empty() ? 0 : f.mean();
  }

  // --- outcomes ----------------------------------------------------------------------------
  void note(const std::string& text) { r_.evidence["notes"].push_back(text); }

  void independent(const std::string& why) {
    r_.verdict = "independent";
    r_.method.clear();
    r_.base.reset();
    r_.recipe = nlohmann::json::object();
    double best = 0;
    for (const auto& c : r_.candidates) best = std::max(best, c.correlation);
    r_.evidence["summary"] = why;
    r_.evidence["max_correlation"] = best;
  }

  void fine_tune(int base) {
    const auto& c = r_.candidates[size_t(base)];
    if (!c.related) {
      independent("no candidate correlates with the suspect beyond chance");
      return;
    }
    r_.verdict = "fine-tune";
    r_.base = base;
    r_.candidates[size_t(base)].involved = true;
    r_.recipe = nlohmann::json::object();
    const auto [z_min, bound] = major_evidence();
    Weighted deviation;
    for (const auto& t : r_.tensors) {
      if (t.fitted) deviation.add(t.deviation, double(t.numel));
    }
    r_.evidence["summary"] = "derived from " + c.path + " (median correlation " + std::to_string(c.correlation) +
                             ", relative deviation " + std::to_string(deviation.median()) +
                             "); its deviation is not explained by the other candidates (z_min " +
                             std::to_string(z_min) + " < " + std::to_string(kMergeZ) + ")";
    r_.evidence["z_min"] = z_min;
    r_.evidence["log10_false_positive"] = bound;
    r_.evidence["deviation"] = deviation.median();
    record_unexplained();
  }

  bool try_copy() {
    std::vector<uint64_t> exact(size_t(k_), 0);
    for (const auto& t : r_.tensors) {
      if (t.fitted && t.copy_of >= 0) exact[size_t(t.copy_of)] += t.numel;
    }
    const int copied = int(std::max_element(exact.begin(), exact.end()) - exact.begin());
    const bool bit_exact = exact[size_t(copied)] == fitted_numel_;
    const int ref = bit_exact ? copied : majority_reference();
    Weighted deviation;
    for (const auto& t : r_.tensors) {
      if (t.fitted) deviation.add(t.deviation, double(t.numel));
    }
    if (!bit_exact && !(deviation.median() <= kCopyDeviation && r_.candidates[size_t(ref)].related)) return false;
    r_.verdict = "copy";
    r_.base = ref;
    r_.candidates[size_t(ref)].involved = true;
    r_.recipe = nlohmann::json::object();
    r_.evidence["summary"] = bit_exact ? "every compared tensor is bit-identical to " + r_.candidates[size_t(ref)].path
                                       : "every tensor equals " + r_.candidates[size_t(ref)].path +
                                             " up to rounding (median relative deviation " +
                                             std::to_string(deviation.median()) + ")";
    r_.evidence["deviation"] = deviation.median();
    return true;
  }

  bool try_stacking() {
    const int layers = count_layers(suspect_);
    bool names_differ = true;
    for (const Model* m : models_) names_differ &= count_layers(*m) != layers;
    uint64_t copies = 0;
    std::vector<int> sources;
    for (const auto& t : r_.tensors) {
      if (t.fitted && t.copy_of >= 0) {
        copies += t.numel;
        if (std::find(sources.begin(), sources.end(), t.copy_of) == sources.end()) sources.push_back(t.copy_of);
      }
    }
    const bool mixed_copies = fitted_numel_ > 0 && copies == fitted_numel_ && sources.size() >= 2;
    if (!names_differ && !mixed_copies) return false;
    nlohmann::json layer_map;
    const nlohmann::json slices = detect_layer_stacking(suspect_, models_, options_.candidates, &layer_map);
    if (slices.is_null()) {
      if (names_differ) note("the suspect's layer count differs from every candidate's and its layers are not copies");
      return false;
    }
    r_.verdict = "merge";
    r_.method = "passthrough";
    r_.base.reset();
    std::vector<std::string> used;
    for (const auto& s : slices) used.push_back(s["sources"][0]["model"]);
    for (auto& c : r_.candidates) c.involved = std::find(used.begin(), used.end(), c.path) != used.end();
    r_.recipe = {{"merge_method", "passthrough"}, {"slices", slices}, {"dtype", torch_dtype_of(suspect_)}};
    r_.evidence["layer_map"] = layer_map;
    r_.evidence["summary"] = "every decoder layer is a bit-identical copy of a candidate layer (" +
                             std::to_string(slices.size()) + " slices)";
    r_.evidence["z_min"] = nullptr;
    r_.evidence["log10_false_positive"] = nullptr;  // exact 64-bit fingerprints: chance ~2^-64 per layer
    confirm_by_rebuild({r_.recipe});
    return true;
  }

  bool try_sparse(int base) {
    // Which candidates contribute, and how: TIES (kept by magnitude) or DARE (kept at random).
    std::vector<int> others;
    const size_t k = size_t(k_);
    std::vector<Weighted> density{k}, solo{k}, step{k}, scale{k}, ratio{k};
    for (const auto& t : r_.tensors) {
      if (!t.fitted || t.reference != base || t.solo_density.empty()) continue;
      for (int c = 0; c < k_; ++c) {
        const double w = double(t.numel);
        density[size_t(c)].add(t.density[size_t(c)], w);
        solo[size_t(c)].add(t.solo_density[size_t(c)], w);
        step[size_t(c)].add(t.magnitude_step[size_t(c)], w);
        scale[size_t(c)].add(t.kept_scale[size_t(c)], w);
        ratio[size_t(c)].add(t.ratio_weight[size_t(c)], w);
      }
    }
    Weighted all_steps;
    for (int c = 0; c < k_; ++c) {
      if (c == base || density[size_t(c)].empty()) continue;
      if (solo[size_t(c)].median() >= 0.02) {
        others.push_back(c);
        for (const auto& v : step[size_t(c)].values) all_steps.add(v.first, v.second);
      }
    }
    if (others.empty() || !strong_evidence()) return false;
    const bool ties = all_steps.median() > kTiesMagnitudeStep;
    r_.verdict = "merge";
    r_.method = ties ? "ties" : "dare_ties";
    r_.base = base;
    r_.candidates[size_t(base)].involved = true;
    const std::string dtype = torch_dtype_of(suspect_);
    std::vector<nlohmann::json> hypotheses;
    {
      nlohmann::json models = nlohmann::json::array();
      for (int c : others) {
        double d = ties ? density[size_t(c)].median() : solo[size_t(c)].median();
        d = std::clamp(d, 0.01, 1.0);
        double w = 1.0;
        if (ties) {
          w = others.size() >= 2 ? ratio[size_t(c)].median() : 1.0;
        } else {
          w = scale[size_t(c)].median() * d;
        }
        models.push_back({{"model", r_.candidates[size_t(c)].path},
                          {"parameters", {{"weight", round_digits(w, 4)}, {"density", round_digits(d, 4)}}}});
      }
      hypotheses.push_back({{"merge_method", r_.method}, {"base_model", r_.candidates[size_t(base)].path},
                            {"models", models}, {"dtype", dtype}});
    }
    for (int c : others) {
      auto& cand = r_.candidates[size_t(c)];
      cand.involved = true;
      cand.density = ties ? density[size_t(c)].median() : solo[size_t(c)].median();
    }
    note(std::string(ties ? "TIES" : "DARE") + " signature: " + std::to_string(sparse_fraction()) +
         " of resolved elements equal the base or one parent exactly; the kept entries are " +
         (ties ? "the largest-magnitude deltas (magnitude step " : "independent of magnitude (magnitude step ") +
         std::to_string(all_steps.median()) + ")");
    r_.recipe = hypotheses.front();
    confirm_by_rebuild(hypotheses);
    summarise_merge();
    return true;
  }

  bool try_slerp(const std::vector<int>& involved) {
    int agree = 0, lerp = 0, significant = 0;
    std::vector<ParameterSample> t_samples;
    std::map<int, double> base_votes;
    for (const auto& t : r_.tensors) {
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
    for (const auto& [c, v] : base_votes) {
      if (v > base_votes[a]) a = c;
    }
    const int b = a == involved[0] ? involved[1] : involved[0];
    for (const auto& t : r_.tensors) {
      if (!t.fitted) continue;
      double tv = t.slerp_t;
      if (t.parent_a == b && t.parent_b == a) tv = 1 - tv;
      else if (t.parent_a != a || t.parent_b != b) continue;
      t_samples.push_back({t.name, t.layer, t.numel, tv});
    }
    r_.verdict = "merge";
    r_.method = "slerp";
    r_.base = a;
    const nlohmann::json t_profile = encode_profile(t_samples, count_layers(suspect_), 0.005, 4);
    r_.recipe = {{"merge_method", "slerp"},
                 {"base_model", r_.candidates[size_t(a)].path},
                 {"models", {{{"model", r_.candidates[size_t(a)].path}}, {{"model", r_.candidates[size_t(b)].path}}}},
                 {"parameters", {{"t", t_profile}}},
                 {"dtype", torch_dtype_of(suspect_)}};
    note("slerp: on " + std::to_string(agree) + " of " + std::to_string(significant) +
         " tensors where slerp and lerp differ measurably, the coefficients sum to 1 + the slerp excess");
    confirm_by_rebuild({r_.recipe});
    summarise_merge();
    return true;
  }

  void dense_merge(const std::vector<int>& involved, int base) {
    r_.verdict = "merge";
    const int layers = count_layers(suspect_);
    const auto profile = [&](int c) {
      std::vector<ParameterSample> samples;
      for (const auto& t : r_.tensors) {
        if (t.fitted) samples.push_back({t.name, t.layer, t.numel, t.weights[size_t(c)]});
      }
      return encode_profile(samples, layers, 0.005, 4);
    };
    const std::string dtype = torch_dtype_of(suspect_);
    nlohmann::json linear_models = nlohmann::json::array();
    for (int c : involved) linear_models.push_back({{"model", r_.candidates[size_t(c)].path}, {"parameters", {{"weight", profile(c)}}}});
    const nlohmann::json linear = {{"merge_method", "linear"}, {"models", linear_models}, {"dtype", dtype}};
    const bool base_involved = std::find(involved.begin(), involved.end(), base) != involved.end();
    std::vector<nlohmann::json> hypotheses;
    if (base_involved) {
      nlohmann::json ta_models = nlohmann::json::array();
      for (int c : involved) {
        if (c != base) ta_models.push_back({{"model", r_.candidates[size_t(c)].path}, {"parameters", {{"weight", profile(c)}}}});
      }
      const nlohmann::json task = {{"merge_method", "task_arithmetic"},
                                   {"base_model", r_.candidates[size_t(base)].path},
                                   {"models", ta_models},
                                   {"dtype", dtype}};
      // Negative base weight: an extrapolation, which task arithmetic is the natural reading of.
      if (r_.candidates[size_t(base)].weight < -kInvolvedWeight) hypotheses = {task, linear};
      else hypotheses = {linear, task};
    } else {
      hypotheses = {linear};
    }
    r_.recipe = hypotheses.front();
    confirm_by_rebuild(hypotheses);
    r_.method = r_.recipe["merge_method"];
    if (r_.method == "task_arithmetic") r_.base = base;
    summarise_merge();
  }

  // |S - fit| / |C_ref|: what the recipe leaves unexplained, relative to the weights; at rounding
  // level (~0.001 in bf16) for a clean merge, larger after added noise or further training.
  void record_unexplained() {
    Weighted level;
    for (const auto& t : r_.tensors) {
      if (t.fitted) level.add(t.residual * t.deviation, double(t.numel));
    }
    if (!level.empty()) r_.evidence["unexplained_level"] = level.median();
  }

  void summarise_merge() {
    record_unexplained();
    std::string text = r_.method + " merge of";
    for (const auto& c : r_.candidates) {
      if (c.involved) text += " " + c.path + " (weight " + std::to_string(c.weight) + ")";
    }
    const auto [z_min, bound] = major_evidence();
    r_.evidence["z_min"] = z_min;
    r_.evidence["log10_false_positive"] = bound;
    text += "; every major component fits with z >= " + std::to_string(z_min);
    r_.evidence["summary"] = text;
  }

  // --- the rebuild check ---------------------------------------------------------------------
  std::vector<std::string> rebuild_sample() const {
    // The largest fitted tensor of each component, then the largest others, each at most 2^20
    // elements so that trying several hypotheses stays cheap whatever the model size.
    std::vector<const TensorAssay*> fitted;
    for (const auto& t : r_.tensors) {
      if (t.fitted && !t.aligned && t.numel <= (uint64_t(1) << 20)) fitted.push_back(&t);
    }
    std::stable_sort(fitted.begin(), fitted.end(), [](auto* a, auto* b) { return a->numel > b->numel; });
    std::vector<std::string> names, seen;
    for (const auto* t : fitted) {
      if (std::find(seen.begin(), seen.end(), t->component) != seen.end()) continue;
      seen.push_back(t->component);
      names.push_back(t->name);
    }
    for (const auto* t : fitted) {
      if (int(names.size()) >= options_.rebuild_check_tensors) break;
      if (std::find(names.begin(), names.end(), t->name) == names.end()) names.push_back(t->name);
    }
    if (int(names.size()) > options_.rebuild_check_tensors) names.resize(size_t(options_.rebuild_check_tensors));
    return names;
  }

  // Every number under a "parameters" key rounded to `digits` decimals.
  static nlohmann::json snapped(nlohmann::json j, int digits, bool inside = false) {
    if (j.is_number_float() && inside) return round_digits(j.get<double>(), digits);
    if (j.is_object()) {
      for (auto& [key, value] : j.items()) value = snapped(value, digits, inside || key == "parameters");
    } else if (j.is_array()) {
      for (auto& value : j) value = snapped(value, digits, inside);
    }
    return j;
  }

  // Tries each hypothesis with its parameters as measured and rounded to 3, 2 and 1 decimals (people
  // write round numbers; in a half-precision compute dtype nearby values are the same number), and
  // float32 compute for half-precision suspects. Keeps the recipe that rebuilds the most elements
  // exactly, preferring the rounder one on a tie, then the smallest error; records the check.
  void confirm_by_rebuild(const std::vector<nlohmann::json>& hypotheses) {
    if (options_.rebuild_check_tensors <= 0) return;
    const auto names = rebuild_sample();
    nlohmann::json best_check, best_recipe;
    const std::string out_dtype = torch_dtype_of(suspect_);
    std::vector<nlohmann::json> rounded;
    for (const auto& h : hypotheses) {
      for (int digits : {1, 2, 3}) rounded.push_back(snapped(h, digits));
      rounded.push_back(h);
    }
    for (const auto& h : rounded) {
      std::vector<nlohmann::json> variants = {h};
      if (out_dtype != "float32") {
        nlohmann::json f32 = h;
        f32["dtype"] = "float32";
        f32["out_dtype"] = out_dtype;
        variants.push_back(f32);
      }
      for (const auto& v : variants) {
        nlohmann::json check;
        try {
          check = rebuild_check(v, suspect_, names);
        } catch (const std::exception& e) {
          note(std::string("rebuild check of a hypothesis failed: ") + e.what());
          continue;
        }
        if (!check.contains("exact_fraction")) continue;
        // Strictly better only: earlier (rounder, first-listed) hypotheses win ties.
        const double exact = check["exact_fraction"].get<double>();
        const double best_exact = best_check.is_null() ? -1.0 : best_check["exact_fraction"].get<double>();
        const bool better = best_check.is_null() || exact > best_exact + 1e-12 ||
                            (std::fabs(exact - best_exact) <= 1e-12 && exact < 1.0 &&
                             check["relative_error"].get<double>() < 0.999 * best_check["relative_error"].get<double>());
        if (better) best_check = check, best_recipe = v;
      }
    }
    if (best_check.is_null()) return;
    r_.recipe = best_recipe;
    best_check["merge_method"] = best_recipe["merge_method"];
    best_check["compute_dtype"] = best_recipe["dtype"];
    if (r_.method == "dare_ties") best_check["note"] = "DARE masks are random: only the error is meaningful";
    r_.evidence["rebuild"] = best_check;
  }

  static double round_digits(double v, int digits) {
    const double s = std::pow(10.0, digits);
    return std::round(v * s) / s;
  }

  AssayResult& r_;
  const Model& suspect_;
  const std::vector<const Model*>& models_;
  const AssayOptions& options_;
  int k_;
  uint64_t fitted_numel_ = 0;
};

}  // namespace

void decide_verdict(AssayResult* result, const Model& suspect, const std::vector<const Model*>& candidates,
                    const AssayOptions& options) {
  Verdict(result, suspect, candidates, options).run();
}

}  // namespace alloy::detail
