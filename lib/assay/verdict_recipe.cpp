// The recovered recipe's helpers and the rebuild check: each hypothesis is merged again on sampled
// tensors exactly as alloy-merge would, and the one that rebuilds the suspect best is kept.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "verdict.h"

namespace alloy::detail {
namespace {

// A mergekit setting (number, gradient, or filters ending in a default) whose parts say the same
// number once rounded, as that number: a gradient of equal values, filters that repeat the default.
// (The norms of a base + fine-tune blend scatter past the profile's tolerance and, rounded to one
// decimal, came out as {filter: input_layernorm, value: [0.3, 0.3]} beside a default of 0.3.)
nlohmann::json collapsed(nlohmann::json s) {
  const auto uniform = [](const nlohmann::json& g) {
    return g.is_array() && !g.empty() && std::all_of(g.begin(), g.end(), [&](const auto& x) { return x.is_number() && x == g[0]; });
  };
  if (uniform(s)) return s[0];
  const bool filters = s.is_array() && !s.empty() && s.back().is_object() && s.back().contains("value") && !s.back().contains("filter");
  if (!filters) return s;
  for (auto& f : s) {
    if (f.is_object() && f.contains("value") && uniform(f["value"])) f["value"] = f["value"][0];
  }
  const nlohmann::json fallback = s.back()["value"];
  nlohmann::json kept = nlohmann::json::array();
  for (const auto& f : s) {
    if (&f == &s.back() || !f.is_object() || !f.contains("filter") || f["value"] != fallback) kept.push_back(f);
  }
  return kept.size() == 1 ? fallback : kept;
}

// Every number under a "parameters" key rounded to `digits` decimals, each setting collapsed.
nlohmann::json snapped(nlohmann::json j, int digits, bool inside = false) {
  if (j.is_number_float() && inside) return round_digits(j.get<double>(), digits);
  if (j.is_object()) {
    for (auto& [key, value] : j.items()) {
      if (key == "parameters" && value.is_object()) {
        for (auto& [name, setting] : value.items()) setting = collapsed(snapped(setting, digits, true));
      } else {
        value = snapped(value, digits, inside);
      }
    }
  } else if (j.is_array()) {
    for (auto& value : j) value = snapped(value, digits, inside);
  }
  return j;
}

// A setting as one number: a gradient's mean, a filter list's default (made so by encode_profile).
nlohmann::json flat_setting(const nlohmann::json& s) {
  if (s.is_array() && !s.empty() && s.back().is_object() && s.back().contains("value")) return flat_setting(s.back()["value"]);
  if (s.is_array() && !s.empty() && std::all_of(s.begin(), s.end(), [](const auto& x) { return x.is_number(); })) {
    double sum = 0;
    for (const auto& x : s) sum += x.get<double>();
    return sum / double(s.size());
  }
  return s;
}

// The hypothesis with every parameter setting flattened to one number: the simplest recipe of its
// kind, tried first so that it wins wherever it rebuilds the suspect as well. A per-tensor weight
// off by its own estimation error near the profile's tolerance once wrote a self_attn filter
// (0.615 beside 0.621) that no rounding rebuilt exactly, where the recipe was 0.62 throughout.
nlohmann::json flattened(nlohmann::json j) {
  if (j.is_object()) {
    for (auto& [key, value] : j.items()) {
      if (key == "parameters" && value.is_object()) {
        for (auto& [name, setting] : value.items()) setting = flat_setting(setting);
      } else {
        value = flattened(value);
      }
    }
  } else if (j.is_array()) {
    for (auto& value : j) value = flattened(value);
  }
  return j;
}

// The recipes to try, in order of preference: each hypothesis flattened (above) where that changes
// it, then as fitted, each rounded to 1, 2 and 3 decimals (people write round numbers; in a
// half-precision compute dtype nearby values are the same number), then as measured; each also
// with float32 compute for a half-precision suspect.
std::vector<nlohmann::json> recipe_variants(const std::vector<nlohmann::json>& hypotheses,
                                            const std::string& out_dtype) {
  std::vector<nlohmann::json> forms;
  for (const auto& h : hypotheses) {
    const nlohmann::json flat = flattened(h);
    if (flat != h) forms.push_back(flat);
    forms.push_back(h);
  }
  std::vector<nlohmann::json> variants;
  for (const auto& h : forms) {
    for (int digits : {1, 2, 3, -1}) {
      const nlohmann::json recipe = digits < 0 ? h : snapped(h, digits);
      variants.push_back(recipe);
      if (out_dtype != "float32") {
        nlohmann::json f32 = recipe;
        f32["dtype"] = "float32";
        f32["out_dtype"] = out_dtype;
        variants.push_back(f32);
      }
    }
  }
  return variants;
}

// Strictly better only, so that earlier (rounder, first-listed) recipes win ties: more elements
// rebuilt exactly, else (when not all are) a clearly smaller error.
bool better_check(const nlohmann::json& check, const nlohmann::json& best) {
  if (best.is_null()) return true;
  const double exact = check["exact_fraction"].get<double>();
  const double best_exact = best["exact_fraction"].get<double>();
  return exact > best_exact + 1e-12 ||
         (std::fabs(exact - best_exact) <= 1e-12 && exact < 1.0 &&
          check["relative_error"].get<double>() < 0.999 * best["relative_error"].get<double>());
}

// Equally good up to rounding: at most half a percent fewer elements rebuilt exactly and an error
// at most 1.5 times as large (two recipes that compute the same blend differ only in roundings).
bool equivalent_check(const nlohmann::json& check, const nlohmann::json& best) {
  return check["exact_fraction"].get<double>() >= best["exact_fraction"].get<double>() - 0.005 &&
         check["relative_error"].get<double>() <= 1.5 * best["relative_error"].get<double>() + 1e-6;
}

// One rebuild check, as one task of a parallel region: its result, or the message of the error it
// failed with (an exception must not leave the region). Inside a region its passes, nested, run on
// this thread, and its read errors are its own (ReadErrorScope). A round of one check, or one
// thread, runs it outside any region: its passes then spread over the threads as usual, whose read
// errors go to the shared slot, so no scope is opened.
struct CheckOutcome {
  nlohmann::json check;
  std::string error;
};
CheckOutcome run_check(const nlohmann::json& recipe, const VerdictContext& v, const std::vector<std::string>& names) {
  std::optional<ReadErrorScope> scope;
  if (in_parallel_region()) scope.emplace();
  CheckOutcome outcome;
  try {
    outcome.check = rebuild_check(recipe, v.suspect, names);
  } catch (const std::exception& e) {
    outcome.error = e.what();
    if (outcome.error.empty()) outcome.error = "unknown error";
  } catch (...) {
    outcome.error = "unknown error";
  }
  return outcome;
}

}  // namespace

std::vector<std::string> rebuild_sample(const VerdictContext& v, int most) {
  const double fraction = v.options.sample_fraction;
  const uint64_t largest = fraction > 0 && fraction < 1
                               ? std::max<uint64_t>(4096, uint64_t(fraction * double(1 << 22)))
                               : uint64_t(1) << 20;
  std::vector<const TensorAssay*> fitted;
  for (const auto& t : v.result.tensors) {
    if (t.fitted && !t.aligned && t.numel <= largest) fitted.push_back(&t);
  }
  std::stable_sort(fitted.begin(), fitted.end(),
                   [](auto* a, auto* b) { return a->numel > b->numel; });
  std::vector<std::string> names, seen;
  for (const auto* t : fitted) {
    if (std::find(seen.begin(), seen.end(), t->component) != seen.end()) continue;
    seen.push_back(t->component);
    names.push_back(t->name);
  }
  for (const auto* t : fitted) {
    if (int(names.size()) >= most) break;
    if (std::find(names.begin(), names.end(), t->name) == names.end()) names.push_back(t->name);
  }
  if (int(names.size()) > most) names.resize(size_t(most));
  return names;
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

double round_digits(double value, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(value * s) / s;
}

void confirm_by_rebuild(VerdictContext& v, const std::vector<nlohmann::json>& hypotheses,
                        size_t fallbacks) {
  if (v.options.rebuild_check_tensors <= 0) return;
  const auto names = rebuild_sample(v, v.options.rebuild_check_tensors);
  // The best variant of each hypothesis; hypotheses come in order of preference (the recipe a
  // practitioner would write first: linear with weights summing to 1, fewer parameters first).
  // A hypothesis's variants are tried in order until one rebuilds every element: no later variant
  // can then be strictly better (better_check). The checks run in rounds, one check per thread: a
  // round takes the next `width` variants of every hypothesis still open, and its outcomes are
  // then taken in the serial order, those after a hypothesis's first exact rebuild discarded. So
  // the result, and the notes, are those of running the variants one by one; only some work is
  // speculative. (One check's passes are small, a few tensors each: run with every thread on one
  // check, the comparison and the reads left one thread busy and the other mostly idle.)
  const size_t count = hypotheses.size();
  const size_t width = static_cast<size_t>(std::max(1, thread_count()));
  std::vector<nlohmann::json> checks(count), recipes(count);
  std::vector<std::vector<nlohmann::json>> variants(count);
  const std::string out_dtype = torch_dtype_of(v.suspect);
  for (size_t h = 0; h < count; ++h) variants[h] = recipe_variants({hypotheses[h]}, out_dtype);
  // The fallbacks are held back (their next variant past the end) until the others are done.
  const size_t first_fallback = count - std::min(fallbacks, count);
  std::vector<size_t> next(count, 0);
  for (size_t h = first_fallback; h < count; ++h) next[h] = variants[h].size();
  std::vector<std::vector<std::string>> notes(count);
  const auto run_rounds = [&] {
    for (;;) {
      std::vector<std::pair<size_t, size_t>> round;  // (hypothesis, variant), in the serial order
      for (size_t h = 0; h < count; ++h) {
        for (size_t k = next[h]; k < std::min(variants[h].size(), next[h] + width); ++k)
          round.emplace_back(h, k);
      }
      if (round.empty()) break;
      std::vector<CheckOutcome> outcomes(round.size());
      parallel_for(round.size(), 1, [&](size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i)
          outcomes[i] = run_check(variants[round[i].first][round[i].second], v, names);
      });
      for (size_t i = 0; i < round.size(); ++i) {
        const auto [h, k] = round[i];
        if (next[h] != k) continue;  // after this hypothesis's exact rebuild
        next[h] = k + 1;
        const CheckOutcome& outcome = outcomes[i];
        if (!outcome.error.empty()) {
          notes[h].push_back("rebuild check of a hypothesis failed: " + outcome.error);
          continue;
        }
        if (!outcome.check.contains("exact_fraction")) continue;
        if (better_check(outcome.check, checks[h]))
          checks[h] = outcome.check, recipes[h] = variants[h][k];
        if (checks[h]["exact_fraction"].get<double>() >= 1.0) next[h] = variants[h].size();
      }
    }
  };
  run_rounds();
  const auto exact = [&](size_t h) {
    return !checks[h].is_null() && checks[h]["exact_fraction"].get<double>() >= 1.0;
  };
  bool done = false;
  for (size_t h = 0; h < first_fallback; ++h) done |= exact(h);
  std::vector<bool> tried(count, true);
  for (size_t h = first_fallback; h < count; ++h) {
    if (done)
      tried[h] = false;
    else
      next[h] = 0;
  }
  if (!done && first_fallback < count) run_rounds();
  for (const auto& hypothesis_notes : notes) {
    for (const std::string& note : hypothesis_notes) v.note(note);
  }
  size_t best = hypotheses.size();
  for (size_t h = 0; h < hypotheses.size(); ++h) {
    if (!checks[h].is_null() && (best == hypotheses.size() || better_check(checks[h], checks[best]))) best = h;
  }
  const size_t tried_count = size_t(std::count(tried.begin(), tried.end(), true));
  if (best == hypotheses.size()) return;
  // Canonical: the first hypothesis that rebuilds the suspect as well as the best one, up to
  // rounding, is the one reported; the others are kept as rejected alternatives.
  size_t chosen = best;
  for (size_t h = 0; h < best; ++h) {
    if (!checks[h].is_null() && equivalent_check(checks[h], checks[best])) {
      chosen = h;
      break;
    }
  }
  if (tried_count > 1) {
    nlohmann::json alternatives = nlohmann::json::array();
    for (size_t h = 0; h < hypotheses.size(); ++h) {
      if (h == chosen || !tried[h]) continue;
      nlohmann::json a = {{"merge_method", hypotheses[h]["merge_method"]}};
      if (checks[h].is_null()) {
        a["why_rejected"] = "its rebuild check could not run";
      } else {
        a["exact_fraction"] = checks[h]["exact_fraction"];
        a["relative_error"] = checks[h]["relative_error"];
        a["recipe"] = recipes[h];
        a["why_rejected"] = equivalent_check(checks[h], checks[chosen])
                                ? "rebuilds the suspect equally well; the reported recipe is the one a practitioner "
                                  "would write (weights summing to 1, fewer parameters)"
                                : "rebuilds the sampled tensors less well";
      }
      alternatives.push_back(a);
    }
    v.result.evidence["alternatives"] = alternatives;
  }
  nlohmann::json best_check = checks[chosen];
  v.result.recipe = recipes[chosen];
  best_check["merge_method"] = recipes[chosen]["merge_method"];
  best_check["compute_dtype"] = recipes[chosen]["dtype"];
  const std::string& method = v.result.method;
  if (has_random_masks(method)) {
    best_check["note"] = "the masks may be random (DARE, DELLA): only the error is meaningful";
  }
  v.result.evidence["rebuild"] = best_check;
}

namespace {

constexpr double kUnbounded = std::numeric_limits<double>::infinity();  // a weight may exceed 1

// The values of parameter `name` of model `m` from `from` to `to` steps of kRefineStep away from
// the reading (either sign), rounded to the step, in (0, most], the reading itself left out (its
// rounding is a step: a weight read 0.102 was never tried at 0.1).
std::vector<double> steps_around(const nlohmann::json& recipe, size_t m, const char* name, int from,
                                 int to, double most) {
  const double centre = recipe["models"][m]["parameters"][name].get<double>();
  std::vector<double> values;
  for (int s = from; s <= to; ++s) {
    const double value = round_digits(centre + kRefineStep * s, 2);
    if (value != centre && value > 0 && value <= most) values.push_back(value);
  }
  return values;
}

// Every value of `values` for parameter `name` of the models `models` at once (one check per
// value, one per thread), the best kept in `recipe` and `best` when strictly better (in the order
// of `values`: thread-independent). Returns whether it moved.
// With `weight_follows`, each model's weight moves with the parameter in proportion (rounded to
// 0.01; DARE's density, whose scale w / d the statistics read well).
bool refine_parameter(const VerdictContext& v, const std::vector<std::string>& names,
                      const std::vector<size_t>& models, const char* name,
                      const std::vector<double>& values, nlohmann::json& recipe,
                      nlohmann::json& best, bool weight_follows = false) {
  std::vector<nlohmann::json> steps;
  for (double value : values) {
    steps.push_back(recipe);
    for (size_t m : models) {
      nlohmann::json& parameters = steps.back()["models"][m]["parameters"];
      const double from = parameters[name].get<double>();
      if (weight_follows && from > 0 && parameters.contains("weight") &&
          parameters["weight"].is_number())
        parameters["weight"] = round_digits(parameters["weight"].get<double>() * value / from, 2);
      parameters[name] = value;
    }
  }
  std::vector<CheckOutcome> outcomes(steps.size());
  parallel_for(steps.size(), 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) outcomes[i] = run_check(steps[i], v, names);
  });
  bool moved = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!outcomes[i].error.empty() || !outcomes[i].check.contains("exact_fraction")) continue;
    if (better_check(outcomes[i].check, best))
      best = outcomes[i].check, recipe = steps[i], moved = true;
  }
  return moved;
}

