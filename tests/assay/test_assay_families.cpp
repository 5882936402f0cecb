// The assay on real layouts (alloy-synth's named families): a linear merge of two fine-tunes is
// recovered as a linear merge with the right weights, and the unrelated candidate is not involved.
// DeepSeek-V3 is left out: its tiny MLA norms (q_a/kv_a layernorms) keep the norms' z below the
// merge threshold and the verdict falls back to fine-tune (docs/architectures.md, open work).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "alloy/assay/assay.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
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

// Mixtral names its experts block_sparse_moe.experts.E.w1/w3/w2 and its router
// block_sparse_moe.gate: the assay finds them through the architecture model and undoes a
// permutation of one layer's experts (done here by hand: tensors renamed, router rows reordered).
TEST(AssayFamilies, MixtralPermutedExpertsAreRecovered) {
  test::TempDir dir;
  BaseModelOptions base;
  base.arch.family = ModelFamily::kMixtral;
  base.arch.layers = 2;
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
  merge_options.out_dir = dir / "merged";
  merge_options.hash_inputs = merge_options.hash_outputs = false;
  run_merge(plan, merge_options);

  // Slot s of layer 1 holds the original expert held[s] (perturb's convention, which the assay
  // reports); the router's rows follow.
  const std::vector<int> held = {2, 0, 3, 1};
  std::vector<int> slot_of(held.size());
  for (size_t s = 0; s < held.size(); ++s) slot_of[size_t(held[s])] = int(s);
  const Model merged = Model::open(dir / "merged");
  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> bytes;
  const std::string layer = "model.layers.1.block_sparse_moe.";
  for (const auto& t : merged.tensors()) {
    std::string name = t.name();
    std::vector<uint8_t> data(t.data(), t.data() + t.info->nbytes());
    if (name.rfind(layer + "experts.", 0) == 0) {
      const size_t at = (layer + "experts.").size();
      const int e = name[at] - '0';
      name = layer + "experts." + std::to_string(slot_of[size_t(e)]) + name.substr(at + 1);
    } else if (name == layer + "gate.weight") {
      const size_t row = t.info->nbytes() / t.info->shape[0];
      for (size_t slot = 0; slot < held.size(); ++slot) {
        std::memcpy(data.data() + slot * row, t.data() + size_t(held[slot]) * row, row);
      }
    }
    specs.push_back({name, t.info->dtype, t.info->shape});
    bytes.push_back(std::move(data));
  }
  std::filesystem::create_directories(dir / "permuted");
  std::vector<const void*> data;
  for (const auto& b : bytes) data.push_back(b.data());
  write_safetensors_file(dir / "permuted" / "model.safetensors", specs, data);
  std::filesystem::copy_file(dir / "merged" / "config.json", dir / "permuted" / "config.json");

  AssayOptions options;
  options.suspect = dir / "permuted";
  for (const char* c : {"base", "ft_1", "ft_2", "unrelated_1"}) options.candidates.push_back((dir / "fam" / c).string());
  const AssayResult r = run_assay(options);
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  EXPECT_NEAR(r.candidates[1].weight, 0.7, 0.005);
  EXPECT_NEAR(r.candidates[2].weight, 0.3, 0.005);
  EXPECT_FALSE(r.candidates[3].involved);
  bool found = false;
  for (const auto& p : r.permutations) {
    if (p.value("kind", "") != "experts") continue;
    EXPECT_EQ(p["layer"], 1);
    EXPECT_EQ(p["permutation"], nlohmann::json(held)) << p.dump();
    found = true;
  }
  EXPECT_TRUE(found) << r.permutations.dump();
}

INSTANTIATE_TEST_SUITE_P(Families, AssayFamilies,
                         ::testing::Values("mistral", "gemma2", "phi3", "mixtral", "qwen3", "qwen3_moe", "qwen3_next",
                                           "qwen3_5_moe", "gpt_oss"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace alloy
