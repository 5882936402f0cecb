// Helpers for the assay tests: small synthetic families, merges through the library, the assay.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/dtype.h"
#include "alloy/merge/merge.h"
#include "alloy/core/model.h"
#include "alloy/merge/recipe.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace alloy::test {

// The base of a small test family: `layers` layers of width `hidden`, MLPs twice as wide, 4 experts
// of width `moe_intermediate` (MoE kinds), vocabulary 256.
inline BaseModelOptions small_base(ModelFamily kind, int layers, int hidden, int moe_intermediate, uint64_t seed) {
  BaseModelOptions base;
  base.arch.family = kind;
  base.arch.layers = layers;
  base.arch.hidden = hidden;
  base.arch.intermediate = 2 * hidden;
  base.arch.experts = 4;
  base.arch.moe_intermediate = moe_intermediate;
  base.arch.vocab = 256;
  base.seed = seed;
  return base;
}

// A small family in a temporary directory: base, ft_1..ft_3, unrelated_1 (bf16).
struct AssayFamily {
  TempDir temp;
  std::filesystem::path dir;
  AssayFamily(ModelFamily kind, uint64_t seed, double delta, int layers = 2, int moe_intermediate = 64)
      : dir(temp.path() / "fam") {
    const BaseModelOptions base = small_base(kind, layers, 64, moe_intermediate, seed);
    FineTuneOptions ft;
    ft.relative_delta = delta;
    synth_family(dir, base, 3, 1, ft);
  }
  std::vector<std::string> candidates() const {
    return {(dir / "base").string(), (dir / "ft_1").string(), (dir / "ft_2").string(), (dir / "unrelated_1").string()};
  }
  std::vector<std::string> candidates_with_ft3() const {
    auto c = candidates();
    c.insert(c.begin() + 3, (dir / "ft_3").string());
    return c;
  }
};

inline std::string candidate(const AssayFamily& f, const std::string& member) { return (f.dir / member).string(); }

// Merges a recipe (YAML text; model paths absolute) into `out` with the library, as alloy-merge.
inline void merge_into(const std::string& yaml, const std::filesystem::path& out,
                       uint64_t random_seed = 0) {
  MergePlan plan = plan_merge(parse_recipe(yaml, "test recipe"), PlanOptions{});
  MergeOptions options;
  options.out_dir = out;
  options.overwrite = true;
  options.hash_inputs = false;
  options.random_seed = random_seed;
  run_merge(plan, options);
}

// A bf16 linear merge of the family's ft_1 and ft_2 with weights `w1` and `w2` (YAML numbers, as
// written in a recipe) into `out`.
inline void merge_linear_blend(const AssayFamily& f, const std::string& w1, const std::string& w2,
                               const std::filesystem::path& out) {
  merge_into("merge_method: linear\nmodels:\n  - model: " + candidate(f, "ft_1") + "\n    parameters: {weight: " + w1 +
                 "}\n  - model: " + candidate(f, "ft_2") + "\n    parameters: {weight: " + w2 + "}\ndtype: bfloat16\n",
             out);
}

// A family of `base` with `fine_tunes` (>= 2) fine-tunes 1% from it under `dir`/fam, the bf16
// linear merge 0.571 / 0.429 of ft_1 and ft_2 in `dir`/merged and its int4 round trip (groups of
// 32) in `dir`/int4. Returns the candidates: base, ft_1, ft_2.
inline std::vector<std::string> int4_rounded_merge(const BaseModelOptions& base, const std::filesystem::path& dir,
                                                   int fine_tunes = 2) {
  FineTuneOptions ft;
  ft.relative_delta = 0.01;
  synth_family(dir / "fam", base, fine_tunes, 0, ft);
  const std::string b = (dir / "fam" / "base").string(), a1 = (dir / "fam" / "ft_1").string(),
                    a2 = (dir / "fam" / "ft_2").string();
  merge_into("merge_method: linear\nmodels:\n  - model: " + a1 + "\n    parameters: {weight: 0.571}\n  - model: " + a2 +
                 "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
             dir / "merged");
  PerturbOptions round;
  round.kind = PerturbKind::kReround;
  round.format = ReroundFormat::kInt4;
  perturb_model(dir / "merged", dir / "int4", round);
  return {b, a1, a2};
}