bool has_number(const nlohmann::json& recipe, size_t m, const char* name) {
  const nlohmann::json& parameters = recipe["models"][m]["parameters"];
  return parameters.contains(name) && parameters[name].is_number();
}

// Parameter `name` of model `m` searched within `reach` steps of the reading; while the best step
// is the farthest one, the walk goes on that way, `reach` steps at a time, up to kRefineWalks times
// (a fourth parent's density read 0.62 for 0.8 rose by the whole reach in each sweep).
bool walk_parameter(const VerdictContext& v, const std::vector<std::string>& names, size_t m,
                    const char* name, int reach, double most, nlohmann::json& recipe,
                    nlohmann::json& best, bool weight_follows = false) {
  if (!has_number(recipe, m, name)) return false;
  const auto value = [&] { return recipe["models"][m]["parameters"][name].get<double>(); };
  double before = value();
  if (!refine_parameter(v, names, {m}, name, steps_around(recipe, m, name, -reach, reach, most),
                        recipe, best, weight_follows))
    return false;
  for (int walk = 0; walk < kRefineWalks && best["exact_fraction"].get<double>() < 1.0; ++walk) {
    const double step = value() - before;
    if (std::fabs(step) < (reach - 0.5) * kRefineStep) break;  // not the farthest: a maximum
    before = value();
    const auto values = step > 0 ? steps_around(recipe, m, name, 1, reach, most)
                                 : steps_around(recipe, m, name, -reach, -1, most);
    if (!refine_parameter(v, names, {m}, name, values, recipe, best, weight_follows)) break;
  }
  return true;
}

