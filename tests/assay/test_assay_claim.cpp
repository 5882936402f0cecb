// alloy-assay --verify-claim: a published recipe checked against the weights by rebuilding sampled
// tensors. A true recipe holds (bit for bit; slerp within one ulp at most); the same recipe with one
// weight changed by 0.01 is refuted; a recipe that cannot make the suspect's tensors is refuted
// naming the tensor; a random method merged with another seed is unverifiable.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_assay_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;
using nlohmann::json;

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

// Runs `command` in `cwd` (the recipes name the family's models relative to it, as a repository's
// mergekit_config.yml names Hub ids).
std::string in_dir(const fs::path& cwd, const std::string& command, int* status) {
  return run_command("cd " + quote(cwd) + " && " + command + " 2>&1", status);
}

struct ClaimCase {
  const char* name;
  std::string recipe;      // the true recipe
  std::string changed;     // a number in it ...
  std::string to;          // ... replaced by this (one weight 0.01 off)
  size_t models;           // the recipe names this many models
};

TEST(AssayClaim, TrueRecipeHoldsAndOneWeightOffBy001IsRefuted) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 31, 0.05);
  const fs::path work = f.temp.path();
  const std::string merge = quote(alloy::test::bin("alloy-merge")), assay = quote(alloy::test::bin("alloy-assay"));
  const ClaimCase cases[] = {
      {"linear", "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.3}\n"
                 "  - model: ft_2\n    parameters: {weight: 0.7}\ndtype: bfloat16\n", "0.3}", "0.31}", 2},
      {"ties", "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.6, density: 0.5}\n"
               "  - model: ft_2\n    parameters: {weight: 0.4, density: 0.5}\ndtype: bfloat16\n", "0.4,", "0.41,", 3},
      {"slerp", "merge_method: slerp\nbase_model: ft_1\nmodels:\n  - model: ft_1\n  - model: ft_2\n"
                "parameters: {t: 0.4}\ndtype: bfloat16\n", "0.4}", "0.41}", 2},
  };
  for (const ClaimCase& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path dir = work / c.name;
    fs::create_directories(dir);
    alloy::test::write_bytes(dir / "claim.yml", c.recipe);
    std::string off = c.recipe;
    ASSERT_NE(off.find(c.changed), std::string::npos);
    off.replace(off.find(c.changed), c.changed.size(), c.to);
    alloy::test::write_bytes(dir / "off.yml", off);
    int status = -1;
    std::string out = in_dir(f.dir, merge + " -q " + quote(dir / "claim.yml") + " " + quote(dir / "suspect"), &status);
    ASSERT_EQ(status, 0) << out;

    out = in_dir(f.dir, assay + " " + quote(dir / "suspect") + " --verify-claim " + quote(dir / "claim.yml") +
                            " --rebuild-check 0 --json " + quote(dir / "holds.json"), &status);
    EXPECT_EQ(status, 0) << out;
    EXPECT_NE(out.find("verdict: holds"), std::string::npos) << out;
    const json holds = json::parse(alloy::test::read_bytes(dir / "holds.json"));
    EXPECT_EQ(holds["verdict"], "holds");
    EXPECT_EQ(holds["claim"]["merge_method"], c.name);
    EXPECT_GT(holds["rebuild"]["tensors"].get<int>(), 10) << "--rebuild-check 0: every tensor";
    if (std::string(c.name) != "slerp") {
      EXPECT_EQ(holds["tolerance"], "bit for bit");
      EXPECT_EQ(holds["rebuild"]["exact_fraction"], 1.0);
    }
    // The audit names the suspect and every model of the recipe, hashed.
    ASSERT_EQ(holds["audit"]["models"].size(), 1 + c.models);
    EXPECT_EQ(holds["audit"]["models"][0]["role"], "suspect");
    EXPECT_FALSE(holds["audit"]["models"][1]["files"][0]["sha256"].is_null());

    out = in_dir(f.dir, assay + " " + quote(dir / "suspect") + " --verify-claim " + quote(dir / "off.yml") + " --json " +
                            quote(dir / "refuted.json"), &status);
    EXPECT_EQ(status, 1) << out;
    EXPECT_NE(out.find("verdict: refuted"), std::string::npos) << out;
    const json refuted = json::parse(alloy::test::read_bytes(dir / "refuted.json"));
    EXPECT_EQ(refuted["verdict"], "refuted");
    EXPECT_LT(refuted["rebuild"]["exact_fraction"].get<double>(), 0.99) << refuted["rebuild"];
    EXPECT_EQ(refuted["tensors"].size(), 16u) << "16 sampled tensors by default";
  }
}

TEST(AssayClaim, ARecipeThatCannotMakeTheSuspectIsRefutedAndRandomMasksAreUnverifiable) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 32, 0.05);
  const fs::path work = f.temp.path();
  const std::string merge = quote(alloy::test::bin("alloy-merge")), assay = quote(alloy::test::bin("alloy-assay"));
  // A recipe of one layer where the suspect has two: the tensors of layer 1 are not made.
  alloy::test::write_bytes(work / "stack.yml",
                           "merge_method: passthrough\nslices:\n  - sources:\n      - model: ft_1\n        layer_range: [0, 1]\n"
                           "dtype: bfloat16\n");
  int status = -1;
  std::string out = in_dir(f.dir, assay + " ft_1 --verify-claim " + quote(work / "stack.yml"), &status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("which the recipe does not make"), std::string::npos) << out;

  // dare_ties merged with seed 7: the rebuild (seed 0) draws other masks.
  const std::string dare = "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: ft_1\n"
                           "    parameters: {weight: 0.5, density: 0.5}\n  - model: ft_2\n"
                           "    parameters: {weight: 0.5, density: 0.5}\ndtype: bfloat16\n";
  alloy::test::write_bytes(work / "dare.yml", dare);
  out = in_dir(f.dir, merge + " -q --random-seed 7 " + quote(work / "dare.yml") + " " + quote(work / "dare"), &status);
  ASSERT_EQ(status, 0) << out;
  out = in_dir(f.dir, assay + " " + quote(work / "dare") + " --verify-claim " + quote(work / "dare.yml"), &status);
  EXPECT_EQ(status, 3) << out;
  EXPECT_NE(out.find("verdict: unverifiable"), std::string::npos) << out;

  // Candidates and a claim together are refused; a missing recipe is an error naming it.
  out = in_dir(f.dir, assay + " ft_1 base --verify-claim " + quote(work / "dare.yml"), &status);
  EXPECT_EQ(status, 2) << out;
  out = in_dir(f.dir, assay + " ft_1 --verify-claim " + quote(work / "missing.yml"), &status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("missing.yml"), std::string::npos) << out;
}

}  // namespace
