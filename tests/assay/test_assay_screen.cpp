// The candidate screen (more than 8 candidates, up to 64): a merge of two parents hidden among
// decoys is still found with the right weights, the decoys are set aside, and the limit is 64.
#include <gtest/gtest.h>

#include <algorithm>

#include "alloy/core/error.h"
#include "alloy/perturb/perturb.h"
#include "test_assay_utils.h"

namespace alloy {
namespace {

// A llama family of `fine_tunes` fine-tunes and `unrelated` unrelated models (small tensors: the
// test makes 60+ models).
std::filesystem::path make_family(const std::filesystem::path& dir, int fine_tunes, int unrelated, uint64_t seed) {
  BaseModelOptions base;
  base.arch.family = ModelFamily::kLlama;
  base.arch.layers = 2;
  base.arch.hidden = 64;
  base.arch.intermediate = 128;
  base.arch.vocab = 256;
  base.seed = seed;
  FineTuneOptions ft;
  synth_family(dir, base, fine_tunes, unrelated, ft);
  return dir;
}

std::vector<std::string> members(const std::filesystem::path& dir, int fine_tunes, int unrelated) {
  std::vector<std::string> out{(dir / "base").string()};
  for (int i = 1; i <= fine_tunes; ++i) out.push_back((dir / ("ft_" + std::to_string(i))).string());
  for (int i = 1; i <= unrelated; ++i) out.push_back((dir / ("unrelated_" + std::to_string(i))).string());
  return out;
}

const CandidateAssay& find(const AssayResult& r, const std::string& path) {
  const auto it = std::find_if(r.candidates.begin(), r.candidates.end(), [&](const CandidateAssay& c) { return c.path == path; });
  if (it == r.candidates.end()) throw std::runtime_error(path + " was not kept");
  return *it;
}

// 2 parents among 63 decoys (the base, 58 other fine-tunes, 4 unrelated models): 65 candidates would
// be refused, so the base counts as one of the 63 and the suspect is assayed against 64 candidates.
TEST(AssayScreen, TwoParentMergeAmongSixtyTwoDecoysIsFound) {
  test::TempDir temp;
  const auto dir = make_family(temp / "fam", 59, 4, 31);
  const std::string a = (dir / "ft_17").string(), b = (dir / "ft_42").string();
  test::merge_into("merge_method: linear\nmodels:\n  - model: " + a + "\n    parameters: {weight: 0.65}\n  - model: " + b +
                       "\n    parameters: {weight: 0.35}\ndtype: bfloat16\n",
                   temp / "merged");
  const std::vector<std::string> all = members(dir, 59, 4);
  ASSERT_EQ(all.size(), 64u);
  const AssayResult r = test::assay(temp / "merged", all);
  EXPECT_EQ(r.verdict, "merge");
  EXPECT_EQ(r.method, "linear");
  EXPECT_LE(r.candidates.size(), 8u);
  EXPECT_NEAR(find(r, a).weight, 0.65, 0.01);
  EXPECT_NEAR(find(r, b).weight, 0.35, 0.01);
  for (const auto& c : r.candidates) {
    if (c.path != a && c.path != b) {
      EXPECT_FALSE(c.involved) << c.path;
    }
  }
  const auto& screen = r.evidence.at("screen");
  EXPECT_EQ(screen.at("candidates"), 64);
  EXPECT_EQ(screen.at("kept").size() + screen.at("set_aside").size(), 64u);
  EXPECT_EQ(screen.at("kept").size(), r.candidates.size());
  // Every decoy the screen kept carries no weight (above); the unrelated ones are set aside.
  for (const auto& c : r.candidates) EXPECT_EQ(c.path.find("unrelated"), std::string::npos) << c.path;
}

// A TIES merge needs its base: the screen keeps it among 16 candidates, and the verdict and
// weights are those of the assay against the parents and the base alone.
TEST(AssayScreen, TiesMergeKeepsItsBaseAndMatchesTheSmallAssay) {
  test::TempDir temp;
  const auto dir = make_family(temp / "fam", 14, 1, 32);
  const std::string base = (dir / "base").string(), a = (dir / "ft_3").string(), b = (dir / "ft_11").string();
  test::merge_into("merge_method: ties\nbase_model: " + base + "\nmodels:\n  - model: " + a +
                       "\n    parameters: {weight: 0.7, density: 0.5}\n  - model: " + b +
                       "\n    parameters: {weight: 0.5, density: 0.5}\ndtype: bfloat16\n",
                   temp / "merged");
  const AssayResult big = test::assay(temp / "merged", members(dir, 14, 1));
  const AssayResult small = test::assay(temp / "merged", {base, a, b});
  EXPECT_EQ(big.verdict, "merge");
  EXPECT_EQ(big.method, small.method);
  EXPECT_EQ(big.verdict, small.verdict);
  EXPECT_NO_THROW(find(big, base));
  EXPECT_NEAR(find(big, a).weight, find(small, a).weight, 0.01);
  EXPECT_NEAR(find(big, b).weight, find(small, b).weight, 0.01);
}

// A merge under noise as large as its own deviation from the base is judged from that base (how
// much of the deviation the recipe explains), which forward selection never picks: the base
// explains nothing the parents do not. The screen keeps the candidate nearest the suspect as the
// likely common base, so 16 candidates give the answer of the base and the parents alone (without
// it, a fine-tune of one parent).
TEST(AssayScreen, NoisyMergeKeepsItsBaseAsTheAncestor) {
  test::TempDir temp;
  const auto dir = make_family(temp / "fam", 14, 1, 33);
  const std::string base = (dir / "base").string(), a = (dir / "ft_5").string(), b = (dir / "ft_9").string();
  test::merge_into("merge_method: linear\nmodels:\n  - model: " + a + "\n    parameters: {weight: 0.571}\n  - model: " + b +
                       "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
                   temp / "merged");
  PerturbOptions noise;
  noise.kind = PerturbKind::kNoise;
  noise.strength = 1.0;
  noise.reference = base;
  perturb_model(temp / "merged", temp / "noisy", noise);
  const AssayResult big = test::assay(temp / "noisy", members(dir, 14, 1));
  const AssayResult small = test::assay(temp / "noisy", {base, a, b});
  ASSERT_EQ(small.verdict, "merge") << small.evidence["summary"];
  EXPECT_EQ(big.verdict, "merge") << big.evidence["summary"];
  EXPECT_EQ(big.method, small.method);
  EXPECT_EQ(big.recipe, small.recipe);
  EXPECT_EQ(big.evidence["screen"]["ancestor"], base) << big.evidence["screen"];
  EXPECT_NEAR(find(big, a).weight, 0.571, 0.01);
  EXPECT_NEAR(find(big, b).weight, 0.429, 0.01);
}

// Up to 8 candidates there is no screen (the assay is today's); above 64 the assay refuses, naming
// the limit.
TEST(AssayScreen, NoScreenUpToEightAndSixtyFourIsTheLimit) {
  test::TempDir temp;
  const auto dir = make_family(temp / "fam", 7, 0, 33);
  const std::vector<std::string> eight = members(dir, 7, 0);
  const AssayResult r = test::assay(dir / "ft_1", eight);
  EXPECT_FALSE(r.evidence.contains("screen"));
  EXPECT_EQ(r.candidates.size(), 8u);
  std::vector<std::string> too_many;
  for (int i = 0; i < 65; ++i) too_many.push_back(eight[size_t(i) % eight.size()]);
  try {
    test::assay(dir / "ft_1", too_many);
    FAIL() << "65 candidates were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at most 64 candidates, got 65"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace alloy