// Breadcrumbs' gamma (the share of the largest deltas dropped) is read from the top of the drop
// profile, where with three or four parents "nothing kept" needs every other parent to have
// dropped the element too: a merge of four at gamma 0.01 read 0.0001-0.0003. Recipes write round
// values, mostly one for every model: kGammaGrid for all models at once, then each model's within
// kGammaSteps thousandths where the grid moved or its reading is not round.
constexpr double kGammaGrid[] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1};
constexpr int kGammaSteps = 2;

bool refine_gamma(const VerdictContext& v, const std::vector<std::string>& names,
                  nlohmann::json& recipe, nlohmann::json& best) {
  std::vector<size_t> models;
  for (size_t m = 0; m < recipe["models"].size(); ++m) {
    if (has_number(recipe, m, "gamma")) models.push_back(m);
  }
  if (models.empty()) return false;
  bool moved = refine_parameter(v, names, models, "gamma",
                                std::vector<double>(std::begin(kGammaGrid), std::end(kGammaGrid)),
                                recipe, best);
  for (size_t m : models) {
    if (best["exact_fraction"].get<double>() >= 1.0) break;
    const double centre = recipe["models"][m]["parameters"]["gamma"].get<double>();
    // A round reading that no other round value beat is taken as read (a three-parent merge's
    // 0.01: twelve checks saved).
    const bool round =
        std::find(std::begin(kGammaGrid), std::end(kGammaGrid), centre) != std::end(kGammaGrid);
    if (round && !moved) continue;
    std::vector<double> values;
    for (int s = -kGammaSteps; s <= kGammaSteps; ++s) {
      const double value = round_digits(centre + 0.001 * s, 3);
      if (s != 0 && value > 0) values.push_back(value);
    }
    moved |= refine_parameter(v, names, {m}, "gamma", values, recipe, best);
  }
  return moved;
}

}  // namespace

