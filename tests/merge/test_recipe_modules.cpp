// `modules:` and `residual_weight` (mergekit's MergeConfiguration.modules and
// OutputSliceDefinition.residual_weight; docs/recipes.md "Modules"). On alloy-synth's Qwen3.5-MoE
// with its vision tower, each module is merged by its own recipe entry; the expected output of
// every tensor is worked out here from its name alone (which module it belongs to, which block,
// the layer position t of that block inside the module), never from the plan: linear with weights
// 1 and 0 returns the weight-1 model's tensor bit for bit, so each output tensor must equal one
// input's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "tiny_model.h"
#include "test_utils.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;

// base, ft_1, ft_2 of one family (4 decoder layers; the Qwen3.5 vision tower has 2 blocks).
class Models {
 public:
  explicit Models(const std::string& family) {
    BaseModelOptions base = test::tiny_family_model(*family_from_name(family), 4);
    synth_base_model(dir_ / "base", base);
    for (int i = 1; i <= 2; ++i) {
      FineTuneOptions ft;
      ft.seed = 200 + static_cast<uint64_t>(i);
      ft.relative_delta = 0.1;
      synth_fine_tune(dir_ / "base", dir_ / ("ft_" + std::to_string(i)), ft);
    }
  }
  const fs::path& path() const { return dir_.path(); }

  MergePlan plan(const std::string& recipe) const {
    PlanOptions options;
    options.base_dir = dir_.path();
    return plan_merge(parse_recipe(recipe, "modules.yml"), options);
  }
  std::unique_ptr<Model> merge(const std::string& recipe, const std::string& out_name) const {
    const MergePlan p = plan(recipe);
    MergeOptions options;
    options.out_dir = dir_.path() / out_name;
    options.hash_inputs = options.hash_outputs = false;
    run_merge(p, options);
    return std::make_unique<Model>(Model::open(options.out_dir));
  }

 private:
  test::TempDir dir_;
};

const Models& qwen35() {
  static const Models models("qwen3_5_moe");
  return models;
}

bool same_bytes(const ModelTensor& a, const ModelTensor& b) {
  return a.info->shape == b.info->shape && a.info->dtype == b.info->dtype &&
         std::memcmp(a.data(), b.data(), a.info->nbytes()) == 0;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RecipeModules, EachModuleMergedByItsOwnEntryWithItsOwnLayerPositions) {
  const Models& m = qwen35();
  // text_decoder: ft_2 (weights 0, 1). vision_tower: per-model gradients over its 2 blocks, so
  // block 0 (t = 0) and the tensors before the blocks (patch and position embeddings, t = 0) are
  // ft_1's, block 1 (t = 1) ft_2's. multi_modal_projector: ft_1 has weight 1 of its own; ft_2 has
  // none, so the module's weight 0 applies, not the recipe's 1 (slice > module > recipe).
  const auto out = m.merge(R"(merge_method: linear
parameters:
  weight: 1
modules:
  text_decoder:
    models:
      - model: ft_1
        parameters: {weight: 0}
      - model: ft_2
        parameters: {weight: 1}
  vision_tower:
    models:
      - model: ft_1
        parameters: {weight: [1, 0]}
      - model: ft_2
        parameters: {weight: [0, 1]}
  multi_modal_projector:
    parameters:
      weight: 0
    models:
      - model: ft_1
        parameters: {weight: 1}
      - model: ft_2
)",
                           "all_modules");
  const Model ft1 = Model::open(m.path() / "ft_1"), ft2 = Model::open(m.path() / "ft_2");
  EXPECT_EQ(out->tensors().size(), ft1.tensors().size());
  size_t vision = 0, projector = 0;
  for (const auto& t : ft1.tensors()) {
    const std::string& name = t.name();
    const bool from_ft1 = starts_with(name, "model.visual.merger.") || starts_with(name, "model.visual.blocks.0.") ||
                          starts_with(name, "model.visual.patch_embed.") || starts_with(name, "model.visual.pos_embed.");
    vision += starts_with(name, "model.visual.") && !starts_with(name, "model.visual.merger.");
    projector += starts_with(name, "model.visual.merger.");
    const ModelTensor* written = out->find(name);
    ASSERT_NE(written, nullptr) << name;
    const Model& expected = from_ft1 ? ft1 : ft2;
    EXPECT_TRUE(same_bytes(*written, *expected.find(name))) << name << " should be " << (from_ft1 ? "ft_1" : "ft_2")
                                                            << "'s";
  }
  EXPECT_EQ(vision, 2u * 12 + 3);
  EXPECT_EQ(projector, 6u);
  EXPECT_EQ(out->config()["text_config"]["num_hidden_layers"], 4);
  EXPECT_EQ(out->config()["vision_config"]["depth"], 2);
}

