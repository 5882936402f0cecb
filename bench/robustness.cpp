// robustness: how far each hide-the-merge transform (alloy/perturb/perturb.h) can go before alloy-assay
// stops seeing the merge, and whether any transform makes a non-merge look like one.
//
// Sweep: for each family (dense kLlama, MoE kMoe), parent delta size (||ft - base|| / ||base|| =
// 0.5%, 1%, 2%, 5%, 10%) and seed, a synthetic family (base, ft_1..ft_3, unrelated_1) is generated, ft_1 and
// ft_2 are merged linearly 0.571 / 0.429 (bf16, through the library exactly as alloy-merge), the
// merge is transformed at each strength of the table below, and the assay runs against the
// candidates base, ft_1, ft_2, unrelated_1. Null: every transform at its strongest setting applied to
// models that are not merges (a base of another seed with the same architecture, and the sibling
// fine-tune ft_3), several seeds: any "merge" verdict is a false positive.
//
// A row of the table is a chain of perturb steps applied in order (each one perturb_model call): a single
// kind, or composites such as fold-norms + a permutation, noise + permute-neurons + int4, finetune +
// every permutation. Null subjects: an unrelated base, the sibling ft_3, and ft_3 of a family of
// correlated siblings (--sibling-correlation 0.8), each sibling with and without the base among the
// candidates.
//
// Outputs (OUT, default bench-out/robustness): robustness.csv (one row per sweep point), null.csv,
// one SVG per transform (alpha error, cos_fit, verdict accuracy and z_min versus strength, per family
// and delta), summary.md (the tables docs/robustness.md shows). bench/robustness.sh builds and runs it.
//
// Usage: robustness [--out DIR] [--seeds N] [--null-seeds N | --null-runs N] [--only T1,T2,...] [--jobs N]
//                   [--layers N] [--hidden N] [--quick]
//   defaults: 5 seeds per sweep point, 20 null seeds per family, 4 layers of hidden 128; --quick is
//   1 seed and 2 null seeds (a smoke test). --null-runs N: as many null seeds as give at least N null
//   runs. --only: these rows (and "none"). --seeds 0: the null only. --limit: noise-deviation up to
//   128x and finetune up to 0.4 only, for the detection limit (bench/detection_limit.py).
//   --jobs N runs N points at once (each single-threaded; default: the number of cores). Results do
//   not depend on it: every point is a function of its seeds only.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/error.h"
#include "alloy/merge/merge.h"
#include "alloy/core/model.h"
#include "alloy/core/parallel.h"
#include "alloy/perturb/perturb.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"