bool refine_sparse_recipe(VerdictContext& v) {
  if (v.options.rebuild_check_tensors <= 0 || !v.result.evidence.contains("rebuild")) return false;
  nlohmann::json recipe = v.result.recipe, best = v.result.evidence["rebuild"];
  if (!recipe.contains("models") || !recipe["models"].is_array() ||
      !best.contains("exact_fraction"))
    return false;
  const auto names = rebuild_sample(v, v.options.rebuild_check_tensors);
  const auto all_exact = [&] { return best["exact_fraction"].get<double>() >= 1.0; };
  const double before = best["exact_fraction"].get<double>();
  const bool dare = is_dare_method(v.result.method);
  bool improved = false;
  for (int round = 0; round < kRefineRounds && !all_exact(); ++round) {
    // Gamma first: off, it hides which density is right (a merge of four read gamma 0.0002 for
    // 0.01; searched last, its densities took twice the checks).
    bool moved = refine_gamma(v, names, recipe, best);
    for (size_t m = 0; m < recipe["models"].size() && !all_exact(); ++m) {
      moved |= walk_parameter(v, names, m, "density", kRefineSteps, 1.0, recipe, best, dare);
      if (!all_exact())
        moved |=
            walk_parameter(v, names, m, "weight", kRefineWeightSteps, kUnbounded, recipe, best);
    }
    improved |= moved;
    if (!moved) break;
  }
  if (!improved) return false;
  best["merge_method"] = recipe["merge_method"];
  best["compute_dtype"] = recipe["dtype"];
  v.result.recipe = recipe;
  v.result.evidence["rebuild"] = best;
  v.note(
      "the densities and weights were refined by their rebuilds (steps of " +
      number_text(kRefineStep) + ", densities within " + number_text(kRefineStep * kRefineSteps) +
      " and weights within " + number_text(kRefineStep * kRefineWeightSteps) +
      " of the reading, one at a time, on while the farthest step is the best; " +
      (dare ? "each density with its weight in proportion, the masks being the rebuild's; " : "") +
      "breadcrumbs' gamma over round values, then by 0.001): the recipe rebuilds " +
      number_text(100 * best["exact_fraction"].get<double>()) +
      "% of the sampled elements exactly, against " + number_text(100 * before) + "% as read");
  return true;
}

double rebuilt_exactly(const AssayResult& r) {
  const auto it = r.evidence.find("rebuild");
  return it != r.evidence.end() && it->is_object() ? it->value("exact_fraction", 0.0) : 0.0;
}

bool masks_reproduced(const AssayResult& result) {
  const auto models = result.recipe.find("models");
  if (models == result.recipe.end() || !models->is_array()) return false;
  double chance = 1;
  for (const auto& m : *models) {
    const auto& parameters = m.value("parameters", nlohmann::json::object());
    if (!parameters.contains("density") || !parameters["density"].is_number()) continue;
    const double d = std::clamp(parameters["density"].get<double>(), 0.0, 1.0);
    chance *= d * d + (1 - d) * (1 - d);
  }
  return rebuilt_exactly(result) >= 0.5 * (1 + chance);
}

}  // namespace alloy::detail
