// Coverage and stability of the verdict (docs/assay.md, "Coverage"): candidates that cannot be
// compared (another width, another architecture) are set aside and do not change the answer for
// the others; adding decoys never changes the verdict or the recovered recipe; a verdict states
// the share of the suspect it compared and is "inconclusive" below kMinCoverage.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "assay/coverage.h"
#include "assay/internal.h"
#include "alloy/merge/moe.h"
#include "test_assay_utils.h"
#include "tiny_model.h"

namespace alloy::test {
namespace {

// Candidate counts of the decoy test: 16 joins as soon as the candidate limit allows it.
std::vector<size_t> candidate_counts() {
  std::vector<size_t> counts;
  for (size_t n : {2, 4, 8, 16}) {
    if (n <= size_t(detail::kMaxCandidates)) counts.push_back(n);
  }
  return counts;
}

BaseModelOptions tiny(ModelFamily family, int hidden, uint64_t seed) {
  BaseModelOptions o = tiny_family_model(family, 2);
  o.arch.hidden = hidden;
  o.seed = seed;
  return o;
}

// DIR/moe/ft_1, a Mixtral fine-tune whose 8 experts of width 16 hold about 70% of its weights, and
// DIR/dense, a Mistral of the same hidden size (same attention and embedding names and shapes).
void moe_and_dense(const std::filesystem::path& dir) {
  FineTuneOptions ft;
  ft.relative_delta = 0.05;
  BaseModelOptions moe = tiny(ModelFamily::kMixtral, 32, 3);
  moe.arch.experts = 8;
  moe.arch.moe_intermediate = 16;
  synth_family(dir / "moe", moe, 1, 0, ft);
  synth_base_model(dir / "dense", tiny(ModelFamily::kMistral, 32, 3));
}

// A Rio-shaped linear merge of ft_1 and ft_2 and a pool of decoys of every kind, interleaved so
// that each candidate count holds several kinds: siblings (ft_3..), the common base, unrelated
// models of the same shape, models of another width, models of another architecture (a Qwen2-MoE
// and a Qwen3 with the suspect's hidden size, which share its attention and embeddings).
struct DecoyScene {
  TempDir temp;
  std::filesystem::path dir;
  std::vector<std::string> decoys;
  double weight = 0;
  explicit DecoyScene(uint64_t seed) : dir(temp.path()) {
    FineTuneOptions ft;
    ft.relative_delta = 0.05;
    synth_family(dir / "fam", tiny(ModelFamily::kLlama, 32, seed), 7, 4, ft);
    synth_base_model(dir / "wide_1", tiny(ModelFamily::kLlama, 64, seed + 5000));
    synth_base_model(dir / "wide_2", tiny(ModelFamily::kLlama, 48, seed + 5001));
    synth_base_model(dir / "moe", tiny(ModelFamily::kMoe, 32, seed + 6000));
    synth_base_model(dir / "qwen3", tiny(ModelFamily::kQwen3, 32, seed + 6001));
    weight = 0.3 + 0.01 * double(seed % 41);
    merge_into("merge_method: linear\nmodels:\n  - model: " + member("ft_1") + "\n    parameters: {weight: " +
                   std::to_string(weight) + "}\n  - model: " + member("ft_2") + "\n    parameters: {weight: " +
                   std::to_string(1 - weight) + "}\ndtype: bfloat16\n",
               dir / "merged");
    decoys = {member("unrelated_1"), member("ft_3"),        (dir / "wide_1").string(), (dir / "moe").string(),
              member("base"),        member("unrelated_2"), member("ft_4"),            (dir / "qwen3").string(),
              (dir / "wide_2").string(), member("ft_5"),    member("unrelated_3"),     member("ft_6"),
              member("unrelated_4"), member("ft_7")};
  }
  std::string member(const std::string& name) const { return (dir / "fam" / name).string(); }
  std::vector<std::string> candidates(size_t n) const {
    std::vector<std::string> c{member("ft_1"), member("ft_2")};
    for (size_t i = 0; c.size() < n && i < decoys.size(); ++i) c.push_back(decoys[i]);
    return c;
  }
};

// The verdict, the method and the recipe (models and weights, rounded as the rebuild check chose).
std::string answer(const AssayResult& r) {
  return r.verdict + " " + r.method + " " + r.recipe.dump();
}

TEST(AssayCoverage, DecoysNeverChangeTheVerdictOrTheRecipe) {
  const std::vector<size_t> counts = candidate_counts();
  ASSERT_GE(counts.size(), 3u);
  int merges = 0;
  constexpr int kSeeds = alloy::test::sweep_seeds(50);
  for (uint64_t seed = 1; seed <= uint64_t(kSeeds); ++seed) {
    DecoyScene scene(seed);
    std::string first;
    for (size_t n : counts) {
      const std::vector<std::string> candidates = scene.candidates(n);
      ASSERT_EQ(candidates.size(), n);
      const AssayResult r = assay(scene.dir / "merged", candidates);
      if (n == counts.front()) {
        first = answer(r);
        merges += r.verdict == "merge";
        EXPECT_EQ(r.verdict, "merge") << "seed " << seed << "\n" << assay_summary(r);
        continue;
      }
      EXPECT_EQ(answer(r), first) << "seed " << seed << ", " << n << " candidates (weight " << scene.weight << ")\n"
                                  << assay_summary(r);
      // ft_1 and ft_2 and nothing else carry the recipe.
      for (size_t c = 0; c < r.candidates.size(); ++c) {
        EXPECT_EQ(r.candidates[c].involved, c < 2) << "seed " << seed << ", " << r.candidates[c].path;
      }
      // The decoys of another width or architecture are set aside, the others compared.
      const auto set_aside = r.evidence.value("set_aside", nlohmann::json::array());
      for (const auto& s : set_aside) {
        const std::string path = s["path"];
        EXPECT_TRUE(path.find("wide") != std::string::npos || path.find("moe") != std::string::npos ||
                    path.find("qwen3") != std::string::npos)
            << path;
      }
      // Beyond the fit's 8, the screen sets the rest of the comparable candidates aside too.
      const size_t screened_out =
          r.evidence.contains("screen") ? r.evidence["screen"].value("set_aside", nlohmann::json::array()).size() : 0;
      EXPECT_EQ(r.candidates.size() + set_aside.size() + screened_out, n);
      EXPECT_DOUBLE_EQ(r.evidence.value("coverage", nlohmann::json::object()).value("fraction", 0.0), 1.0)
          << assay_summary(r);
    }
  }
  EXPECT_EQ(merges, kSeeds);
}

// A linear merge of four parents (weights 0.4 / 0.3 / 0.2 / 0.1) assayed beside three of their
// siblings: the equalities to the base, counted where the related candidates spread, passed the
// sparse gate, and the merge was read as della_linear (on the 0.25 GB family with weights
// 0.35 / 0.16 / 0.15 / 0.14) at full confidence. A reading with random masks is now compared with
// the dense reading, which wins where its recipe rebuilds the sample almost exactly.
TEST(AssayCoverage, LinearMergeOfFourBesideSiblingsStaysLinear) {
  TempDir temp;
  FineTuneOptions ft;
  ft.relative_delta = 0.05;
  synth_family(temp.path(), small_base(ModelFamily::kLlama, 2, 256, 64, 5), 7, 0, ft);
  const auto member = [&](int i) { return (temp.path() / ("ft_" + std::to_string(i))).string(); };
  const double weights[4] = {0.4, 0.3, 0.2, 0.1};
  std::string yaml = "merge_method: linear\nmodels:\n";
  for (int i = 0; i < 4; ++i)
    yaml += "  - model: " + member(i + 1) +
            "\n    parameters: {weight: " + std::to_string(weights[i]) + "}\n";
  merge_into(yaml + "dtype: bfloat16\n", temp.path() / "merged");
  const AssayResult r = assay(temp.path() / "merged",
                              {member(1), member(2), member(3), member(4),
                               (temp.path() / "base").string(), member(5), member(6), member(7)});
  EXPECT_EQ(r.verdict, "merge");
  ASSERT_EQ(r.method, "linear") << assay_summary(r);
  EXPECT_FALSE(r.evidence.contains("confidence")) << assay_summary(r);
  ASSERT_EQ(r.recipe["models"].size(), 4u) << r.recipe.dump();
  for (const auto& m : r.recipe["models"]) {
    const std::string path = m["model"];
    EXPECT_NEAR(m["parameters"]["weight"].get<double>(), weights[path.back() - '1'], 0.005)
        << m.dump();
  }
  for (size_t c = 0; c < r.candidates.size(); ++c)
    EXPECT_EQ(r.candidates[c].involved, c < 4) << r.candidates[c].path;
}

// The same for the sparse members of the task-arithmetic family: a sibling decoy (ft_3) is related
// to the suspect but carries no weight. Before, it entered the kept-set statistics (its "kept
// alone" share is the mode of a spread-out ratio) and the recipe (weight -0.0): dare_ties and
// dare_linear were read as della and della_linear, ties and della got a third model and shifted
// weights. breadcrumbs_ties at density 0.5 has too few exact equalities for the sparse gate (a
// delta kept alone rarely survives its weight's multiply and divide in bf16), so without the
// sibling (whose extra spread inflated them) it was read densely, method not established; its
// sparse reading now wins where its recipe rebuilds the sample almost exactly.
TEST(AssayCoverage, SiblingDecoysNeverChangeASparseMergesMethodOrRecipe) {
  for (ModelFamily kind : {ModelFamily::kLlama, ModelFamily::kMoe}) {
    AssayFamily f(kind, 1, 0.02);
    const auto recipe = [&](const std::string& method, const std::string& params) {
      return "merge_method: " + method + "\nbase_model: " + candidate(f, "base") + "\nmodels:\n  - model: " +
             candidate(f, "ft_1") + "\n    parameters: {weight: 0.6" + params + "}\n  - model: " + candidate(f, "ft_2") +
             "\n    parameters: {weight: 0.4" + params + "}\ndtype: bfloat16\n";
    };
    const std::vector<std::pair<std::string, std::string>> methods = {
        {"dare_ties", ", density: 0.5"}, {"dare_linear", ", density: 0.6"}, {"ties", ", density: 0.5"},
        {"della", ", density: 0.5, epsilon: 0.1"}, {"breadcrumbs_ties", ", density: 0.5, gamma: 0.01"}};
    for (const auto& [method, params] : methods) {
      const auto merged = f.temp.path() / method;
      merge_into(recipe(method, params), merged);
      const AssayResult plain = assay(merged, {candidate(f, "base"), candidate(f, "ft_1"), candidate(f, "ft_2")});
      EXPECT_EQ(plain.verdict, "merge") << method << "\n" << assay_summary(plain);
      EXPECT_EQ(plain.method, method) << assay_summary(plain);
      const AssayResult decoys = assay(merged, f.candidates_with_ft3());
      EXPECT_EQ(answer(decoys), answer(plain)) << family_name(kind) << " " << method << "\n" << assay_summary(decoys);
    }
  }
}

// A family screen's case: the suspect, a linear merge of ft_1 and ft_2, among 8 candidates that are
// its base and five more siblings. The siblings spread where the parents agree with the base (and
// the suspect with them), which counted as exact equalities to the base: the sparse gate passed
// and every seed was read as ties, its recipe rebuilding a few percent of the sample. The dense
// recipe rebuilds it exactly and now wins (dense_rebuilds_instead in verdict.cpp).
TEST(AssayCoverage, ALinearMergeAmongItsSiblingsIsNotReadAsASparseOne) {
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    TempDir temp;
    const auto dir = temp.path();
    FineTuneOptions ft;
    ft.relative_delta = 0.05;
    synth_family(dir / "fam", small_base(ModelFamily::kLlama, 2, 64, 64, seed), 7, 0, ft);
    const auto member = [&](const std::string& name) { return (dir / "fam" / name).string(); };
    merge_into("merge_method: linear\nmodels:\n  - model: " + member("ft_1") + "\n    parameters: {weight: 0.571}\n"
               "  - model: " + member("ft_2") + "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
               dir / "merged");
    const AssayResult two = assay(dir / "merged", {member("ft_1"), member("ft_2")});
    std::vector<std::string> eight = {member("ft_1"), member("ft_2"), member("base")};
    for (int i = 3; i <= 7; ++i) eight.push_back(member("ft_" + std::to_string(i)));
    const AssayResult r = assay(dir / "merged", eight);
    EXPECT_EQ(r.verdict, "merge") << "seed " << seed << "\n" << assay_summary(r);
    EXPECT_EQ(r.method, "linear") << "seed " << seed << "\n" << assay_summary(r);
    EXPECT_EQ(answer(r), answer(two)) << "seed " << seed;
    EXPECT_NEAR(weight_of(r, member("ft_1")), 0.571, 0.01);
    EXPECT_NEAR(weight_of(r, member("ft_2")), 0.429, 0.01);
  }
}

// A Mixtral assembled by alloy-moe from dense models has their attention and embeddings, but its
// experts (most of its weights here) have no counterpart among the dense candidates: not a "copy".
TEST(AssayCoverage, MoeAgainstDenseCandidatesIsInconclusive) {
  TempDir temp;
  const auto dir = temp.path();
  moe_and_dense(dir);
  const AssayResult r = assay(dir / "moe" / "ft_1", {(dir / "dense").string()});
  ASSERT_TRUE(r.evidence.contains("coverage")) << assay_summary(r);
  const auto& coverage = r.evidence["coverage"];
  EXPECT_LT(coverage["fraction"].get<double>(), detail::kMinCoverage);
  EXPECT_EQ(r.verdict, "inconclusive") << assay_summary(r);
  EXPECT_TRUE(r.recipe.empty());
  bool experts_named = false;
  for (const auto& name : coverage["not_compared"]) experts_named |= name == "experts";
  EXPECT_TRUE(experts_named) << coverage.dump();
  // The summary line and the JSON agree on the share.
  const std::string text = assay_summary(r);
  char share[32];
  std::snprintf(share, sizeof share, "compared: %.1f%%", 100 * coverage["fraction"].get<double>());
  EXPECT_NE(text.find(share), std::string::npos) << text;
  EXPECT_NE(r.evidence["summary"].get<std::string>().find("experts"), std::string::npos);
  EXPECT_TRUE(verdict_matches(r, "any"));
}

// The same, made the way the issue found it: alloy-moe's Mixtral from the dense base and a
// fine-tune was called a copy of the base, none of its experts compared.
TEST(AssayCoverage, UpcycledMoeIsNotACopyOfItsDenseBase) {
  TempDir temp;
  const auto dir = temp.path();
  const AssayFamily family(ModelFamily::kLlama, 5, 0.05);
  const std::string recipe = "base_model: " + candidate(family, "base") +
                             "\ngate_mode: random\ndtype: bfloat16\nexperts_per_token: 2\nexperts:\n"
                             "  - source_model: " + candidate(family, "base") + "\n  - source_model: " +
                             candidate(family, "ft_1") + "\n";
  MoeOptions options;
  options.out_dir = dir / "moe";
  options.seed = 1;
  options.write_model_card = false;
  build_moe(parse_moe_recipe(recipe, "test recipe"), options);
  const AssayResult r = assay(dir / "moe", {candidate(family, "base"), candidate(family, "ft_1")});
  EXPECT_NE(r.verdict, "copy") << assay_summary(r);
  EXPECT_EQ(r.verdict, "inconclusive") << assay_summary(r);
  ASSERT_TRUE(r.evidence.contains("finding_on_compared"));
  EXPECT_EQ(r.evidence["finding_on_compared"]["verdict"], "copy");
}

// Between kMinCoverage and everything: the verdict stands, names what it covers and what it did
// not compare, and its confidence is partial.
TEST(AssayCoverage, PartialCoverageNamesTheComponents) {
  AssayResult r;
  r.verdict = "copy";
  r.candidates.push_back({"x"});
  r.base = 0;
  r.evidence = {{"summary", "every compared tensor is bit-identical to x"}, {"notes", nlohmann::json::array()}};
  const auto add = [&](const std::string& component, uint64_t numel, bool fitted) {
    TensorAssay t;
    t.name = component;
    t.component = component;
    t.numel = numel;
    t.fitted = fitted;
    r.tensors.push_back(t);
  };
  add("attention", 400, true);
  add("embeddings", 300, true);
  add("mlp", 290, false);
  add("norms", 10, false);  // 1% of the parameters: named only from kNamedShare up
  detail::qualify_coverage(&r);
  EXPECT_EQ(r.verdict, "copy");
  EXPECT_EQ(r.evidence["confidence"], "partial");
  EXPECT_DOUBLE_EQ(r.evidence["coverage"]["fraction"].get<double>(), 0.7);
  EXPECT_EQ(r.evidence["coverage"]["not_compared"], nlohmann::json({"mlp", "norms"}));
  const std::string summary = r.evidence["summary"];
  EXPECT_EQ(summary.rfind("on embeddings and attention (70% of the suspect's parameters; not compared: mlp 29% "
                          "and norms 1% of them): every compared tensor is bit-identical to x",
                          0),
            0u)
      << summary;
  // Under kMinCoverage: inconclusive, the finding kept beside it.
  r.tensors[0].fitted = false;
  r.evidence = {{"summary", "every compared tensor is bit-identical to x"}, {"notes", nlohmann::json::array()}};
  detail::qualify_coverage(&r);
  EXPECT_EQ(r.verdict, "inconclusive");
  EXPECT_EQ(r.evidence["finding_on_compared"]["verdict"], "copy");
  EXPECT_FALSE(r.base.has_value());
  EXPECT_TRUE(verdict_matches(r, "related"));
  EXPECT_FALSE(verdict_matches(r, "merge"));
}

// The report shows the coverage per component, the candidates set aside and the inconclusive
// verdict.
TEST(AssayCoverage, ReportShowsCoverageAndSetAside) {
  TempDir temp;
  const auto dir = temp.path();
  moe_and_dense(dir);
  synth_base_model(dir / "wide", tiny(ModelFamily::kMixtral, 64, 4));
  const AssayResult r = assay(dir / "moe" / "ft_1", {(dir / "dense").string(), (dir / "wide").string()});
  ASSERT_EQ(r.verdict, "inconclusive") << assay_summary(r);
  ASSERT_EQ(r.evidence["set_aside"].size(), 1u) << assay_summary(r);
  EXPECT_EQ(r.evidence["set_aside"][0]["path"], (dir / "wide").string());
  EXPECT_NE(assay_summary(r).find("set aside: " + (dir / "wide").string()), std::string::npos);
  const std::string html = assay_report_html(assay_to_json(r));
  EXPECT_NE(html.find(">inconclusive</span>Too little of it could be compared"), std::string::npos);
  EXPECT_NE(html.find("experts 0%"), std::string::npos);
  EXPECT_NE(html.find("attention 100%"), std::string::npos);
  EXPECT_NE(html.find("set aside, another width or architecture"), std::string::npos);
}

}  // namespace
}  // namespace alloy::test