namespace {

namespace fs = std::filesystem;
using alloy::ModelFamily;
using alloy::PerturbKind;
using alloy::ReroundFormat;
using alloy::ResidualRotation;

constexpr double kW1 = 0.571, kW2 = 0.429;
const double kDeltas[] = {0.005, 0.01, 0.02, 0.05, 0.1};
constexpr int kDeltaCount = int(std::size(kDeltas));

// ---------------------------------------------------------------------------------------------
// The transform table. Adding a transform: one entry here (and its kind in alloy/perturb/perturb.h).

struct Setting {
  std::string label;                 // as written in the CSV "strength" column and on the x axis
  std::optional<double> strength;    // PerturbOptions::strength of the chain's swept step
  ReroundFormat format = ReroundFormat::kInt8;
  std::vector<int> layer_map;
  ResidualRotation rotation = ResidualRotation::kRandom;
};

// One perturb_model call of a chain. A swept step takes the row's Setting (strength, format, layer
// map, rotation); the others use their own fields.
struct Step {
  PerturbKind kind = PerturbKind::kNoise;
  bool swept = false;
  bool relative_to_base = false;    // noise sized by ||W - base||
  bool moe_only = false;            // skipped on dense models (permute-experts inside a chain)
  std::optional<double> strength;
  ReroundFormat format = ReroundFormat::kInt8;
};

// How big the row's disguise is, relative to the merge's own deviation from its base (0.714 delta
// ||W||): what the acceptance's "at most 4x the merge's deviation" is measured on.
enum class Scope {
  kAlways,      // function-preserving, a re-rounding, stacking: always inside the acceptance
  kDeviation,   // strength is already a multiple of ||merge - base||
  kNorm,        // strength is relative to ||W||: divided by 0.714 delta
};

struct Transform {
  std::string name;                  // CSV "transform"
  std::vector<Step> steps;           // applied in order, each one perturb_model call; empty: "none"
  bool moe_only = false;
  bool numeric = true;               // settings are numbers (log x axis) rather than categories
  Scope scope = Scope::kAlways;
  std::string what;                  // one line for the plot title
  std::vector<Setting> settings;     // weakest first; the null uses the last
};

Setting once() {
  Setting s;
  s.label = "-";
  return s;
}
Setting num(double strength) {
  std::ostringstream o;
  o << strength;
  Setting s;
  s.label = o.str();
  s.strength = strength;
  return s;
}
Setting fmt(const char* label, ReroundFormat f) {
  Setting s;
  s.label = label;
  s.format = f;
  return s;
}
Setting map(const std::string& label) {
  Setting s;
  s.label = label;  // "0 1 1 2": no commas in the CSV
  std::replace(s.label.begin(), s.label.end(), ',', ' ');
  s.layer_map = alloy::parse_layer_map(label);
  return s;
}
Setting rot(ResidualRotation r) {
  Setting s;
  s.label = alloy::residual_rotation_name(r);
  s.rotation = r;
  return s;
}
Step fixed_step(PerturbKind kind) {
  Step s;
  s.kind = kind;
  return s;
}
Step swept(PerturbKind kind, bool relative_to_base = false) {
  Step s = fixed_step(kind);
  s.swept = true;
  s.relative_to_base = relative_to_base;
  return s;
}
Step int4() {
  Step s = fixed_step(PerturbKind::kReround);
  s.format = ReroundFormat::kInt4;
  return s;
}
Step experts_if_moe() {
  Step s = fixed_step(PerturbKind::kPermuteExperts);
  s.moe_only = true;
  return s;
}

bool is_permutation(PerturbKind k) {
  return k == PerturbKind::kPermuteExperts || k == PerturbKind::kPermuteNeurons || k == PerturbKind::kPermuteHeads;
}

std::vector<Transform> transforms(int layers) {
  using K = PerturbKind;
  std::vector<Transform> t;
  const auto add = [&](std::string name, std::vector<Step> steps, bool moe_only, bool numeric, Scope scope,
                       std::string what, std::vector<Setting> settings) {
    t.push_back({std::move(name), std::move(steps), moe_only, numeric, scope, std::move(what), std::move(settings)});
  };
  add("none", {}, false, false, Scope::kAlways, "the merge as written", {once()});
  add("noise-deviation", {swept(K::kNoise, true)}, false, true, Scope::kDeviation,
      "Gaussian noise, ||N|| = strength x ||merge - base|| per tensor", {num(0.25), num(0.5), num(1), num(2), num(4)});
  add("noise-rms", {swept(K::kNoise)}, false, true, Scope::kNorm, "Gaussian noise, element std = strength x RMS(W)",
      {num(0.01), num(0.03), num(0.1)});
  add("reround", {swept(K::kReround)}, false, false, Scope::kAlways, "quantization round trip back to bf16",
      {fmt("bf16", ReroundFormat::kBf16), fmt("f16", ReroundFormat::kF16), fmt("int8", ReroundFormat::kInt8),
       fmt("int4", ReroundFormat::kInt4)});
  add("finetune", {swept(K::kFineTune)}, false, true, Scope::kNorm,
      "further fine-tune, ||delta|| = strength x ||W|| per tensor", {num(0.01), num(0.025), num(0.05), num(0.1)});
  add("permute-experts", {swept(K::kPermuteExperts)}, true, false, Scope::kAlways, "routed experts permuted per layer",
      {once()});
  add("permute-neurons", {swept(K::kPermuteNeurons)}, false, false, Scope::kAlways,
      "MLP neurons permuted per layer (dense, every expert, shared expert)", {once()});
  add("permute-heads", {swept(K::kPermuteHeads)}, false, false, Scope::kAlways,
      "kv groups and query heads within them permuted per layer", {once()});
  add("rescale-neurons", {swept(K::kRescaleNeurons)}, false, true, Scope::kAlways,
      "up row x c, down column / c, c = strength^u, u in [-1, 1]", {num(1.5), num(2), num(4)});
  add("fold-norms", {swept(K::kFoldNorms)}, false, false, Scope::kAlways, "RMSNorm gains folded into the next weights",
      {once()});
  add("rotate-residual", {swept(K::kRotateResidual)}, false, false, Scope::kAlways,
      "fold-norms, then an orthogonal Q on the residual stream", {rot(ResidualRotation::kRandom),
                                                                  rot(ResidualRotation::kHadamard)});
  // Composites: each step one perturb_model call, in order.
  add("fold-norms+permute-neurons", {fixed_step(K::kFoldNorms), fixed_step(K::kPermuteNeurons)}, false, false,
      Scope::kAlways, "fold-norms, then MLP neurons permuted", {once()});
  add("fold-norms+permute-heads", {fixed_step(K::kFoldNorms), fixed_step(K::kPermuteHeads)}, false, false,
      Scope::kAlways, "fold-norms, then heads permuted", {once()});
  add("fold-norms+permute-experts", {fixed_step(K::kFoldNorms), fixed_step(K::kPermuteExperts)}, true, false,
      Scope::kAlways, "fold-norms, then routed experts permuted", {once()});
  add("noise+permute-neurons+int4", {swept(K::kNoise, true), fixed_step(K::kPermuteNeurons), int4()}, false, true,
      Scope::kDeviation, "noise (x ||merge - base||), then neurons permuted, then an int4 round trip",
      {num(1), num(2), num(4)});
  add("finetune+permutations",
      {swept(K::kFineTune), fixed_step(K::kPermuteNeurons), fixed_step(K::kPermuteHeads), experts_if_moe()}, false,
      true, Scope::kNorm, "further fine-tune (x ||W||), then neurons, heads and experts (MoE) permuted",
      {num(0.01), num(0.025), num(0.05), num(0.1)});
  // Stacking maps for a model of `layers` layers: duplicate the last layer, duplicate every layer,
  // reverse the order.
  std::string dup_last, dup_all, reversed;
  for (int l = 0; l < layers; ++l) {
    dup_last += std::to_string(l) + ",";
    dup_all += std::to_string(l) + "," + std::to_string(l) + ",";
    reversed += std::to_string(layers - 1 - l) + ",";
  }
  dup_last += std::to_string(layers - 1);
  dup_all.pop_back();
  reversed.pop_back();
  add("stack-layers", {swept(K::kStackLayers)}, false, false, Scope::kAlways, "frankenmerge stacking with a layer map",
      {map(dup_last), map(dup_all), map(reversed)});
  return t;
}

// --limit: the rows whose accuracy falls to 0.5 within the range, for bench/detection_limit.py. Noise
// relative to the merge's deviation up to 128x, further fine-tuning up to 40% of ||W||.
std::vector<Transform> limit_transforms() {
  using K = PerturbKind;
  std::vector<Transform> t;
  t.push_back({"none", {}, false, false, Scope::kAlways, "the merge as written", {once()}});
  t.push_back({"noise-deviation", {swept(K::kNoise, true)}, false, true, Scope::kDeviation,
               "Gaussian noise, ||N|| = strength x ||merge - base|| per tensor",
               {num(2), num(4), num(8), num(16), num(32), num(64), num(128)}});
  t.push_back({"finetune", {swept(K::kFineTune)}, false, true, Scope::kNorm,
               "further fine-tune, ||delta|| = strength x ||W|| per tensor",
               {num(0.01), num(0.025), num(0.05), num(0.1), num(0.2), num(0.4)}});
  return t;
}

// The disguise of (transform, setting) as a multiple of a merge's deviation at parent delta d
// (0.714 d ||W||); NaN for kAlways.
double disguise_ratio(const Transform& t, const Setting& s, double delta) {
  const double deviation = std::sqrt(kW1 * kW1 + kW2 * kW2) * delta;
  if (t.scope == Scope::kDeviation) return s.strength.value_or(NAN);
  if (t.scope == Scope::kNorm) return s.strength.value_or(NAN) / deviation;
  return NAN;
}

// ---------------------------------------------------------------------------------------------
// Models.

struct Config {
  fs::path out = "bench-out/robustness";
  int seeds = 5;
  int null_seeds = 20;
  int jobs = 0;
  int layers = 4;
  int hidden = 128;
  int null_runs = 0;                // > 0: at least this many null runs (sets null_seeds)
  std::vector<std::string> only;    // non-empty: these transforms only ("none" is always kept)
  bool limit = false;               // --limit: the detection-limit table (limit_transforms)
};

alloy::BaseModelOptions base_options(ModelFamily family, const Config& c, uint64_t seed) {
  alloy::BaseModelOptions base;
  base.arch.family = family;
  base.arch.layers = c.layers;
  base.arch.hidden = c.hidden;
  base.arch.heads = 4;
  base.arch.kv_heads = 2;
  base.arch.intermediate = 2 * c.hidden;
  base.arch.experts = 4;
  base.arch.moe_intermediate = c.hidden;
  base.arch.vocab = 256;
  base.seed = seed;
  return base;
}

// A family directory: base, ft_1..ft_3, unrelated_1, and (sweep) the merge.
struct Unit {
  ModelFamily family;
  double delta;
  int seed;
  bool null;
  fs::path dir;
  std::vector<std::string> candidates() const {
    return {(dir / "base").string(), (dir / "ft_1").string(), (dir / "ft_2").string(), (dir / "unrelated_1").string()};
  }
};

// The null's subjects: models that are not merges, each with the candidates it is assayed against.
// "correlated" siblings come from a family whose fine-tunes share part of their deltas' direction
// (alloy-synth --sibling-correlation 0.8: a cosine that changes from tensor to tensor, up to 0.8);
// "no base": the siblings' common ancestor is not among the candidates.
const char* const kNullSubjects[] = {"unrelated", "sibling", "sibling-no-base", "correlated-sibling",
                                     "correlated-sibling-no-base"};
constexpr double kSiblingCorrelation = 0.8;

struct Subject {
  fs::path model, base;  // the model assayed; the family's base (noise relative to it)
  std::vector<std::string> candidates;
};

Subject subject_of(const Unit& u, const std::string& subject) {
  if (subject == "merge") return {u.dir / "merged", u.dir / "base", u.candidates()};
  if (subject == "unrelated") return {u.dir / "other", u.dir / "base", u.candidates()};
  const bool correlated = subject.rfind("correlated", 0) == 0;
  const fs::path family = correlated ? u.dir / "correlated" : u.dir;
  const bool no_base = subject.find("no-base") != std::string::npos;
  std::vector<std::string> candidates;
  for (const char* member : {"base", "ft_1", "ft_2", "unrelated_1"}) {
    if (!(no_base && std::string(member) == "base")) candidates.push_back((family / member).string());
  }
  return {family / "ft_3", family / "base", candidates};
}

void build_unit(const Unit& u, const Config& c) {
  // Distinct base seeds for every unit (sweep and null never share a family).
  const uint64_t seed = (u.null ? 50000 : 10000) + 1000 * uint64_t(u.family == ModelFamily::kMoe) +
                        100 * uint64_t(std::find(std::begin(kDeltas), std::end(kDeltas), u.delta) - std::begin(kDeltas)) +
                        uint64_t(u.seed);
  alloy::FineTuneOptions ft;
  ft.relative_delta = u.delta;
  alloy::synth_family(u.dir, base_options(u.family, c, seed), 3, 1, ft);
  if (u.null) {
    // The null's unrelated subject: same architecture, a seed no candidate uses.
    alloy::synth_base_model(u.dir / "other", base_options(u.family, c, seed + 900000));
    alloy::FineTuneOptions correlated = ft;
    correlated.sibling_correlation = kSiblingCorrelation;
    alloy::synth_family(u.dir / "correlated", base_options(u.family, c, seed + 800000), 3, 1, correlated);
    return;
  }
  std::ostringstream yaml;
  yaml << "merge_method: linear\nmodels:\n  - model: " << (u.dir / "ft_1").string() << "\n    parameters: {weight: "
       << kW1 << "}\n  - model: " << (u.dir / "ft_2").string() << "\n    parameters: {weight: " << kW2
       << "}\ndtype: bfloat16\n";
  alloy::MergePlan plan = alloy::plan_merge(alloy::parse_recipe(yaml.str(), "robustness recipe"), alloy::PlanOptions{});
  alloy::MergeOptions options;
  options.out_dir = u.dir / "merged";
  options.overwrite = true;
  options.hash_inputs = false;
  options.hash_outputs = false;
  options.write_model_card = false;
  alloy::run_merge(plan, options);
}

// ---------------------------------------------------------------------------------------------
// Points.

struct Result {
  // inputs
  const Unit* unit = nullptr;
  size_t transform = 0, setting = 0;
  std::string subject;  // "merge" (sweep) or one of kNullSubjects
  uint64_t seed = 0;
  // outputs
  std::string verdict, method, error;
  double w1 = NAN, w2 = NAN, alpha_error = NAN, cos_fit = NAN, z_min = NAN;
  std::string permutation_exact;  // "true" / "false" where the chain permutes, else ""
  bool rotation_found = false;    // the assay reported a "rotation" entry
  size_t permutations_found = 0;
  double seconds = 0;
};

bool identity(const nlohmann::json& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != i) return false;
  }
  return true;
}