TEST(RecipeModules, ModuleSlicesStackBlocksAndSetTheModulesLayerCount) {
  const Models& m = qwen35();
  const auto out = m.merge(R"(merge_method: passthrough
modules:
  text_decoder:
    models:
      - model: ft_1
  vision_tower:
    slices:
      - sources:
          - model: ft_1
            layer_range: [0, 2]
      - sources:
          - model: ft_2
            layer_range: [1, 2]
        residual_weight: 0.5
  multi_modal_projector:
    models:
      - model: ft_2
)",
                           "stacked_vision");
  const Model ft1 = Model::open(m.path() / "ft_1"), ft2 = Model::open(m.path() / "ft_2");
  // Output block j <- (model, block): 0 <- ft_1.0, 1 <- ft_1.1, 2 <- ft_2.1.
  const std::pair<const Model*, int> origin[] = {{&ft1, 0}, {&ft1, 1}, {&ft2, 1}};
  size_t blocks = 0;
  for (const auto& t : out->tensors()) {
    const std::string& name = t.name();
    std::string expected_name = name;
    const Model* expected = &ft1;
    if (starts_with(name, "model.visual.blocks.")) {
      const size_t dot = name.find('.', std::strlen("model.visual.blocks."));
      const int j = std::stoi(name.substr(std::strlen("model.visual.blocks."), dot));
      ASSERT_LT(j, 3) << name;
      expected = origin[j].first;
      expected_name = "model.visual.blocks." + std::to_string(origin[j].second) + name.substr(dot);
      ++blocks;
    } else if (starts_with(name, "model.visual.merger.")) {
      expected = &ft2;
    }
    EXPECT_TRUE(same_bytes(t, *expected->find(expected_name))) << name;
  }
  EXPECT_EQ(blocks, 3u * 12);
  EXPECT_EQ(out->config()["vision_config"]["depth"], 3);
  EXPECT_EQ(out->config()["text_config"]["num_hidden_layers"], 4);
}

TEST(RecipeModules, UnlistedModulesAreNotWrittenAndSaySo) {
  const Models& m = qwen35();
  const MergePlan plan = m.plan(R"(merge_method: linear
modules:
  text_decoder:
    models:
      - model: ft_1
        parameters: {weight: 1}
      - model: ft_2
        parameters: {weight: 1}
)");
  for (const auto& t : plan.tensors) EXPECT_FALSE(starts_with(t.name, "model.visual.")) << t.name;
  ASSERT_EQ(plan.warnings.size(), 2u);
  EXPECT_NE(plan.warnings[0].find("module 'multi_modal_projector' is not in the recipe's modules:, so its 6 tensor(s)"),
            std::string::npos)
      << plan.warnings[0];
  EXPECT_NE(plan.warnings[1].find("module 'vision_tower'"), std::string::npos) << plan.warnings[1];
  // The MTP head belongs to no module of its own: it follows the language model.
  EXPECT_TRUE(std::any_of(plan.tensors.begin(), plan.tensors.end(),
                          [](const PlannedTensor& t) { return starts_with(t.name, "mtp."); }));
}

TEST(RecipeModules, ASingleModuleFamilyHasOnlyDefault) {
  static const Models llama("llama");
  const MergePlan plan = llama.plan(R"(merge_method: linear
modules:
  default:
    models:
      - model: ft_1
        parameters: {weight: 1}
)");
  EXPECT_EQ(plan.output_layers, 4);
  const std::string e = error_of([&] {
    llama.plan("merge_method: linear\nmodules:\n  text_decoder:\n    models:\n      - model: ft_1\n");
  });
  EXPECT_NE(e.find("modules.yml:3:3: module 'text_decoder' is not a module of the Llama"), std::string::npos) << e;
  EXPECT_NE(e.find("its modules: default"), std::string::npos) << e;
}

