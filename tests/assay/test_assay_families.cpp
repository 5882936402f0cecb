// The assay on real layouts (alloy-synth's named families): a linear merge of two fine-tunes is
// recovered as a linear merge with the right weights, and the unrelated candidate is not involved.
// DeepSeek-V3 is left out: its tiny MLA norms (q_a/kv_a layernorms) keep the norms' z below the
// merge threshold and the verdict falls back to fine-tune (docs/architectures.md, open work).
#include <gtest/gtest.h>

#include <cmath>

#include "alloy/assay/assay.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace alloy {
namespace {

class AssayFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(AssayFamilies, LinearMergeWeightsAreRecovered) {
  test::TempDir dir;
  BaseModelOptions base;
  base.arch.family = *family_from_name(GetParam());
  base.arch.layers = 4;
  base.arch.experts = 4;
  FineTuneOptions ft;
  synth_family(dir / "fam", base, 2, 1, ft);
  PlanOptions plan_options;
  plan_options.base_dir = dir / "fam";
  MergePlan plan = plan_merge(parse_recipe(R"(merge_method: linear
models:
  - model: ft_1
    parameters: {weight: 0.7}
  - model: ft_2
    parameters: {weight: 0.3}
)", "linear.yml"),
                              plan_options);
  MergeOptions merge_options;
  merge_options.out_dir = dir / "fam" / "merged";
  merge_options.hash_inputs = merge_options.hash_outputs = false;
  run_merge(plan, merge_options);

  AssayOptions options;
  options.suspect = dir / "fam" / "merged";
  for (const char* c : {"base", "ft_1", "ft_2", "unrelated_1"}) options.candidates.push_back((dir / "fam" / c).string());
  const AssayResult r = run_assay(options);
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  ASSERT_EQ(r.candidates.size(), 4u);
  EXPECT_NEAR(r.candidates[1].weight, 0.7, 0.005);
  EXPECT_NEAR(r.candidates[2].weight, 0.3, 0.005);
  EXPECT_TRUE(r.candidates[1].involved);
  EXPECT_TRUE(r.candidates[2].involved);
  EXPECT_FALSE(r.candidates[3].involved) << "the unrelated model";
  // No tensor of a sub-model (vision tower, MTP head) is counted in a decoder layer.
  for (const auto& t : r.tensors) {
    if (t.name.rfind("mtp.", 0) == 0 || t.name.rfind("model.visual.", 0) == 0) {
      EXPECT_EQ(t.layer, -1) << t.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, AssayFamilies,
                         ::testing::Values("mistral", "gemma2", "phi3", "mixtral", "qwen3", "qwen3_moe", "qwen3_next",
                                           "qwen3_5_moe", "gpt_oss"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace alloy
