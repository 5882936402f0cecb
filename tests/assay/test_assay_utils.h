// Helpers for the assay tests: small synthetic families, merges through the library, the assay.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/core/dtype.h"
#include "alloy/merge/merge.h"
#include "alloy/core/model.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace alloy::test {

// A small family in a temporary directory: base, ft_1..ft_3, unrelated_1 (bf16).
struct AssayFamily {
  TempDir temp;
  std::filesystem::path dir;
  AssayFamily(ModelFamily kind, uint64_t seed, double delta, int layers = 2) : dir(temp.path() / "fam") {
    BaseModelOptions base;
    base.arch.family = kind;
    base.arch.layers = layers;
    base.arch.hidden = 64;
    base.arch.intermediate = 128;
    base.arch.experts = 4;
    base.arch.moe_intermediate = 64;
    base.arch.vocab = 256;
    base.seed = seed;
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
inline void merge_into(const std::string& yaml, const std::filesystem::path& out) {
  MergePlan plan = plan_merge(parse_recipe(yaml, "test recipe"), PlanOptions{});
  MergeOptions options;
  options.out_dir = out;
  options.overwrite = true;
  options.hash_inputs = false;
  run_merge(plan, options);
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

}  // namespace alloy::test
