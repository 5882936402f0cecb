// Recipes: parameter resolution (gradients, filters, precedence, slices) and planning against the
// golden models, checked against the per-tensor parameters mergekit's planner produced.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

alloy::PlanOptions golden_options() {
  alloy::PlanOptions o;
  o.base_dir = fs::path(alloy::test::data_dir()) / "golden";
  return o;
}

TEST(RecipeSettings, GradientInterpolatesInDoubleLikeMergekit) {
  const auto r = alloy::parse_recipe(
      "merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters:\n  t: [0, 0.5, 0.3, 0.7, 1]\n", "r.yml");
  const alloy::Setting& t = r.parameters.at("t");
  EXPECT_EQ(*t.evaluate(0.0, "x"), 0.0);
  EXPECT_EQ(*t.evaluate(1.0, "x"), 1.0);
  EXPECT_EQ(*t.evaluate(1.0 / 3.0, "x"), (1 - (4.0 / 3.0 - 1)) * 0.5 + (4.0 / 3.0 - 1) * 0.3);
  EXPECT_EQ(*t.evaluate(0.5, "x"), 0.3);
  // Python's arithmetic (same order) gives 0.42000000000000004 and 0.7400000000000001 here, as
  // computed by mergekit's evaluate_setting for layers 2 and 4 of a 6-layer slice.
  const auto w = alloy::parse_recipe("merge_method: linear\nmodels: [a]\nparameters:\n  weight: [0.1, 0.5, 0.9]\n",
                                     "w.yml");
  EXPECT_EQ(*w.parameters.at("weight").evaluate(2.0 / 5.0, "x"), 0x1.ae147ae147ae2p-2);
  EXPECT_EQ(*w.parameters.at("weight").evaluate(4.0 / 5.0, "x"), 0x1.7ae147ae147afp-1);
}

TEST(RecipeSettings, FiltersAreSubstringsFirstMatchWins) {
  const auto r = alloy::parse_recipe(
      "merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters:\n  t:\n    - filter: self_attn\n"
      "      value: 0.1\n    - filter: attn\n      value: 0.2\n    - filter: mlp\n      value: [0, 1]\n",
      "f.yml");
  const alloy::Setting& t = r.parameters.at("t");
  EXPECT_EQ(*t.evaluate(0.5, "model.layers.0.self_attn.q_proj.weight"), 0.1);
  EXPECT_EQ(*t.evaluate(0.5, "model.layers.0.cross_attn.q_proj.weight"), 0.2);
  EXPECT_EQ(*t.evaluate(0.25, "model.layers.0.mlp.up_proj.weight"), 0.25);
  EXPECT_FALSE(t.evaluate(0.5, "model.norm.weight").has_value());
  const auto fallback = alloy::parse_recipe(
      "merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters:\n  t:\n    - filter: mlp\n      value: 1\n"
      "    - value: 0.5\n",
      "g.yml");
  EXPECT_EQ(*fallback.parameters.at("t").evaluate(0.0, "model.norm.weight"), 0.5);
  EXPECT_EQ(*fallback.parameters.at("t").evaluate(0.0, "model.layers.1.mlp.up_proj.weight"), 1.0);
}

TEST(RecipePlan, PrecedenceSourceThenSliceThenGlobalThenDefault) {
  const std::string text =
      "merge_method: ties\nbase_model: models/base\nparameters:\n  density: 0.9\n  weight: 0.25\n"
      "slices:\n  - sources:\n      - model: models/ft_a\n        layer_range: [0, 4]\n        parameters:\n"
      "          weight: 0.5\n      - model: models/ft_b\n        layer_range: [0, 4]\n"
      "      - model: models/base\n        layer_range: [0, 4]\n    parameters:\n      density: 0.4\n"
      "      normalize: false\n";
  const auto plan = alloy::plan_merge(alloy::parse_recipe(text, "p.yml"), golden_options());
  const auto& t = plan.tensors[1];  // a layer-0 tensor
  ASSERT_EQ(t.sources.size(), 3u);
  EXPECT_EQ(t.sources[0].params.at("weight"), 0.5);    // source level
  EXPECT_EQ(t.sources[1].params.at("weight"), 0.25);   // global level
  EXPECT_EQ(t.sources[0].params.at("density"), 0.4);   // slice level beats global
  EXPECT_EQ(t.method_params.at("normalize"), 0.0);     // slice level
  EXPECT_EQ(t.method_params.at("lambda"), 1.0);        // method default
  EXPECT_EQ(t.base_index, 2);
  EXPECT_EQ(t.sources[2].params.at("weight"), 0.25);   // global values reach the base too
}

TEST(RecipePlan, ModelsListAppendsBaseLastAndStacksSlices) {
  const auto plan = alloy::plan_merge(
      alloy::parse_recipe("merge_method: ties\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n"
                          "    parameters:\n      weight: 1\n",
                          "m.yml"),
      golden_options());
  EXPECT_EQ(plan.tensors[0].sources.size(), 2u);
  EXPECT_EQ(plan.model_names[plan.tensors[0].sources.back().model], "models/base");
  EXPECT_TRUE(plan.tensors[0].sources.back().is_base);

  const auto stack = alloy::plan_merge(
      alloy::parse_recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_a\n"
                          "        layer_range: [0, 3]\n  - sources:\n      - model: models/ft_b\n"
                          "        layer_range: [1, 4]\n",
                          "s.yml"),
      golden_options());
  EXPECT_EQ(stack.output_layers, 6);
  EXPECT_EQ(stack.tensors.size(), 2u + 6 * 9 + 1);
  for (const auto& t : stack.tensors) {
    if (t.name == "model.layers.4.self_attn.q_proj.weight") {
      EXPECT_EQ(stack.model_names[t.sources[0].model], "models/ft_b");
      EXPECT_EQ(t.sources[0].tensor, "model.layers.2.self_attn.q_proj.weight");
      EXPECT_EQ(t.layer_t, 0.5);
    }
    if (t.name == "model.embed_tokens.weight") {
      EXPECT_EQ(stack.model_names[t.sources[0].model], "models/ft_a");
    }
    if (t.name == "lm_head.weight") {
      EXPECT_EQ(stack.model_names[t.sources[0].model], "models/ft_b");
    }
  }
}