// Whether the assay reported exactly the ground truth's non-identity permutations (the matching of
// tests/assay/test_assay_robust.cpp).
// With several permutation steps in a chain, each is scored on the reported entries of its own kind
// ("experts", "neurons", "heads"); other reported kinds (rotation, neuron scales) are not counted.
const char* reported_kind(PerturbKind kind) {
  return kind == PerturbKind::kPermuteExperts ? "experts" : kind == PerturbKind::kPermuteHeads ? "heads" : "neurons";
}
bool permutation_exact(PerturbKind kind, const nlohmann::json& truth, const nlohmann::json& reported) {
  nlohmann::json found_all = nlohmann::json::array();
  for (const auto& p : reported) {
    if (p.is_object() && p.value("kind", "") == reported_kind(kind)) found_all.push_back(p);
  }
  // The reported entry for (layer, kind, unit); an empty object when none.
  const auto found = [&](int layer, const std::string& kind_name, const std::string& unit) {
    for (const auto& p : found_all) {
      if (p.value("layer", -1) == layer && p.value("kind", "") == kind_name &&
          (unit.empty() || p.value("unit", "") == unit)) {
        return p;
      }
    }
    return nlohmann::json::object();
  };
  size_t expected = 0;
  bool ok = true;
  for (const auto& layer : truth["layers"]) {
    const int l = layer["layer"];
    if (kind == PerturbKind::kPermuteExperts) {
      if (identity(layer["experts"])) continue;
      ++expected;
      ok &= found(l, "experts", "").value("permutation", nlohmann::json()) == layer["experts"];
    } else if (kind == PerturbKind::kPermuteHeads) {
      if (identity(layer["heads"]) && identity(layer["kv_heads"])) continue;
      ++expected;
      const auto p = found(l, "heads", "");
      ok &= p.value("heads", nlohmann::json()) == layer["heads"] && p.value("kv_heads", nlohmann::json()) == layer["kv_heads"];
    } else if (layer.contains("mlp")) {
      if (identity(layer["mlp"])) continue;
      ++expected;
      ok &= found(l, "neurons", "mlp").value("permutation", nlohmann::json()) == layer["mlp"];
    } else {
      for (size_t e = 0; e < layer["experts"].size(); ++e) {
        if (identity(layer["experts"][e])) continue;
        ++expected;
        ok &= found(l, "neurons", "experts." + std::to_string(e)).value("permutation", nlohmann::json()) ==
              layer["experts"][e];
      }
      if (!identity(layer["shared_expert"])) {
        ++expected;
        ok &= found(l, "neurons", "shared_expert").value("permutation", nlohmann::json()) == layer["shared_expert"];
      }
    }
  }
  return ok && found_all.size() == expected;
}