TEST(RecipeModules, ErrorsNameTheRecipeLine) {
  const Models& m = qwen35();
  struct Case {
    const char* text;
    const char* expected;
  } cases[] = {
      {"merge_method: linear\nmodules:\n  text_decoder:\n    models: [ft_1]\n  vision:\n    models: [ft_1]\n",
       "modules.yml:5:3: module 'vision' is not a module of the Qwen3.5-MoE (with vision) architecture (of 'ft_1'); "
       "its modules: text_decoder, multi_modal_projector, vision_tower"},
      {"merge_method: linear\nmodules:\n  vision_tower:\n    models: [ft_1]\n",
       "modules.yml:3:3: modules: has no 'text_decoder'"},
      {"merge_method: passthrough\nmodules:\n  text_decoder:\n    models: [ft_1]\n  vision_tower:\n    slices:\n"
       "      - sources:\n          - model: ft_1\n            layer_range: [0, 3]\n",
       "modules.yml:8:13: layer_range [0, 3] of 'ft_1' is out of bounds: the model has 2 layers in module 'vision_tower'"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of([&] { m.plan(c.text); });
    EXPECT_NE(e.find(c.expected), std::string::npos) << "got: " << e;
  }
}

TEST(RecipeModules, ParseErrorsNameTheRecipeLine) {
  struct Case {
    const char* text;
    const char* expected;
  } cases[] = {
      {"merge_method: linear\nmodels: [a]\nmodules:\n  default:\n    models: [a]\n",
       "m.yml:3:1: use one of models, slices or modules, not several"},
      {"merge_method: linear\nmodules:\n  default:\n    parameters: {weight: 1}\n",
       "m.yml:4:5: module 'default' needs either models or slices"},
      {"merge_method: linear\nmodules:\n  default:\n    models: [a]\n    slice: []\n", "m.yml:5:5: unknown key 'slice'"},
      {"merge_method: linear\nmodules: [default]\n", "m.yml:2:10: modules must be a mapping"},
      {"merge_method: linear\nmodules:\n  default:\n    models: [a]\n  default:\n    models: [b]\n",
       "m.yml:5:3: module 'default' appears twice"},
      {"merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 1]\n"
       "    residual_weight: heavy\n",
       "m.yml:6:22: residual_weight must be a number or true/false, not 'heavy'"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of([&] { parse_recipe(c.text, "m.yml"); });
    EXPECT_NE(e.find(c.expected), std::string::npos) << "got: " << e;
  }
}

TEST(RecipeModules, ResidualWeightIsAcceptedAndChangesNothing) {
  const Models& m = qwen35();
  const std::string stack = R"(merge_method: passthrough
slices:
  - sources:
      - model: ft_1
        layer_range: [0, 2]
  - sources:
      - model: ft_2
        layer_range: [2, 4]
)";
  const Recipe parsed = parse_recipe(
      "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 1]\n"
      "    residual_weight: 0.25\n",
      "r.yml");
  ASSERT_TRUE(parsed.slices[0].residual_weight);
  EXPECT_EQ(*parsed.slices[0].residual_weight, 0.25);
  const auto plain = m.merge(stack, "residual_none");
  std::string with_weight = stack;
  with_weight.insert(with_weight.find("  - sources:\n      - model: ft_2"), "    residual_weight: 0.3\n");
  const MergePlan plan = m.plan(with_weight);
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("modules.yml:3:5: residual_weight is accepted"), std::string::npos)
      << plan.warnings[0];
  const auto weighted = m.merge(with_weight, "residual_weighted");
  ASSERT_EQ(plain->tensors().size(), weighted->tensors().size());
  for (const auto& t : plain->tensors()) EXPECT_TRUE(same_bytes(t, *weighted->find(t.name()))) << t.name();
}

TEST(RecipeModules, TheExampleRecipeRunsThroughTheTool) {
  // recipes/modules_vision.yml with alloy-merge, on the Qwen3.5-MoE fixture (base, ft_1, ft_2).
  const Models& m = qwen35();
  test::TempDir out;
  int status = -1;
  const std::string log = test::run_command("cd '" + m.path().string() + "' && '" + test::bin("alloy-merge") + "' -q '" +
                                                std::string(ALLOY_SOURCE_DIR) + "/recipes/modules_vision.yml' '" +
                                                (out / "m").string() + "' 2>&1",
                                            &status);
  ASSERT_EQ(status, 0) << log;
  const Model merged = Model::open(out / "m");
  const Model ft1 = Model::open(m.path() / "ft_1"), ft2 = Model::open(m.path() / "ft_2");
  EXPECT_EQ(merged.tensors().size(), ft1.tensors().size());
  // The tower's first block is ft_1's and its last ft_2's (weights 1 and 0 at t = 0 and t = 1).
  const std::string block = ".attn.qkv.weight";
  EXPECT_TRUE(same_bytes(*merged.find("model.visual.blocks.0" + block), *ft1.find("model.visual.blocks.0" + block)));
  EXPECT_TRUE(same_bytes(*merged.find("model.visual.blocks.1" + block), *ft2.find("model.visual.blocks.1" + block)));
}

}  // namespace
}  // namespace alloy