// Every golden case: our planner's per-tensor sources and parameters equal mergekit's.
TEST(RecipeGolden, ResolvedParametersMatchMergekitPlanner) {
  const fs::path golden = fs::path(alloy::test::data_dir()) / "golden";
  const json manifest = json::parse(alloy::test::read_bytes(golden / "manifest.json"));
  for (const auto& c : manifest["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto plan = alloy::plan_merge(alloy::load_recipe(golden / c["recipe"].get<std::string>()), golden_options());
    const json resolved = json::parse(alloy::test::read_bytes(golden / c["expected"].get<std::string>() / "resolved.json"));
    const json& common = resolved["common"];
    ASSERT_EQ(plan.tensors.size(), resolved["tensors"].size());
    for (const auto& expected : resolved["tensors"]) {
      const std::string name = expected["out"];
      const auto it = std::find_if(plan.tensors.begin(), plan.tensors.end(),
                                   [&](const alloy::PlannedTensor& t) { return t.name == name; });
      ASSERT_NE(it, plan.tensors.end()) << name;
      EXPECT_NEAR(it->layer_t, expected["layer_t"].get<double>(), 1e-6) << name;  // stored with 6 digits
      if (expected.contains("src")) {
        ASSERT_EQ(it->sources.size(), expected["src"].size()) << name;
        for (size_t k = 0; k < it->sources.size(); ++k) {
          EXPECT_EQ(plan.model_names[it->sources[k].model], expected["src"][k][0]) << name;
          EXPECT_EQ(it->sources[k].tensor, expected["src"][k][1]) << name;
        }
      }
      const json& per_model = expected.contains("tensor_parameters") ? expected["tensor_parameters"]
                                                                     : common.value("tensor_parameters", json::object());
      for (const auto& source : it->sources) {
        const std::string model = plan.model_names[source.model];
        if (!per_model.contains(model)) continue;
        for (const auto& [param, value] : per_model[model].items()) {
          if (value.is_null()) {
            EXPECT_FALSE(source.params.count(param)) << name << " " << model << " " << param;
          } else {
            ASSERT_TRUE(source.params.count(param)) << name << " " << model << " " << param;
            EXPECT_EQ(source.params.at(param), value.get<double>()) << name << " " << model << " " << param;
          }
        }
      }
      for (const char* key : {"t", "normalize"}) {
        const json value = expected.contains(key) ? expected[key] : common.value(key, json());
        if (value.is_null()) continue;
        ASSERT_TRUE(it->method_params.count(key)) << name << " " << key;
        EXPECT_EQ(it->method_params.at(key), value.is_boolean() ? double(value.get<bool>()) : value.get<double>())
            << name << " " << key;
      }
    }
  }
}

}  // namespace

namespace {

// A one-layer model whose up_proj has `rows` rows (everything else as in its siblings).
void write_one_layer_model(const fs::path& dir, uint64_t rows) {
  fs::create_directories(dir);
  using alloy::test::tensor_entry;
  const uint64_t up = rows * 4 * 4;
  const std::string header = "{" + tensor_entry("model.embed_tokens.weight", "F32", {8, 4}, 0, 128) + "," +
                             tensor_entry("model.layers.0.mlp.up_proj.weight", "F32", {rows, 4}, 128, 128 + up) +
                             "," + tensor_entry("model.norm.weight", "F32", {4}, 128 + up, 144 + up) + "}";
  alloy::test::write_safetensors(dir / "model.safetensors", header, std::string(144 + up, '\0'));
  alloy::test::write_bytes(dir / "config.json",
                           R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":1})");
}

}  // namespace

TEST(RecipePlan, TiesWarnsAboutAModelSkippedForItsShape) {
  alloy::test::TempDir dir;
  write_one_layer_model(dir / "base", 3);
  write_one_layer_model(dir / "ft_a", 3);
  write_one_layer_model(dir / "ft_b", 2);
  alloy::PlanOptions options;
  options.base_dir = dir.path();
  const std::string text =
      "merge_method: ties\nbase_model: base\nparameters: {density: 0.5, weight: 0.5}\n"
      "models:\n  - model: ft_a\n  - model: ft_b\n";
  const auto plan = alloy::plan_merge(alloy::parse_recipe(text, "t.yml"), options);
  const auto& up = *std::find_if(plan.tensors.begin(), plan.tensors.end(),
                                 [](const auto& t) { return t.name == "model.layers.0.mlp.up_proj.weight"; });
  EXPECT_EQ(up.sources.size(), 2u);  // ft_b's [2,4] is skipped, as mergekit does
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("model 'ft_b': 1 tensor(s) left out"), std::string::npos) << plan.warnings[0];
  EXPECT_NE(plan.warnings[0].find("model.layers.0.mlp.up_proj.weight"), std::string::npos) << plan.warnings[0];
  EXPECT_EQ(alloy::plan_to_json(plan)["warnings"].size(), 1u);

  write_one_layer_model(dir / "ft_b", 3);  // same shapes: nothing to say
  EXPECT_TRUE(alloy::plan_merge(alloy::parse_recipe(text, "t.yml"), options).warnings.empty());
}
