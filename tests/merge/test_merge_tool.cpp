// alloy-merge end to end: every recipe in recipes/ on dense and MoE synthetic families, and the
// output directory's contents, flags and failure behaviour.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "alloy/core/dtype.h"
#include "alloy/core/model.h"
#include "alloy/core/sha256.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using alloy::test::run_command;

// One synthetic family per test binary run and family kind (generation is cheap but not free).
const fs::path& family(alloy::ModelFamily kind) {
  static std::map<alloy::ModelFamily, fs::path> made;
  auto it = made.find(kind);
  if (it != made.end()) return it->second;
  const fs::path dir = fs::temp_directory_path() /
                       ("alloy-e2e-" + std::to_string(::getpid()) + (kind == alloy::ModelFamily::kMoe ? "-moe" : "-llama"));
  fs::remove_all(dir);
  alloy::BaseModelOptions base;
  base.arch.family = kind;
  base.arch.layers = 2;
  base.arch.hidden = 64;
  base.arch.intermediate = 96;
  base.arch.experts = 4;
  base.arch.moe_intermediate = 32;
  base.output.overwrite = true;
  alloy::FineTuneOptions ft;
  alloy::synth_family(dir, base, 3, 1, ft);
  static struct Cleanup {
    std::vector<fs::path> dirs;
    ~Cleanup() {
      for (const auto& d : dirs) fs::remove_all(d);
    }
  } cleanup;
  cleanup.dirs.push_back(dir);
  return made.emplace(kind, dir).first->second;
}

std::string merge_command(const fs::path& cwd, const std::string& recipe, const fs::path& out,
                          const std::string& flags = "") {
  return "cd '" + cwd.string() + "' && '" + alloy::test::bin("alloy-merge") + "' " + flags + " '" + recipe + "' '" +
         out.string() + "' 2>&1";
}

class RecipeEndToEnd : public ::testing::TestWithParam<std::tuple<std::string, alloy::ModelFamily>> {};

