// alloy-assay under the null, and the Rio shape:
//  - unrelated models are never called merges (50 seeds, dense and MoE);
//  - sibling fine-tunes of one base, stored in bf16 from an float32 master (the shared-grid trap:
//    rounding to one grid correlates siblings whose deltas are small), deltas from 0.5% to 10%,
//    are never called merges, with the base among the candidates or without it (50 seeds);
//  - correlated siblings (deltas sharing a direction with a cosine that changes from tensor to
//    tensor, up to 0.8: alloy-synth --sibling-correlation) are never merges, with the base or
//    without it (200 seeds, dense and MoE, deltas 0.5% to 10%);
//  - an MoE model blended 0.571 / 0.429 in bf16 gives alpha 0.571 +/- 0.005 on every component.
#include <gtest/gtest.h>

#include <cmath>

#include "alloy/assay/assay.h"
#include "alloy/perturb/perturb.h"
#include "test_assay_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::assay;
using alloy::test::merge_into;

constexpr int kSeeds = alloy::test::sweep_seeds(50);

alloy::BaseModelOptions tiny(alloy::ModelFamily kind, uint64_t seed, alloy::DType dtype) {
  alloy::BaseModelOptions o;
  o.arch.family = kind;
  o.arch.layers = 2;
  o.arch.hidden = 64;
  o.arch.intermediate = 96;
  o.arch.experts = 2;
  o.arch.moe_intermediate = 32;
  o.arch.vocab = 128;
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

alloy::ModelFamily kind_for(int seed) { return seed % 2 ? alloy::ModelFamily::kMoe : alloy::ModelFamily::kLlama; }

// Casts a model to bf16 the way a trainer saves one: each value rounded once from float32.
void cast_to_bf16(const fs::path& in, const fs::path& out) {
  merge_into("merge_method: passthrough\nmodels:\n  - model: " + in.string() + "\ndtype: bfloat16\n", out);
}

TEST(AssayNull, UnrelatedModelsAreNeverMerges) {
  int independent = 0;
  for (int seed = 1; seed <= kSeeds; ++seed) {
    alloy::test::TempDir dir;
    const auto base = tiny(kind_for(seed), uint64_t(seed), alloy::DType::BF16);
    alloy::FineTuneOptions ft;
    ft.relative_delta = 0.05;
    alloy::synth_family(dir / "fam", base, 2, 1, ft);
    auto other = base;
    other.seed = uint64_t(seed) + 100000;
    alloy::synth_base_model(dir / "suspect", other);
    const auto r = assay(dir / "suspect", {(dir / "fam" / "base").string(), (dir / "fam" / "ft_1").string(),
                                           (dir / "fam" / "ft_2").string(), (dir / "fam" / "unrelated_1").string()});
    EXPECT_NE(r.verdict, "merge") << "seed " << seed << ": " << r.evidence.dump();
    independent += r.verdict == "independent";
  }
  EXPECT_EQ(independent, kSeeds);
}

TEST(AssayNull, SiblingFineTunesAreNeverMerges) {
  int fine_tunes = 0;
  for (int seed = 1; seed <= kSeeds; ++seed) {
    alloy::test::TempDir dir;
    // Deltas 0.5% ... 10% of the weight norm, geometrically spaced over the seeds.
    const double delta = 0.005 * std::pow(20.0, double(seed - 1) / double(kSeeds - 1));
    alloy::FineTuneOptions ft;
    ft.relative_delta = delta;
    alloy::synth_family(dir / "master", tiny(kind_for(seed), uint64_t(seed), alloy::DType::F32), 3, 0, ft);
    for (const char* m : {"base", "ft_1", "ft_2", "ft_3"}) cast_to_bf16(dir / "master" / m, dir / m);
    const std::string base = (dir / "base").string(), a = (dir / "ft_1").string(), b = (dir / "ft_2").string();
    const auto with_base = assay(dir / "ft_3", {base, a, b});
    EXPECT_NE(with_base.verdict, "merge") << "seed " << seed << " delta " << delta << ": " << with_base.evidence.dump();
    fine_tunes += with_base.verdict == "fine-tune" && with_base.candidates[size_t(*with_base.base)].path == base;
    const auto without_base = assay(dir / "ft_3", {a, b});
    EXPECT_NE(without_base.verdict, "merge") << "seed " << seed << " delta " << delta << ": "
                                             << without_base.evidence.dump();
  }
  EXPECT_EQ(fine_tunes, kSeeds);
}

TEST(AssayNull, CorrelatedSiblingsAreNeverMerges) {
  constexpr int kCorrelatedSeeds = alloy::test::sweep_seeds(200);
  int with_base_fine_tunes = 0;
  for (int seed = 1; seed <= kCorrelatedSeeds; ++seed) {
    alloy::test::TempDir dir;
    alloy::FineTuneOptions ft;
    ft.relative_delta = 0.005 * std::pow(20.0, double((seed - 1) % 25) / 24.0);
    ft.sibling_correlation = 0.8;
    alloy::synth_family(dir / "fam", tiny(kind_for(seed), uint64_t(seed) + 7000, alloy::DType::BF16), 3, 0, ft);
    const std::string b = (dir / "fam" / "base").string(), a1 = (dir / "fam" / "ft_1").string(),
                      a2 = (dir / "fam" / "ft_2").string();
    const auto with_base = assay(dir / "fam" / "ft_3", {b, a1, a2});
    EXPECT_NE(with_base.verdict, "merge") << "seed " << seed << ": " << with_base.evidence.dump();
    with_base_fine_tunes += with_base.verdict == "fine-tune";
    const auto without_base = assay(dir / "fam" / "ft_3", {a1, a2});
    EXPECT_NE(without_base.verdict, "merge") << "seed " << seed << ": " << without_base.evidence.dump();
  }
  EXPECT_EQ(with_base_fine_tunes, kCorrelatedSeeds);
}

// The same correlated siblings rounded to int4 (groups of 32): the rounding widens every standard
// error, so the sameness test of the weights (its heterogeneity z) and the lowered cos_fit bar
// with the ancestor present must still never let a sibling through.
TEST(AssayNull, CorrelatedSiblingsRoundedToInt4AreNeverMerges) {
  constexpr int kInt4Seeds = alloy::test::sweep_seeds(60);
  for (int seed = 1; seed <= kInt4Seeds; ++seed) {
    alloy::test::TempDir dir;
    alloy::FineTuneOptions ft;
    ft.relative_delta = 0.005 * std::pow(20.0, double((seed - 1) % 12) / 11.0);
    ft.sibling_correlation = 0.8;
    alloy::synth_family(dir / "fam", tiny(kind_for(seed), uint64_t(seed) + 9000, alloy::DType::BF16), 3, 0, ft);
    alloy::PerturbOptions round;
    round.kind = alloy::PerturbKind::kReround;
    round.format = alloy::ReroundFormat::kInt4;
    alloy::perturb_model(dir / "fam" / "ft_3", dir / "suspect", round);
    const std::string b = (dir / "fam" / "base").string(), a1 = (dir / "fam" / "ft_1").string(),
                      a2 = (dir / "fam" / "ft_2").string();
    const auto with_base = assay(dir / "suspect", {b, a1, a2});
    EXPECT_NE(with_base.verdict, "merge") << "seed " << seed << ": " << with_base.evidence.dump();
    const auto without_base = assay(dir / "suspect", {a1, a2});
    EXPECT_NE(without_base.verdict, "merge") << "seed " << seed << ": " << without_base.evidence.dump();
  }
}

TEST(AssayRio, BlendOfTwoMoeModelsInBf16) {
  alloy::test::TempDir dir;
  auto q = tiny(alloy::ModelFamily::kMoe, 35, alloy::DType::BF16);
  q.arch.layers = 4;
  q.arch.experts = 4;
  alloy::synth_base_model(dir / "qwen", q);
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.08;
  ft.seed = 397;
  alloy::synth_fine_tune(dir / "qwen", dir / "nex", ft);
  merge_into("merge_method: linear\nmodels:\n  - model: " + (dir / "nex").string() +
                 "\n    parameters: {weight: 0.571}\n  - model: " + (dir / "qwen").string() +
                 "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
             dir / "rio");
  const auto r = assay(dir / "rio", {(dir / "qwen").string(), (dir / "nex").string()});
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  ASSERT_GE(r.components.size(), 6u);
  for (const auto& c : r.components) {
    EXPECT_NEAR(c.weight_mean[1], 0.571, 0.005) << c.name;
    EXPECT_NEAR(c.weight_mean[0], 0.429, 0.005) << c.name;
    EXPECT_GT(c.cos_fit_mean, 0.99) << c.name;
  }
  EXPECT_LT(r.evidence["log10_false_positive"].get<double>(), -20);
}

}  // namespace