// The weight the assay measured for a candidate path (NaN, and a test failure, when absent).
inline double weight_of(const AssayResult& r, const std::string& path) {
  for (const auto& c : r.candidates) {
    if (c.path == path) return c.weight;
  }
  ADD_FAILURE() << "no candidate " << path;
  return NAN;
}

inline AssayResult assay(const std::filesystem::path& suspect, const std::vector<std::string>& candidates) {
  AssayOptions options;
  options.suspect = suspect;
  options.candidates = candidates;
  return run_assay(options);
}

// The largest difference between two models' tensors, in units in the last place of the first's
// dtype (tensors matched by name; a missing tensor counts as a huge difference).
inline uint64_t max_ulp_difference(const std::filesystem::path& a, const std::filesystem::path& b) {
  const Model ma = Model::open(a), mb = Model::open(b);
  uint64_t worst = 0;
  if (ma.tensors().size() != mb.tensors().size()) return UINT64_MAX;
  for (const auto& t : ma.tensors()) {
    const ModelTensor* u = mb.find(t.name());
    if (!u || u->info->shape != t.info->shape) return UINT64_MAX;
    const uint64_t n = t.info->numel();
    std::vector<float> x(n), y(n);
    load_as_f32(t.info->dtype, t.data(), n, x.data());
    load_as_f32(u->info->dtype, u->data(), n, y.data());
    const int mantissa = t.info->dtype == DType::BF16 ? 7 : t.info->dtype == DType::F16 ? 10 : 23;
    for (uint64_t i = 0; i < n; ++i) {
      if (x[i] == y[i]) continue;
      int e = 0;
      std::frexp(std::max(std::fabs(x[i]), std::fabs(y[i])), &e);
      const double ulp = std::ldexp(1.0, e - 1 - mantissa);
      worst = std::max<uint64_t>(worst, uint64_t(std::ceil(std::fabs(double(x[i]) - double(y[i])) / ulp)));
    }
  }
  return worst;
}

inline bool is_identity_permutation(const nlohmann::json& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != i) return false;
  }
  return true;
}

// The assay's record of kind `kind` for `layer` (and `unit`), or null.
inline nlohmann::json found_permutation(const AssayResult& r, int layer, const std::string& kind, const std::string& unit = "") {
  for (const auto& p : r.permutations) {
    if (p.value("layer", -1) == layer && p["kind"] == kind && (unit.empty() || p.value("unit", "") == unit)) return p;
  }
  return nlohmann::json();
}

// Checks that the assay found exactly the non-identity permutations of perturb's ground truth
// (alloy_perturb.json of a permute kind); returns how many there were.
inline size_t expect_permutations_found(const AssayResult& r, PerturbKind kind, const nlohmann::json& truth) {
  const std::string what = perturb_kind_name(kind);
  size_t expected = 0;
  for (const auto& layer : truth["layers"]) {
    const int l = layer["layer"];
    if (kind == PerturbKind::kPermuteExperts) {
      if (is_identity_permutation(layer["experts"])) continue;
      ++expected;
      EXPECT_EQ(found_permutation(r, l, "experts")["permutation"], layer["experts"]) << what << " layer " << l;
    } else if (kind == PerturbKind::kPermuteHeads) {
      if (is_identity_permutation(layer["heads"]) && is_identity_permutation(layer["kv_heads"])) continue;
      ++expected;
      const nlohmann::json p = found_permutation(r, l, "heads");
      EXPECT_EQ(p["heads"], layer["heads"]) << what << " layer " << l;
      EXPECT_EQ(p["kv_heads"], layer["kv_heads"]) << what << " layer " << l;
    } else {
      const auto unit = [&](const nlohmann::json& p, const std::string& name) {
        if (p.is_null() || is_identity_permutation(p)) return;
        ++expected;
        EXPECT_EQ(found_permutation(r, l, "neurons", name)["permutation"], p) << what << " layer " << l << " " << name;
      };
      if (layer.contains("mlp")) unit(layer["mlp"], "mlp");
      if (layer.contains("experts")) {
        for (size_t e = 0; e < layer["experts"].size(); ++e) unit(layer["experts"][e], "experts." + std::to_string(e));
      }
      if (layer.contains("shared_expert")) unit(layer["shared_expert"], "shared_expert");
    }
  }
  EXPECT_EQ(r.permutations.size(), expected) << what << ": " << r.permutations.dump();
  return expected;
}

}  // namespace alloy::test