TEST_P(RecipeEndToEnd, RunsOnSyntheticModels) {
  const auto& [recipe, kind] = GetParam();
  const fs::path& fam = family(kind);
  alloy::test::TempDir out;
  int status = -1;
  const std::string recipe_path = std::string(ALLOY_SOURCE_DIR) + "/recipes/" + recipe;
  if (recipe == "lora.yml" && !fs::exists(fam / "ft_1_lora")) {  // the adapter the recipe applies
    ASSERT_EQ((run_command("'" + alloy::test::bin("alloy-extract-lora") + "' -q '" + (fam / "base").string() + "' '" +
                               (fam / "ft_1").string() + "' '" + (fam / "ft_1_lora").string() + "' --rank 8 2>&1",
                           &status),
               status),
              0);
  }
  const std::string log = run_command(merge_command(fam, recipe_path, out / "m", "-q"), &status);
  ASSERT_EQ(status, 0) << log;
  const auto merged = alloy::Model::open(out / "m");
  const auto base = alloy::Model::open(fam / "base");
  const json config = json::parse(alloy::test::read_bytes(out / "m" / "config.json"));
  const int layers = recipe == "passthrough_stack.yml" ? 3 : 2;
  EXPECT_EQ(config["num_hidden_layers"], layers);
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  const size_t per_layer = (base.tensors().size() - 3) / 2;
  EXPECT_EQ(merged.tensors().size(), 3 + per_layer * layers);
  for (const auto& t : merged.tensors()) {
    EXPECT_EQ(t.info->dtype, alloy::DType::BF16) << t.name();
    std::vector<float> v(t.info->numel());
    alloy::load_as_f32(t.info->dtype, t.data(), v.size(), v.data());
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << t.name();
  }
  for (const char* f : {"README.md", "mergekit_config.yml", "alloy_provenance.json", "tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(out / "m" / f)) << f;
  }
  if (recipe == "tokenizer_union.yml") {  // the base's vocabulary, one added token, padded to 64
    const json tok = json::parse(alloy::test::read_bytes(out / "m" / "tokenizer.json"));
    EXPECT_EQ(tok["added_tokens"].back()["content"], "<|im_end|>");
    const uint64_t tokens = tok["added_tokens"].back()["id"].get<uint64_t>() + 1;
    EXPECT_EQ(config["vocab_size"], (tokens + 63) / 64 * 64);
    EXPECT_EQ(merged.find("model.embed_tokens.weight")->info->shape[0], (tokens + 63) / 64 * 64);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllRecipes, RecipeEndToEnd,
    ::testing::Combine(::testing::Values("linear.yml", "slerp.yml", "ties.yml", "dare_ties.yml",
                                         "task_arithmetic.yml", "breadcrumbs_ties.yml", "della.yml",
                                         "model_stock.yml", "nuslerp.yml", "passthrough_stack.yml",
                                         "sce.yml", "karcher.yml", "multislerp.yml", "arcee_fusion.yml",
                                         "nearswap.yml", "ram.yml", "tokenizer_union.yml", "lora.yml"),
                       ::testing::Values(alloy::ModelFamily::kLlama, alloy::ModelFamily::kMoe)),
    [](const auto& info) {
      std::string name = std::get<0>(info.param);
      name = name.substr(0, name.find('.'));
      return name + (std::get<1>(info.param) == alloy::ModelFamily::kMoe ? "_moe" : "_dense");
    });

TEST(RecipeEndToEnd, EveryRecipeFileIsCovered) {
  size_t count = 0;
  for (const auto& e : fs::directory_iterator(std::string(ALLOY_SOURCE_DIR) + "/recipes")) {
    count += e.path().extension() == ".yml";
  }
  // modules_vision.yml needs a model with a vision tower: test_recipe_modules.cpp runs it.
  EXPECT_EQ(count, 19u) << "add new recipes to the RecipeEndToEnd list";
}

TEST(MergeTool, OutputIsAttributedAndReproducible) {
  const fs::path& fam = family(alloy::ModelFamily::kLlama);
  alloy::test::TempDir out;
  int status = -1;
  const std::string recipe = std::string(ALLOY_SOURCE_DIR) + "/recipes/dare_ties.yml";
  ASSERT_EQ((run_command(merge_command(fam, recipe, out / "a", "-q --random-seed 7 -j 1"), &status), status), 0);
  ASSERT_EQ((run_command(merge_command(fam, recipe, out / "b", "-q --random-seed 7 -j 2 --out-shard-size 100K"),
                         &status),
             status),
            0);
  ASSERT_EQ((run_command(merge_command(fam, recipe, out / "c", "-q --random-seed 8"), &status), status), 0);
  // Same seed, any thread count and sharding: the same tensors. Another seed: other masks.
  const auto a = alloy::Model::open(out / "a"), b = alloy::Model::open(out / "b"), c = alloy::Model::open(out / "c");
  EXPECT_GT(b.shards().size(), 1u);
  bool any_differs = false;
  for (const auto& t : a.tensors()) {
    const auto* tb = b.find(t.name());
    ASSERT_NE(tb, nullptr);
    EXPECT_EQ(std::memcmp(t.data(), tb->data(), t.info->nbytes()), 0) << t.name();
    any_differs |= std::memcmp(t.data(), c.find(t.name())->data(), t.info->nbytes()) != 0;
  }
  EXPECT_TRUE(any_differs);

  const std::string card = alloy::test::read_bytes(out / "a" / "README.md");
  EXPECT_EQ(card.rfind("---\nbase_model:\n- base\n- ft_1\n- ft_2\n", 0), 0u) << card;
  EXPECT_NE(card.find("- alloy\n"), std::string::npos);
  EXPECT_NE(card.find("DARE TIES"), std::string::npos);
  EXPECT_EQ(alloy::test::read_bytes(out / "a" / "mergekit_config.yml"), alloy::test::read_bytes(recipe));
  // alloy_provenance.json: an in-toto Statement with a SLSA Provenance v1 predicate
  // (tests/merge/test_provenance.cpp validates it against the schema).
  const json provenance = json::parse(alloy::test::read_bytes(out / "a" / "alloy_provenance.json"));
  const json& build = provenance["predicate"]["buildDefinition"];
  EXPECT_EQ(build["externalParameters"]["recipe"]["merge_method"], "dare_ties");
  EXPECT_EQ(build["externalParameters"]["random_seed"], 7);
  EXPECT_EQ(build["externalParameters"]["recipe"]["text"], alloy::test::read_bytes(recipe));
  std::set<std::string> models;
  for (const auto& d : build["resolvedDependencies"]) models.insert(d["annotations"]["model"].get<std::string>());
  EXPECT_EQ(models, (std::set<std::string>{"base", "ft_1", "ft_2"}));
  EXPECT_EQ(build["resolvedDependencies"][0]["name"], "base/model.safetensors");
  EXPECT_EQ(build["resolvedDependencies"][0]["digest"]["sha256"], alloy::sha256_file(fam / "base" / "model.safetensors"));
  std::map<std::string, std::string> subject;
  for (const auto& s : provenance["subject"]) subject[s["name"]] = s["digest"]["sha256"];
  EXPECT_EQ(subject["model.safetensors"], alloy::sha256_file(out / "a" / "model.safetensors"));
  EXPECT_EQ(subject["config.json"], alloy::sha256_file(out / "a" / "config.json"));
  EXPECT_FALSE(build["internalParameters"]["plan"].empty());
}

// The chunked path (linear, slerp, task_arithmetic; alloy/merge/merge_method.h): the same bytes for any
// thread count, and with the provenance hashes turned off (which only changes the record).
TEST(MergeTool, ChunkedMethodsAreThreadCountIndependentAndHashesCanBeOff) {
  const fs::path& fam = family(alloy::ModelFamily::kLlama);
  for (const char* name : {"linear", "slerp", "task_arithmetic"}) {
    SCOPED_TRACE(name);
    alloy::test::TempDir out;
    int status = -1;
    const std::string recipe = std::string(ALLOY_SOURCE_DIR) + "/recipes/" + name + ".yml";
    ASSERT_EQ((run_command(merge_command(fam, recipe, out / "a", "-q -j 1"), &status), status), 0);
    ASSERT_EQ((run_command(merge_command(fam, recipe, out / "b", "-q -j 2 --no-provenance-hashes"), &status),
               status),
              0);
    const auto a = alloy::Model::open(out / "a"), b = alloy::Model::open(out / "b");
    ASSERT_EQ(a.tensors().size(), b.tensors().size());
    for (const auto& t : a.tensors()) {
      const auto* tb = b.find(t.name());
      ASSERT_NE(tb, nullptr);
      EXPECT_EQ(std::memcmp(t.data(), tb->data(), t.info->nbytes()), 0) << t.name();
    }
    const json hashed = json::parse(alloy::test::read_bytes(out / "a" / "alloy_provenance.json"));
    const json unhashed = json::parse(alloy::test::read_bytes(out / "b" / "alloy_provenance.json"));
    // Without hashes nothing can be a subject (it needs a digest): the outputs are byproducts, the
    // inputs dependencies without a digest.
    std::map<std::string, std::string> subject;
    for (const auto& s : hashed["subject"]) subject[s["name"]] = s["digest"]["sha256"];
    EXPECT_EQ(subject["config.json"], alloy::sha256_file(out / "a" / "config.json"));
    EXPECT_TRUE(unhashed["subject"].empty());
    EXPECT_FALSE(unhashed["predicate"]["runDetails"]["byproducts"].empty());
    const json& dependency = unhashed["predicate"]["buildDefinition"]["resolvedDependencies"][0];
    EXPECT_FALSE(dependency.contains("digest"));
    EXPECT_EQ(dependency["annotations"]["hashed"], false);
  }
}

TEST(MergeTool, DryRunWritesNothingAndPrintsThePlan) {
  const fs::path& fam = family(alloy::ModelFamily::kLlama);
  alloy::test::TempDir out;
  int status = -1;
  const std::string text = run_command(
      merge_command(fam, std::string(ALLOY_SOURCE_DIR) + "/recipes/ties.yml", out / "x", "--dry-run"), &status);
  ASSERT_EQ(status, 0) << text;
  const json plan = json::parse(text);
  EXPECT_EQ(plan["merge_method"], "ties");
  EXPECT_EQ(plan["tensors"].size(), 21u);
  EXPECT_GT(plan["output_bytes"].get<uint64_t>(), 0u);
  EXPECT_FALSE(fs::exists(out / "x"));
}

TEST(MergeTool, RefusalsLeaveNothingBehind) {
  const fs::path& fam = family(alloy::ModelFamily::kLlama);
  alloy::test::TempDir out;
  int status = -1;
  // Weights that sum to zero with normalize: the merge would write NaN/Inf.
  alloy::test::write_bytes(out / "zero.yml",
                           "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters:\n      weight: 1\n"
                           "  - model: ft_2\n    parameters:\n      weight: -1\n");
  std::string log = run_command(merge_command(fam, (out / "zero.yml").string(), out / "z"), &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(log.find("[non-finite]"), std::string::npos) << log;
  // The first tensor merged: tensors are merged in the output file's order (alignment, then name).
  EXPECT_NE(log.find("tensor 'lm_head.weight'"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out / "z"));
  size_t leftovers = 0;
  for (const auto& e : fs::directory_iterator(out.path())) leftovers += e.path().filename().string()[0] == '.';
  EXPECT_EQ(leftovers, 0u) << "temporary output left behind";

  // An existing, non-empty output directory needs --overwrite.
  fs::create_directories(out / "full");
  alloy::test::write_bytes(out / "full" / "keep", "x");
  const std::string recipe = std::string(ALLOY_SOURCE_DIR) + "/recipes/linear.yml";
  log = run_command(merge_command(fam, recipe, out / "full", "-q"), &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(log.find("--overwrite"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(out / "full" / "keep"));
  log = run_command(merge_command(fam, recipe, out / "full", "-q --overwrite --cuda --lazy-unpickle"), &status);
  EXPECT_EQ(status, 0) << log;
  EXPECT_NE(log.find("--cuda has no effect"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out / "full" / "keep"));

  // A recipe error names the line.
  alloy::test::write_bytes(out / "bad.yml", "merge_method: linear\nmodels:\n  - model: nowhere\n");
  log = run_command(merge_command(fam, (out / "bad.yml").string(), out / "b"), &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(log.find("bad.yml:3:"), std::string::npos) << log;
}

// Values that the compute dtype holds but out_dtype does not (float16 ends at 65504) are an error
// naming the tensor, not silent infinities; --allow-crimes clamps them to the largest finite value.
TEST(MergeTool, OverflowIntoOutDtypeIsRefusedOrClamped) {
  const fs::path& fam = family(alloy::ModelFamily::kLlama);
  alloy::test::TempDir out;
  alloy::test::write_bytes(out / "big.yml",
                           "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters:\n      weight: 3000000\n"
                           "  - model: ft_2\n    parameters:\n      weight: 3000000\nparameters:\n  normalize: false\n"
                           "dtype: float32\nout_dtype: float16\n");
  int status = -1;
  std::string log = run_command(merge_command(fam, (out / "big.yml").string(), out / "m"), &status);
  EXPECT_EQ(status, 2) << log;
  EXPECT_NE(log.find("exceed the range of float16"), std::string::npos) << log;
  EXPECT_NE(log.find("tensor 'lm_head.weight'"), std::string::npos) << log;  // the first in file order
  EXPECT_FALSE(fs::exists(out / "m"));

  log = run_command(merge_command(fam, (out / "big.yml").string(), out / "m", "-q --allow-crimes"), &status);
  ASSERT_EQ(status, 0) << log;
  const alloy::Model merged = alloy::Model::open(out / "m");
  float largest = 0;
  size_t clamped = 0;
  for (const auto& t : merged.tensors()) {
    ASSERT_EQ(t.info->dtype, alloy::DType::F16);
    std::vector<float> values(t.info->numel());
    alloy::load_as_f32(t.info->dtype, t.data(), values.size(), values.data());
    for (float v : values) {
      ASSERT_TRUE(std::isfinite(v)) << t.name();
      largest = std::max(largest, std::fabs(v));
      clamped += std::fabs(v) == 65504.0f;
    }
  }
  EXPECT_EQ(largest, 65504.0f);
  EXPECT_GT(clamped, 0u);
}

}  // namespace
