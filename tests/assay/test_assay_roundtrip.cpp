// alloy-assay round trips: synthetic families merged by alloy-merge's library with known recipes,
// assayed, and the recovered recipe checked against the truth, then re-run through the merge to
// rebuild the suspect. Dense (Llama-like) and MoE (Qwen-MoE-like) families.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "alloy/assay/assay.h"
#include "alloy/merge/merge.h"
#include "alloy/core/model.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_assay_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::AssayFamily;
using alloy::test::assay;
using alloy::test::candidate;
using alloy::test::merge_into;

class AssayRoundTrip : public ::testing::TestWithParam<alloy::ModelFamily> {
 protected:
  // One family per test: base, ft_1..ft_3 (5% deltas, or `delta`), unrelated_1.
  const AssayFamily& family(double delta = 0.05) {
    if (!family_) family_ = std::make_unique<AssayFamily>(GetParam(), 11, delta);
    return *family_;
  }
  std::unique_ptr<AssayFamily> family_;
};

// The weight the assay measured for a candidate path.
double weight_of(const alloy::AssayResult& r, const std::string& path) {
  for (const auto& c : r.candidates) {
    if (c.path == path) return c.weight;
  }
  ADD_FAILURE() << "no candidate " << path;
  return NAN;
}

// Rebuilds the suspect from the recovered recipe (as YAML, through the parser and planner) and
// returns the largest difference in units of the last place over every tensor.
uint64_t rebuild_max_ulp(const alloy::AssayResult& r, const fs::path& suspect, const fs::path& work) {
  const std::string yaml = alloy::recipe_to_yaml(r.recipe);
  const fs::path out = work / "rebuilt";
  merge_into(yaml, out);
  return alloy::test::max_ulp_difference(suspect, out);
}

TEST_P(AssayRoundTrip, LinearTwoParents) {
  const auto& f = family();
  const fs::path s = f.dir / "linear2";
  merge_into("merge_method: linear\nmodels:\n  - model: " + candidate(f, "ft_1") +
                 "\n    parameters: {weight: 0.571}\n  - model: " + candidate(f, "ft_2") +
                 "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_1")), 0.571, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_2")), 0.429, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "base")), 0.0, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "unrelated_1")), 0.0, 0.005);
  EXPECT_FALSE(r.base.has_value());
  ASSERT_EQ(r.recipe["models"].size(), 2u);
  EXPECT_EQ(r.evidence["rebuild"]["exact_fraction"], 1.0);
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, LinearThreeParents) {
  const auto& f = family();
  const fs::path s = f.dir / "linear3";
  merge_into("merge_method: linear\nmodels:\n  - model: " + candidate(f, "ft_1") +
                 "\n    parameters: {weight: 0.2}\n  - model: " + candidate(f, "ft_2") +
                 "\n    parameters: {weight: 0.5}\n  - model: " + candidate(f, "ft_3") +
                 "\n    parameters: {weight: 0.3}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates_with_ft3());
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_1")), 0.2, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_2")), 0.5, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_3")), 0.3, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "base")), 0.0, 0.005);
  EXPECT_EQ(r.recipe["models"].size(), 3u);
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, Slerp) {
  // 10% deltas: cos(base, ft) ~ 0.995 < mergekit's 0.9995 lerp threshold, so slerp is not lerp.
  const auto& f = family(0.10);
  const fs::path s = f.dir / "slerp";
  merge_into("merge_method: slerp\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
                 candidate(f, "base") + "\n  - model: " + candidate(f, "ft_1") +
                 "\nparameters: {t: 0.35}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  ASSERT_EQ(r.method, "slerp");
  ASSERT_TRUE(r.base.has_value());
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "base"));
  ASSERT_TRUE(r.recipe["parameters"]["t"].is_number());
  EXPECT_NEAR(r.recipe["parameters"]["t"].get<double>(), 0.35, 0.02);
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, SlerpWithPerLayerGradients) {
  // The classic mergekit slerp recipe: t varies over the layers, differently for attention and MLP.
  const auto& f = family(0.10);
  const fs::path s = f.dir / "slerp_gradient";
  merge_into("merge_method: slerp\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
                 candidate(f, "base") + "\n  - model: " + candidate(f, "ft_1") +
                 "\nparameters:\n  t:\n    - filter: self_attn\n      value: [0.2, 0.6]\n    - filter: mlp\n"
                 "      value: [0.7, 0.3]\n    - value: 0.5\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  ASSERT_EQ(r.method, "slerp");
  EXPECT_TRUE(r.recipe["parameters"]["t"].is_array()) << r.recipe.dump();
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, Ties) {
  const auto& f = family();
  const fs::path s = f.dir / "ties";
  merge_into("merge_method: ties\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
                 candidate(f, "ft_1") + "\n    parameters: {weight: 0.6, density: 0.5}\n  - model: " +
                 candidate(f, "ft_2") + "\n    parameters: {weight: 0.4, density: 0.7}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  ASSERT_EQ(r.method, "ties");
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "base"));
  double density[2] = {NAN, NAN}, weight[2] = {NAN, NAN};
  for (const auto& m : r.recipe["models"]) {
    const int i = m["model"] == candidate(f, "ft_1") ? 0 : 1;
    density[i] = m["parameters"]["density"];
    weight[i] = m["parameters"]["weight"];
  }
  EXPECT_NEAR(density[0], 0.5, 0.05);
  EXPECT_NEAR(density[1], 0.7, 0.05);
  EXPECT_NEAR(weight[0] / (weight[0] + weight[1]), 0.6, 0.02);  // normalize: only ratios matter
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, DareTies) {
  const auto& f = family();
  const fs::path s = f.dir / "dare";
  merge_into("merge_method: dare_ties\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
                 candidate(f, "ft_1") + "\n    parameters: {weight: 0.5, density: 0.5}\n  - model: " +
                 candidate(f, "ft_2") + "\n    parameters: {weight: 0.5, density: 0.6}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "dare_ties");
  ASSERT_TRUE(r.base.has_value());
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "base"));
  for (const auto& m : r.recipe["models"]) EXPECT_NEAR(m["parameters"]["density"].get<double>(), 0.55, 0.15);
}