double number_or_nan(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

void run_point(Result& r, const std::vector<Transform>& table, const fs::path& work) {
  const auto start = std::chrono::steady_clock::now();
  const Unit& u = *r.unit;
  const Transform& t = table[r.transform];
  const Setting& s = t.settings[r.setting];
  const Subject subject = subject_of(u, r.subject);
  const fs::path in = subject.model;
  fs::path suspect = in;
  // (kind, ground truth) of the chain's permutation steps
  std::vector<std::pair<PerturbKind, nlohmann::json>> truths;
  std::vector<fs::path> written;
  try {
    for (size_t k = 0; k < t.steps.size(); ++k) {
      const Step& step = t.steps[k];
      if (step.moe_only && u.family != ModelFamily::kMoe) continue;
      alloy::PerturbOptions o;
      o.kind = step.kind;
      o.strength = step.swept ? s.strength : step.strength;
      o.format = step.swept ? s.format : step.format;
      if (step.swept) o.layer_map = s.layer_map, o.rotation = s.rotation;
      // Each step its own stream: the same seed in every step would correlate their choices.
      o.seed = r.seed + 7919 * uint64_t(k);
      if (step.relative_to_base) o.reference = subject.base;
      o.output.overwrite = true;
      const fs::path out = work.string() + "." + std::to_string(k);
      nlohmann::json truth = alloy::perturb_model(suspect, out, o);
      if (is_permutation(step.kind)) truths.emplace_back(step.kind, std::move(truth));
      if (suspect != in) fs::remove_all(suspect);
      suspect = out;
      written.push_back(out);
    }
    alloy::AssayOptions a;
    a.suspect = suspect;
    a.candidates = subject.candidates;
    const alloy::AssayResult res = alloy::run_assay(a);
    r.verdict = res.verdict;
    r.method = res.method;
    for (const auto& c : res.candidates) {
      if (c.path == (u.dir / "ft_1").string()) r.w1 = c.weight;
      if (c.path == (u.dir / "ft_2").string()) r.w2 = c.weight;
    }
    r.alpha_error = (std::fabs(r.w1 - kW1) + std::fabs(r.w2 - kW2)) / 2;
    r.cos_fit = number_or_nan(res.evidence, "cos_fit_median");
    if (std::isnan(r.cos_fit)) {
      double sum = 0, n = 0;
      for (const auto& c : res.components) {
        if (c.numel == 0 || !std::isfinite(c.cos_fit_mean)) continue;
        sum += double(c.numel) * c.cos_fit_mean;
        n += double(c.numel);
      }
      if (n > 0) r.cos_fit = sum / n;
    }
    r.z_min = number_or_nan(res.evidence, "z_min");
    r.permutations_found = res.permutations.size();
    for (const auto& p : res.permutations) r.rotation_found |= p.is_object() && p.value("kind", "") == "rotation";
    if (!truths.empty()) {
      bool exact = true;
      for (const auto& [kind, truth] : truths) exact = exact && permutation_exact(kind, truth, res.permutations);
      // No permutation of a kind the chain did not apply.
      for (PerturbKind kind : {PerturbKind::kPermuteExperts, PerturbKind::kPermuteNeurons, PerturbKind::kPermuteHeads}) {
        const bool applied = std::any_of(truths.begin(), truths.end(), [&](const auto& x) { return x.first == kind; });
        if (!applied && !permutation_exact(kind, nlohmann::json{{"layers", nlohmann::json::array()}}, res.permutations)) {
          exact = false;
        }
      }
      r.permutation_exact = exact ? "true" : "false";
    }
  } catch (const std::exception& e) {
    r.verdict = "error";
    r.error = e.what();
  }
  std::error_code ec;
  for (const fs::path& w : written) fs::remove_all(w, ec);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs fn(i) for i < n on `jobs` threads.
void parallel(size_t n, int jobs, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (int j = 0; j < jobs; ++j) {
    threads.emplace_back([&] {
      for (size_t i; (i = next++) < n;) fn(i);
    });
  }
  for (auto& t : threads) t.join();
}

// ---------------------------------------------------------------------------------------------
// Aggregates.

std::string fam(ModelFamily f) { return f == ModelFamily::kMoe ? "moe" : "dense"; }
std::string pct(double d) {
  std::ostringstream o;
  o << d * 100 << "%";
  return o.str();
}
std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
std::string csv_num(double v) {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}
double mean(const std::vector<double>& v) {
  double s = 0;
  size_t n = 0;
  for (double x : v) {
    if (std::isfinite(x)) s += x, ++n;
  }
  return n ? s / double(n) : NAN;
}
double median(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Per (family, delta, transform, setting): the seeds' results.
struct Cell {
  std::vector<double> alpha, cos, z;
  int runs = 0, correct = 0;
  int permutation_runs = 0, permutation_exact = 0;  // chains with a permutation only
  int rotation_found = 0;
  double accuracy() const { return runs ? double(correct) / runs : NAN; }
};
using CellKey = std::tuple<int, int, size_t, size_t>;  // family, delta index, transform, setting

int delta_index(double d) {
  return int(std::find(std::begin(kDeltas), std::end(kDeltas), d) - std::begin(kDeltas));
}

// ---------------------------------------------------------------------------------------------
// SVG.

struct Svg {
  std::ostringstream s;
  void line(double x1, double y1, double x2, double y2, const std::string& style) {
    s << "<line x1=\"" << x1 << "\" y1=\"" << y1 << "\" x2=\"" << x2 << "\" y2=\"" << y2 << "\" " << style << "/>\n";
  }
  void text(double x, double y, const std::string& t, const std::string& style = "") {
    s << "<text x=\"" << x << "\" y=\"" << y << "\" " << style << ">" << t << "</text>\n";
  }
  void polyline(const std::vector<std::pair<double, double>>& p, const std::string& style) {
    if (p.size() < 2) return;
    s << "<polyline fill=\"none\" " << style << " points=\"";
    for (const auto& [x, y] : p) s << x << "," << y << " ";
    s << "\"/>\n";
  }
  void marker(double x, double y, int shape, const std::string& color) {
    if (shape == 0) {
      s << "<circle cx=\"" << x << "\" cy=\"" << y << "\" r=\"3.5\" fill=\"" << color << "\"/>\n";
    } else if (shape == 1) {
      s << "<rect x=\"" << x - 3.5 << "\" y=\"" << y - 3.5 << "\" width=\"7\" height=\"7\" fill=\"white\" stroke=\""
        << color << "\" stroke-width=\"1.5\"/>\n";
    } else {
      s << "<polygon points=\"" << x << "," << y - 4.5 << " " << x + 4.5 << "," << y << " " << x << "," << y + 4.5
        << " " << x - 4.5 << "," << y << "\" fill=\"" << color << "\" fill-opacity=\"0.45\" stroke=\"" << color
        << "\"/>\n";
    }
  }
};

std::string escape(const std::string& t) {
  std::string o;
  for (char c : t) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

// A "nice" upper bound and step for a linear axis from 0.
std::pair<double, double> nice_axis(double max) {
  if (!(max > 0)) max = 0.01;
  const double raw = max / 4;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * p >= raw) {
      step = m * p;
      break;
    }
  }
  return {step * std::ceil(max / step - 1e-9), step};
}

const char* kDeltaColors[kDeltaCount] = {"#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3"};

std::string tick_label(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

std::string transform_svg(const Transform& t, size_t ti, const std::map<CellKey, Cell>& cells) {
  const double W = 1020, H = 670;
  const double panel_w = 360, top_h = 250, z_h = 150;
  const double left[2] = {80, 600};
  const double top_y = 80, z_y = 390;
  Svg g;
  g.s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
      << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  g.s << "<rect width=\"" << W << "\" height=\"" << H << "\" fill=\"white\"/>\n";
  g.text(W / 2, 22, escape("robustness: " + t.name + " (" + t.what + ")"),
         "text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\"");
  g.text(W / 2, 40, "linear 0.571/0.429 merge of ft_1 and ft_2; mean over seeds; colour = parent delta",
         "text-anchor=\"middle\" fill=\"#555\"");

  // Shared left-axis scale: the largest mean alpha error of this transform.
  double amax = 0;
  double zmax = 10;
  for (const auto& [k, c] : cells) {
    if (std::get<2>(k) != ti) continue;
    const double a = mean(c.alpha);
    if (std::isfinite(a)) amax = std::max(amax, a);
    const double z = median(c.z);
    if (std::isfinite(z)) zmax = std::max(zmax, z);
  }
  const auto [ytop, ystep] = nice_axis(std::max(amax * 1.05, 0.01));
  const double zlo = 1, zhi = std::pow(10.0, std::ceil(std::log10(zmax)));

  // x: the settings (log scale when numeric); a transform with one setting is plotted against the
  // parent delta instead (log scale), as one grey series with markers coloured by delta.
  const bool by_delta = t.settings.size() == 1;
  const size_t n = by_delta ? size_t(kDeltaCount) : t.settings.size();
  std::vector<double> sx(n);
  std::vector<std::string> xlabel(n);
  const bool log_x = by_delta || t.numeric;
  for (size_t i = 0; i < n; ++i) {
    sx[i] = by_delta ? std::log(kDeltas[i]) : t.numeric ? std::log(*t.settings[i].strength) : double(i);
    xlabel[i] = by_delta ? pct(kDeltas[i]) : t.settings[i].label;
  }
  const double lo = n > 1 ? sx.front() : -1, hi = n > 1 ? sx.back() : 1;
  const auto xpos = [&](int p, size_t i) {
    const double pad = log_x ? 30 : 60;  // categorical labels can be long (layer maps)
    return left[p] + pad + (sx[i] - lo) / (hi - lo) * (panel_w - 2 * pad);
  };

  for (int p = 0; p < 2; ++p) {
    const ModelFamily f = p == 0 ? ModelFamily::kLlama : ModelFamily::kMoe;
    const double x0 = left[p], x1 = left[p] + panel_w;
    g.text((x0 + x1) / 2, top_y - 6, p == 0 ? "dense (Llama-like)" : "MoE (Qwen2-MoE-like)",
           "text-anchor=\"middle\" font-weight=\"bold\"");
    // frames
    g.s << "<rect x=\"" << x0 << "\" y=\"" << top_y << "\" width=\"" << panel_w << "\" height=\"" << top_h
        << "\" fill=\"none\" stroke=\"#333\"/>\n";
    g.s << "<rect x=\"" << x0 << "\" y=\"" << z_y << "\" width=\"" << panel_w << "\" height=\"" << z_h
        << "\" fill=\"none\" stroke=\"#333\"/>\n";
    // left axis: alpha error
    for (double v = 0; v <= ytop + 1e-12; v += ystep) {
      const double y = top_y + top_h - v / ytop * top_h;
      g.line(x0 - 4, y, x0, y, "stroke=\"#333\"");
      g.line(x0, y, x1, y, "stroke=\"#eee\"");
      g.text(x0 - 6, y + 4, tick_label(std::round(v * 1e6) / 1e6), "text-anchor=\"end\"");
    }
    g.text(x0 - 52, top_y + top_h / 2, "alpha error",
           "text-anchor=\"middle\" transform=\"rotate(-90 " + std::to_string(x0 - 52) + " " +
               std::to_string(top_y + top_h / 2) + ")\"");
    // right axis: cos_fit, accuracy in [0, 1]
    for (int k = 0; k <= 4; ++k) {
      const double v = k / 4.0, y = top_y + top_h - v * top_h;
      g.line(x1, y, x1 + 4, y, "stroke=\"#333\"");
      g.text(x1 + 6, y + 4, tick_label(v));
    }
    g.text(x1 + 38, top_y + top_h / 2, "cos_fit, accuracy",
           "text-anchor=\"middle\" transform=\"rotate(90 " + std::to_string(x1 + 38) + " " +
               std::to_string(top_y + top_h / 2) + ")\"");
    // z axis (log)
    for (double v = zlo; v <= zhi * 1.0001; v *= 10) {
      const double y = z_y + z_h - std::log10(v / zlo) / std::log10(zhi / zlo) * z_h;
      g.line(x0 - 4, y, x0, y, "stroke=\"#333\"");
      g.line(x0, y, x1, y, "stroke=\"#eee\"");
      g.text(x0 - 6, y + 4, tick_label(v), "text-anchor=\"end\"");
    }
    {
      const double y8 = z_y + z_h - std::log10(8 / zlo) / std::log10(zhi / zlo) * z_h;
      g.line(x0, y8, x1, y8, "stroke=\"#999\" stroke-dasharray=\"6,3\"");
      g.text(x1 - 4, y8 - 4, "z = 8 (merge bar)", "text-anchor=\"end\" fill=\"#777\" font-size=\"10\"");
    }
    g.text(x0 - 52, z_y + z_h / 2, "median z_min",
           "text-anchor=\"middle\" transform=\"rotate(-90 " + std::to_string(x0 - 52) + " " +
               std::to_string(z_y + z_h / 2) + ")\"");
    // x ticks
    for (size_t i = 0; i < n; ++i) {
      const double x = xpos(p, i);
      for (double yb : {top_y + top_h, z_y + z_h}) {
        g.line(x, yb, x, yb + 4, "stroke=\"#333\"");
        g.text(x, yb + 16, escape(xlabel[i]), "text-anchor=\"middle\" font-size=\"11\"");
      }
    }
    g.text((x0 + x1) / 2, z_y + z_h + 32,
           by_delta ? "parent delta (log scale)" : log_x ? "strength (log scale)" : "setting",
           "text-anchor=\"middle\"");
    if (t.moe_only && f == ModelFamily::kLlama) {
      g.text((x0 + x1) / 2, top_y + top_h / 2, "not applicable (MoE only)", "text-anchor=\"middle\" fill=\"#777\"");
      continue;
    }
    // series
    for (int series = 0; series < (by_delta ? 1 : kDeltaCount); ++series) {
      std::vector<std::pair<double, double>> pa, pc, pacc, pz;
      std::vector<std::string> ca, cc, cacc, cz;  // each point's marker colour
      for (size_t i = 0; i < n; ++i) {
        const int d = by_delta ? int(i) : series;
        auto it = cells.find({int(f), d, ti, by_delta ? 0 : i});
        if (it == cells.end()) continue;
        const std::string mc = kDeltaColors[d];
        const double x = xpos(p, i);
        const double a = mean(it->second.alpha), c = mean(it->second.cos), acc = it->second.accuracy(),
                     z = median(it->second.z);
        if (std::isfinite(a)) pa.push_back({x, top_y + top_h - std::min(a, ytop) / ytop * top_h}), ca.push_back(mc);
        if (std::isfinite(c)) pc.push_back({x, top_y + top_h - std::clamp(c, 0.0, 1.0) * top_h}), cc.push_back(mc);
        if (std::isfinite(acc)) {
          pacc.push_back({x + (by_delta ? 0 : 2.5 * (d - 2)), top_y + top_h - acc * top_h});
          cacc.push_back(mc);
        }
        if (std::isfinite(z)) {
          const double u = std::log10(std::max(z, zlo) / zlo) / std::log10(zhi / zlo);
          pz.push_back({x, z_y + z_h - std::clamp(u, 0.0, 1.0) * z_h});
          cz.push_back(mc);
        }
      }
      const std::string col = by_delta ? "#666" : kDeltaColors[series];
      g.polyline(pa, "stroke=\"" + col + "\" stroke-width=\"2\"");
      g.polyline(pc, "stroke=\"" + col + "\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"");
      g.polyline(pacc, "stroke=\"" + col + "\" stroke-width=\"1.5\" stroke-dasharray=\"1,3\"");
      g.polyline(pz, "stroke=\"" + col + "\" stroke-width=\"2\"");
      const auto marks = [&](const std::vector<std::pair<double, double>>& pts, const std::vector<std::string>& cs,
                             int shape) {
        for (size_t k = 0; k < pts.size(); ++k) g.marker(pts[k].first, pts[k].second, shape, cs[k]);
      };
      marks(pa, ca, 0);
      marks(pc, cc, 1);
      marks(pacc, cacc, 2);
      marks(pz, cz, 0);
    }
  }
  // legend
  const double ly = H - 48;
  double lx = 80;
  for (int d = 0; d < kDeltaCount; ++d) {
    g.line(lx, ly, lx + 24, ly, std::string("stroke=\"") + kDeltaColors[d] + "\" stroke-width=\"3\"");
    g.text(lx + 30, ly + 4, "parent delta " + pct(kDeltas[d]));
    lx += 170;
  }
  lx = 80;
  const double ly2 = H - 24;
  g.line(lx, ly2, lx + 24, ly2, "stroke=\"#333\" stroke-width=\"2\"");
  g.marker(lx + 12, ly2, 0, "#333");
  g.text(lx + 30, ly2 + 4, "alpha error, left axis (lower panels: z_min)");
  lx += 320;
  g.line(lx, ly2, lx + 24, ly2, "stroke=\"#333\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"");
  g.marker(lx + 12, ly2, 1, "#333");
  g.text(lx + 30, ly2 + 4, "median cos_fit, right axis");
  lx += 220;
  g.line(lx, ly2, lx + 24, ly2, "stroke=\"#333\" stroke-width=\"1.5\" stroke-dasharray=\"1,3\"");
  g.marker(lx + 12, ly2, 2, "#333");
  g.text(lx + 30, ly2 + 4, "accuracy (share called merge), right axis");
  g.s << "</svg>\n";
  return g.s.str();
}

// ---------------------------------------------------------------------------------------------

std::string machine() {
  std::ifstream cpu("/proc/cpuinfo");
  std::string line, model;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return std::to_string(std::thread::hardware_concurrency()) + " cores" + (model.empty() ? "" : ", " + model);
}

int usage() {
  std::fprintf(stderr,
               "usage: robustness [--out DIR] [--seeds N] [--null-seeds N | --null-runs N] [--only T1,T2,...] [--jobs N] "
               "[--layers N] [--hidden N] [--quick] [--limit]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has = i + 1 < argc;
    if (a == "--out" && has) c.out = argv[++i];
    else if (a == "--seeds" && has) c.seeds = std::atoi(argv[++i]);
    else if (a == "--null-seeds" && has) c.null_seeds = std::atoi(argv[++i]);
    else if (a == "--jobs" && has) c.jobs = std::atoi(argv[++i]);
    else if (a == "--quick") c.seeds = 1, c.null_seeds = 2;
    else if (a == "--layers" && has) c.layers = std::atoi(argv[++i]);
    else if (a == "--hidden" && has) c.hidden = std::atoi(argv[++i]);
    else if (a == "--null-runs" && has) c.null_runs = std::atoi(argv[++i]);
    else if (a == "--limit") c.limit = true;
    else if (a == "--only" && has) {
      std::stringstream list(argv[++i]);
      for (std::string name; std::getline(list, name, ',');) c.only.push_back(name);
    } else return usage();
  }
  if (c.seeds < 0 || c.null_runs < 0 || c.null_seeds < 0 || c.layers < 1 || c.hidden < 16) return usage();
  if (c.jobs <= 0) c.jobs = int(std::max(1u, std::thread::hardware_concurrency()));
  if (c.jobs > 1) alloy::set_thread_count(1);  // parallel across points instead

  const auto start = std::chrono::steady_clock::now();
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d", std::localtime(&now));
  try {
    fs::create_directories(c.out);
    char tmpl[] = "/tmp/alloy-robustness.XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("cannot create a temporary directory");
    const fs::path work = tmpl;
    struct Cleanup {
      fs::path p;
      ~Cleanup() {
        std::error_code ec;
        fs::remove_all(p, ec);
      }
    } cleanup{work};
    auto table = c.limit ? limit_transforms() : transforms(c.layers);
    if (!c.only.empty()) {
      for (const std::string& name : c.only) {
        if (std::none_of(table.begin(), table.end(), [&](const Transform& t) { return t.name == name; })) {
          throw std::runtime_error("--only: no transform named '" + name + "'");
        }
      }
      std::erase_if(table, [&](const Transform& t) {
        return t.name != "none" && std::find(c.only.begin(), c.only.end(), t.name) == c.only.end();
      });
    }
    if (c.null_runs > 0) {
      // Runs per null seed: both families, every subject, every transform the family takes.
      size_t per_seed = 0;
      for (const Transform& t : table) per_seed += std::size(kNullSubjects) * (t.moe_only ? 1 : 2);
      c.null_seeds = int((size_t(c.null_runs) + per_seed - 1) / per_seed);
    }

    // Families.
    std::vector<Unit> units;
    for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kMoe}) {
      for (double d : kDeltas) {
        for (int s = 1; s <= c.seeds; ++s) units.push_back({f, d, s, false, {}});
      }
      for (int s = 1; s <= c.null_seeds; ++s) units.push_back({f, kDeltas[(s - 1) % kDeltaCount], s, true, {}});
    }
    for (size_t i = 0; i < units.size(); ++i) units[i].dir = work / ("unit" + std::to_string(i));
    std::fprintf(stderr, "robustness: %zu families (%d jobs)...\n", units.size(), c.jobs);
    std::vector<std::string> build_errors(units.size());
    parallel(units.size(), c.jobs, [&](size_t i) {
      try {
        build_unit(units[i], c);
      } catch (const std::exception& e) {
        build_errors[i] = e.what();
      }
    });
    for (const auto& e : build_errors) {
      if (!e.empty()) throw std::runtime_error(e);
    }

    // Points.
    std::vector<Result> results;
    for (const Unit& u : units) {
      for (size_t ti = 0; ti < table.size(); ++ti) {
        const Transform& t = table[ti];
        if (t.moe_only && u.family != ModelFamily::kMoe) continue;
        if (!u.null) {
          for (size_t si = 0; si < t.settings.size(); ++si) {
            Result r;
            r.unit = &u, r.transform = ti, r.setting = si, r.subject = "merge", r.seed = uint64_t(u.seed);
            results.push_back(r);
          }
        } else {
          for (const char* subject : kNullSubjects) {
            Result r;
            r.unit = &u, r.transform = ti, r.setting = t.settings.size() - 1, r.subject = subject;
            r.seed = uint64_t(u.seed);
            results.push_back(r);
          }
        }
      }
    }
    std::fprintf(stderr, "robustness: %zu assays...\n", results.size());
    std::atomic<size_t> done{0};
    std::mutex print;
    parallel(results.size(), c.jobs, [&](size_t i) {
      run_point(results[i], table, work / ("p" + std::to_string(i)));
      const size_t k = ++done;
      if (k % 100 == 0 || k == results.size()) {
        std::lock_guard<std::mutex> lock(print);
        std::fprintf(stderr, "  %zu / %zu\n", k, results.size());
      }
    });
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // CSVs.
    std::ofstream csv(c.out / "robustness.csv"), null_csv(c.out / "null.csv");
    csv << "family,delta,transform,strength,seed,alpha_error,w_ft1,w_ft2,cos_fit,z_min,verdict,method,correct,"
           "permutation_exact,permutations_found,rotation_found,seconds,error\n";
    null_csv << "family,delta,subject,transform,strength,seed,verdict,method,false_positive,w_ft1,w_ft2,cos_fit,z_min,"
                "permutations_found,seconds,error\n";
    std::map<CellKey, Cell> cells;
    // null: (transform, subject, family) -> runs, false positives, verdict counts
    std::map<std::tuple<size_t, std::string, int>, std::pair<int, std::map<std::string, int>>> nulls;
    size_t errors = 0;
    for (const Result& r : results) {
      const Unit& u = *r.unit;
      const Transform& t = table[r.transform];
      const Setting& s = t.settings[r.setting];
      std::string err = r.error;
      std::replace(err.begin(), err.end(), ',', ';');
      std::replace(err.begin(), err.end(), '\n', ' ');
      errors += !err.empty();
      if (r.subject == "merge") {
        const bool correct = r.verdict == "merge";
        csv << fam(u.family) << "," << u.delta << "," << t.name << "," << s.label << "," << r.seed << ","
            << csv_num(r.alpha_error) << "," << csv_num(r.w1) << "," << csv_num(r.w2) << "," << csv_num(r.cos_fit)
            << "," << csv_num(r.z_min) << "," << r.verdict << "," << r.method << "," << (correct ? "true" : "false")
            << "," << r.permutation_exact << "," << r.permutations_found << "," << (r.rotation_found ? "true" : "false")
            << "," << fixed(r.seconds, 3) << "," << err << "\n";
        Cell& cell = cells[{int(u.family), delta_index(u.delta), r.transform, r.setting}];
        cell.alpha.push_back(r.alpha_error);
        cell.cos.push_back(r.cos_fit);
        cell.z.push_back(r.z_min);
        ++cell.runs;
        cell.correct += correct;
        cell.rotation_found += r.rotation_found;
        if (!r.permutation_exact.empty()) {
          ++cell.permutation_runs;
          cell.permutation_exact += r.permutation_exact == "true";
        }
      } else {
        const bool fp = r.verdict == "merge";
        null_csv << fam(u.family) << "," << u.delta << "," << r.subject << "," << t.name << "," << s.label << ","
                 << r.seed << "," << r.verdict << "," << r.method << "," << (fp ? "true" : "false") << ","
                 << csv_num(r.w1) << "," << csv_num(r.w2) << "," << csv_num(r.cos_fit) << "," << csv_num(r.z_min)
                 << "," << r.permutations_found << "," << fixed(r.seconds, 3) << "," << err << "\n";
        auto& n = nulls[{r.transform, r.subject, int(u.family)}];
        ++n.first;
        ++n.second[r.verdict];
      }
    }

    // SVGs.
    for (size_t ti = 0; ti < table.size(); ++ti) {
      std::ofstream(c.out / (table[ti].name + ".svg")) << transform_svg(table[ti], ti, cells);
    }

    // summary.md
    std::ostringstream md;
    md << "# Robustness benchmark results\n\n";
    md << "Run " << date << " on " << machine() << "; " << c.jobs << " jobs; wall time " << fixed(wall, 1)
       << " s for " << results.size() << " assays (" << units.size() << " synthetic families). Models: "
       << c.layers << " layers, hidden " << c.hidden << ", 4 heads / 2 kv heads, vocab 256, bf16; MoE 4 experts "
       << "(top-2) of width " << c.hidden << " plus a shared expert. Sweep: " << c.seeds
       << " seeds per point; null: " << c.null_seeds << " seeds per family. Errors: " << errors << ".\n\n";
    md << "## Sweep: linear 0.571 / 0.429 merge, transformed\n\n";
    md << "accuracy = share of points called `merge`; alpha error = (|w_ft1 - 0.571| + |w_ft2 - 0.429|) / 2, "
          "mean over all points; cos_fit = median over points of the assay's median cos_fit. "
          "\"fails from\" = the weakest setting, per parent delta, at which some seed is not called a merge "
          "(\"-\": never).\n\n";
    md << "| transform | family | points | accuracy | mean alpha error | median cos_fit | permutation exact | "
          "fails from (delta "
       << pct(kDeltas[0]) << ")";
    for (int d = 1; d < kDeltaCount; ++d) md << " | (" << pct(kDeltas[d]) << ")";
    md << " |\n|---|---|---|---|---|---|---|";
    for (int d = 0; d < kDeltaCount; ++d) md << "---|";
    md << "\n";
    for (size_t ti = 0; ti < table.size(); ++ti) {
      const Transform& t = table[ti];
      for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kMoe}) {
        if (t.moe_only && f != ModelFamily::kMoe) continue;
        int runs = 0, correct = 0, perm_runs = 0, perm_exact = 0;
        std::vector<double> alpha, cos;
        std::string fails[kDeltaCount];
        for (int d = 0; d < kDeltaCount; ++d) {
          fails[d] = "-";
          for (size_t si = 0; si < t.settings.size(); ++si) {
            auto it = cells.find({int(f), d, ti, si});
            if (it == cells.end()) continue;
            runs += it->second.runs;
            correct += it->second.correct;
            perm_runs += it->second.permutation_runs;
            perm_exact += it->second.permutation_exact;
            alpha.insert(alpha.end(), it->second.alpha.begin(), it->second.alpha.end());
            cos.insert(cos.end(), it->second.cos.begin(), it->second.cos.end());
            if (fails[d] == "-" && it->second.correct < it->second.runs) {
              fails[d] = (t.settings.size() == 1 ? std::string("fails") : t.settings[si].label) + " (" + std::to_string(it->second.correct) + "/" +
                         std::to_string(it->second.runs) + ")";
            }
          }
        }
        md << "| " << t.name << " | " << fam(f) << " | " << runs << " | " << fixed(runs ? double(correct) / runs : NAN, 2)
           << " | " << fixed(mean(alpha), 4) << " | " << fixed(median(cos), 3) << " | "
           << (perm_runs ? std::to_string(perm_exact) + "/" + std::to_string(perm_runs) : "");
        for (const auto& f_ : fails) md << " | " << f_;
        md << " |\n";
      }
    }
    // Acceptance (issue 11): per row and parent delta, the accuracy over the settings whose disguise is
    // at most 4x the merge's deviation (every setting of a function-preserving transform, a re-rounding
    // or stacking); >= 0.95 at delta >= 1%, >= 0.8 at 0.5%; mean alpha error <= 0.02 over the row.
    md << "\n## Acceptance (issue 11)\n\n";
    md << "Accuracy per parent delta over the settings whose disguise is at most 4x the merge's own deviation "
          "from its base (0.714 delta ||W||; noise-deviation: strength <= 4; noise-rms and finetune: strength <= "
          "4 x 0.714 delta; every setting of the other rows), with the number of such points; bar: >= 0.95 at "
          "delta >= 1%, >= 0.8 at 0.5%. alpha = mean alpha error over all the row's points (bar 0.02).\n\n";
    md << "| transform | family";
    for (double d : kDeltas) md << " | " << pct(d);
    md << " | alpha | rotation reported | pass |\n|---|---|";
    for (int d = 0; d < kDeltaCount; ++d) md << "---|";
    md << "---|---|---|\n";
    int rows_failed = 0;
    for (size_t ti = 0; ti < table.size(); ++ti) {
      const Transform& t = table[ti];
      for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kMoe}) {
        if (t.moe_only && f != ModelFamily::kMoe) continue;
        bool pass = true, any = false;
        std::vector<double> alpha;
        int rot = 0, all_runs = 0;
        md << "| " << t.name << " | " << fam(f);
        for (int d = 0; d < kDeltaCount; ++d) {
          int runs = 0, correct = 0;
          for (size_t si = 0; si < t.settings.size(); ++si) {
            auto it = cells.find({int(f), d, ti, si});
            if (it == cells.end()) continue;
            any = true;
            alpha.insert(alpha.end(), it->second.alpha.begin(), it->second.alpha.end());
            rot += it->second.rotation_found;
            all_runs += it->second.runs;
            const double ratio = disguise_ratio(t, t.settings[si], kDeltas[d]);
            if (std::isfinite(ratio) && ratio > 4 + 1e-9) continue;
            runs += it->second.runs;
            correct += it->second.correct;
          }
          if (runs == 0) {
            md << " | -";
            continue;
          }
          const double acc = double(correct) / runs;
          const bool ok = acc >= (kDeltas[d] >= 0.01 - 1e-12 ? 0.95 : 0.8);
          pass &= ok;
          md << " | " << fixed(acc, 2) << " (" << runs << ")" << (ok ? "" : " **x**");
        }
        const double a = mean(alpha);
        pass &= !(a > 0.02);
        if (any && !pass) ++rows_failed;
        md << " | " << fixed(a, 4) << " | " << rot << "/" << all_runs << " | " << (!any ? "-" : pass ? "yes" : "**no**")
           << " |\n";
      }
    }
    md << "\nRows failing the acceptance: " << rows_failed << ".\n";
    md << "\nPer setting (accuracy / mean alpha error / median z_min, by parent delta):\n\n";
    md << "| transform | setting | family";
    for (double d : kDeltas) md << " | " << pct(d);
    md << " |\n|---|---|---|";
    for (int d = 0; d < kDeltaCount; ++d) md << "---|";
    md << "\n";
    for (size_t ti = 0; ti < table.size(); ++ti) {
      const Transform& t = table[ti];
      for (size_t si = 0; si < t.settings.size(); ++si) {
        for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kMoe}) {
          if (t.moe_only && f != ModelFamily::kMoe) continue;
          md << "| " << t.name << " | " << t.settings[si].label << " | " << fam(f);
          for (int d = 0; d < kDeltaCount; ++d) {
            auto it = cells.find({int(f), d, ti, si});
            if (it == cells.end()) {
              md << " | ";
              continue;
            }
            const Cell& cell = it->second;
            md << " | " << cell.correct << "/" << cell.runs << " / " << fixed(mean(cell.alpha), 4) << " / "
               << fixed(median(cell.z), 1);
          }
          md << " |\n";
        }
      }
    }
    md << "\n## Null: transforms at their strongest setting on models that are not merges\n\n";
    md << "unrelated = a base model of another seed with the same architecture; sibling = ft_3, a fine-tune of "
          "the candidates' base (parent delta cycling over the sweep's deltas with the seed); correlated-sibling = ft_3 "
          "of a family whose fine-tunes share part of their deltas' direction (a cosine that changes from tensor to "
          "tensor, up to 0.8); no-base = the base is not among the candidates. A `merge` verdict is a false "
          "positive.\n\n";
    md << "| transform | setting | subject | family | runs | false positives | verdicts |\n|---|---|---|---|---|---|---|\n";
    int total_runs = 0, total_fp = 0;
    for (size_t ti = 0; ti < table.size(); ++ti) {
      for (const char* subject : kNullSubjects) {
        for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kMoe}) {
          auto it = nulls.find({ti, subject, int(f)});
          if (it == nulls.end()) continue;
          const auto& [runs, verdicts] = it->second;
          const int fp = verdicts.count("merge") ? verdicts.at("merge") : 0;
          total_runs += runs;
          total_fp += fp;
          std::string v;
          for (const auto& [name, count] : verdicts) v += (v.empty() ? "" : ", ") + name + " " + std::to_string(count);
          md << "| " << table[ti].name << " | " << table[ti].settings.back().label << " | " << subject << " | "
             << fam(f) << " | " << runs << " | " << fp << " | " << v << " |\n";
        }
      }
    }
    md << "\nFalse positives: " << total_fp << " of " << total_runs << ".\n";
    std::string text = md.str();
    const std::string head = "# Robustness benchmark results\n\n";
    text.insert(head.size(), "Null runs: " + std::to_string(total_runs) + "; false merges: " + std::to_string(total_fp) +
                                 ". Sweep points: " + std::to_string(results.size() - size_t(total_runs)) + ".\n\n");
    // Written under a temporary name, then renamed.
    const fs::path tmp = c.out / "summary.md.tmp";
    std::ofstream(tmp) << text;
    fs::rename(tmp, c.out / "summary.md");
    std::fprintf(stderr, "robustness: %zu assays in %.1f s, %d false positives of %d null runs, %zu errors; wrote %s\n",
                 results.size(), wall, total_fp, total_runs, errors, c.out.string().c_str());
    return errors ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "robustness: %s\n", e.what());
    return 1;
  }
}