TEST_P(AssayRoundTrip, TaskArithmetic) {
  const auto& f = family();
  const fs::path s = f.dir / "task";
  merge_into("merge_method: task_arithmetic\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
                 candidate(f, "ft_1") + "\n    parameters: {weight: 0.7}\n  - model: " + candidate(f, "ft_2") +
                 "\n    parameters: {weight: 0.5}\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  ASSERT_EQ(r.method, "task_arithmetic");
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "base"));
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_1")), 0.7, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "ft_2")), 0.5, 0.005);
  EXPECT_NEAR(weight_of(r, candidate(f, "base")), -0.2, 0.005);
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 1u);
}

TEST_P(AssayRoundTrip, PassthroughLayerStacking) {
  const auto& f = family();
  const fs::path s = f.dir / "stack";
  merge_into("merge_method: passthrough\nslices:\n  - sources:\n      - model: " + candidate(f, "ft_1") +
                 "\n        layer_range: [0, 2]\n  - sources:\n      - model: " + candidate(f, "ft_2") +
                 "\n        layer_range: [1, 2]\ndtype: bfloat16\n",
             s);
  const auto r = assay(s, f.candidates());
  EXPECT_EQ(r.verdict, "merge");
  ASSERT_EQ(r.method, "passthrough");
  const auto& map = r.evidence["layer_map"];
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[2]["model"], candidate(f, "ft_2"));
  EXPECT_EQ(map[2]["source_layer"], 1);
  EXPECT_EQ(map[1]["model"], candidate(f, "ft_1"));
  EXPECT_LE(rebuild_max_ulp(r, s, f.dir), 0u);
}

TEST_P(AssayRoundTrip, CopyAndFineTune) {
  const auto& f = family();
  auto r = assay(f.dir / "ft_2", f.candidates());
  EXPECT_EQ(r.verdict, "copy");
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "ft_2"));
  r = assay(f.dir / "ft_3", f.candidates());  // a sibling: derived from base, not a merge
  EXPECT_EQ(r.verdict, "fine-tune");
  EXPECT_EQ(r.candidates[size_t(*r.base)].path, candidate(f, "base"));
  EXPECT_TRUE(r.recipe.empty());
}

INSTANTIATE_TEST_SUITE_P(Families, AssayRoundTrip, ::testing::Values(alloy::ModelFamily::kLlama, alloy::ModelFamily::kMoe),
                         [](const auto& info) { return std::string(alloy::family_name(info.param)); });

}  // namespace
