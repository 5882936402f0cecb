// The verdict's statistical rules (docs/assay.md, "The merge signature"):
//  - independent siblings assayed without their base beside an unrelated decoy are never merges
//    (correlated siblings: tests/assay/test_assay_null.cpp);
//  - a merge hidden under noise twice its own deviation, or under a further fine-tune, is still a
//    merge with the right weights, and the summary names the disguise;
//  - every number the summary cites is the one in the JSON;
//  - a blend of a base and its fine-tune is reported as the linear recipe with both weights.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "alloy/perturb/perturb.h"
#include "test_assay_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::assay;
using alloy::test::AssayFamily;
using alloy::test::candidate;
using alloy::test::merge_into;

alloy::ModelFamily kind_for(int seed) { return seed % 2 ? alloy::ModelFamily::kMoe : alloy::ModelFamily::kLlama; }

std::string linear_yaml(const std::string& a, double wa, const std::string& b, double wb) {
  return "merge_method: linear\nmodels:\n  - model: " + a + "\n    parameters: {weight: " + std::to_string(wa) +
         "}\n  - model: " + b + "\n    parameters: {weight: " + std::to_string(wb) + "}\ndtype: bfloat16\n";
}

using alloy::test::weight_of;

// The first number after `prefix` in `text` (NaN if absent).
double number_after(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  if (at == std::string::npos) return NAN;
  return std::strtod(text.c_str() + at + prefix.size(), nullptr);
}

// Whether `printed` is `value` rounded to `significant` digits (as the summary prints numbers).
bool rounds_to(double printed, double value, int significant) {
  const double unit = std::pow(10.0, std::floor(std::log10(std::fabs(value))) - (significant - 1));
  return std::fabs(printed - value) <= 0.5 * unit * (1 + 1e-9);
}

// An unrelated decoy among the candidates must not stand in for the second related sibling that
// shows the reference to be a common ancestor (it did: MoE siblings at 0.5% were then merges).
TEST(AssayNull, SiblingsWithoutTheBaseBesideAnUnrelatedDecoyAreNeverMerges) {
  for (int seed = 1; seed <= alloy::test::sweep_seeds(20); ++seed) {
    AssayFamily f(kind_for(seed), uint64_t(seed) + 51000, seed % 4 ? 0.005 : 0.02, 4);
    const auto r = assay(f.dir / "ft_3", {candidate(f, "ft_1"), candidate(f, "ft_2"), candidate(f, "unrelated_1")});
    EXPECT_NE(r.verdict, "merge") << "seed " << seed << ": " << r.evidence.dump();
    EXPECT_FALSE(r.evidence.value("common_ancestor_among_candidates", true)) << "seed " << seed;
  }
}

TEST(SynthSiblings, SharedDirectionGivesACosineThatVariesFromTensorToTensor) {
  alloy::test::TempDir dir;
  alloy::BaseModelOptions base;
  base.arch.layers = 2;
  base.arch.hidden = 64;
  base.arch.intermediate = 128;
  base.dtype = alloy::DType::F32;
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.05;
  ft.sibling_correlation = 0.8;
  alloy::synth_family(dir / "fam", base, 2, 0, ft);
  const auto b = alloy::Model::open(dir / "fam" / "base");
  const auto f1 = alloy::Model::open(dir / "fam" / "ft_1");
  const auto f2 = alloy::Model::open(dir / "fam" / "ft_2");
  double low = 1, high = 0;
  for (const auto& t : b.tensors()) {
    if (t.info->numel() < 4096) continue;  // the cosine of small tensors is noisy
    const float* x = reinterpret_cast<const float*>(t.data());
    const float* y1 = reinterpret_cast<const float*>(f1.find(t.name())->data());
    const float* y2 = reinterpret_cast<const float*>(f2.find(t.name())->data());
    double d12 = 0, d11 = 0, d22 = 0;
    for (uint64_t i = 0; i < t.info->numel(); ++i) {
      const double u = double(y1[i]) - x[i], v = double(y2[i]) - x[i];
      d12 += u * v, d11 += u * u, d22 += v * v;
    }
    const double cos = d12 / std::sqrt(d11 * d22);
    EXPECT_GT(cos, -0.1) << t.name();
    EXPECT_LT(cos, 0.85) << t.name();
    low = std::min(low, cos), high = std::max(high, cos);
  }
  EXPECT_GT(high - low, 0.3) << "the shared share must change from tensor to tensor";
}

TEST(AssayVerdict, MergeUnderNoiseTwiceItsDeviationIsStillAMerge) {
  for (double delta : {0.01, 0.02}) {
    AssayFamily f(alloy::ModelFamily::kLlama, 31, delta, 4);
    alloy::test::TempDir out;
    merge_into(linear_yaml(candidate(f, "ft_1"), 0.571, candidate(f, "ft_2"), 0.429), out / "merged");
    alloy::PerturbOptions noise;
    noise.kind = alloy::PerturbKind::kNoise;
    noise.strength = 2.0;
    noise.reference = f.dir / "base";
    alloy::perturb_model(out / "merged", out / "hidden", noise);
    const auto r = assay(out / "hidden", f.candidates());
    ASSERT_EQ(r.verdict, "merge") << delta << ": " << r.evidence.dump();
    EXPECT_EQ(r.method, "linear");
    EXPECT_NEAR(weight_of(r, candidate(f, "ft_1")), 0.571, 0.02);
    EXPECT_NEAR(weight_of(r, candidate(f, "ft_2")), 0.429, 0.02);
    EXPECT_EQ(r.evidence["merge_signature"], "present");
    const std::string summary = r.evidence["summary"];
    EXPECT_NE(summary.find("followed by further training or noise"), std::string::npos) << summary;
  }
}

TEST(AssayVerdict, SummaryCitesTheNumbersInTheJson) {
  AssayFamily f(alloy::ModelFamily::kMoe, 32, 0.02, 4);
  alloy::test::TempDir out;
  merge_into(linear_yaml(candidate(f, "ft_1"), 0.571, candidate(f, "ft_2"), 0.429), out / "merged");
  alloy::PerturbOptions tune;
  tune.kind = alloy::PerturbKind::kFineTune;
  tune.strength = 0.02;
  alloy::perturb_model(out / "merged", out / "tuned", tune);
  const auto r = assay(out / "tuned", f.candidates());
  ASSERT_EQ(r.verdict, "merge") << r.evidence.dump();
  const std::string summary = r.evidence["summary"];
  // Weights as printed, z and spread bounds, and the disguise level.
  for (const auto& c : r.candidates) {
    if (!c.involved) continue;
    EXPECT_NEAR(number_after(summary, c.path + " (weight "), c.weight, 1e-5) << summary;
  }
  double z_low = INFINITY, spread_high = 0;
  for (const auto& c : r.candidates) {
    if (c.involved) z_low = std::min(z_low, std::fabs(r.evidence["weight_z"][c.path].get<double>()));
  }
  for (const auto& s : r.evidence["weight_spread"]) {
    if (s["sameness"] == "same") spread_high = std::max(spread_high, s["spread"].get<double>());
    else EXPECT_NE(summary.find("not on "), std::string::npos) << summary;  // untested components are named
  }
  EXPECT_TRUE(rounds_to(number_after(summary, "|z| >= "), z_low, 3)) << z_low << ": " << summary;
  EXPECT_TRUE(rounds_to(number_after(summary, "spread at most "), spread_high, 2)) << spread_high << ": " << summary;
  EXPECT_LE(spread_high, r.evidence["weight_spread_bar"].get<double>());
  EXPECT_GE(z_low, 5.0);
  const double disguise = 100 * r.evidence["disguise_level"].get<double>();
  EXPECT_TRUE(rounds_to(number_after(summary, "noise of about "), disguise, 2)) << disguise << ": " << summary;

  // A sibling: the fine-tune's reason is the test that failed, with its own numbers.
  const auto s = assay(f.dir / "ft_3", f.candidates());
  ASSERT_EQ(s.verdict, "fine-tune") << s.evidence.dump();
  const std::string why = s.evidence["summary"];
  EXPECT_EQ(why.find("z_min"), std::string::npos) << why;  // not a bar that passed
  EXPECT_NE(why.find("not a merge of the candidates: "), std::string::npos) << why;
}

// On every layout: the blend is made by {ft_1} alone in every element, so ft_2's kept-set density
// is 0; that once read as "a candidate DARE drops from" on GPT-OSS and Qwen3.5-MoE (dare_ties).
class AssayVerdictLayouts : public ::testing::TestWithParam<const char*> {};

TEST_P(AssayVerdictLayouts, BlendOfBaseAndFineTuneIsTheLinearRecipeWithBothWeights) {
  AssayFamily f(*alloy::family_from_name(GetParam()), 33, 0.02, 2);
  for (double w : {0.3, 0.6}) {
    alloy::test::TempDir out;
    merge_into(linear_yaml(candidate(f, "base"), w, candidate(f, "ft_1"), 1 - w), out / "blend");
    const auto r = assay(out / "blend", f.candidates());
    ASSERT_EQ(r.verdict, "merge") << r.evidence.dump();
    EXPECT_EQ(r.method, "linear") << r.evidence.dump();
    EXPECT_FALSE(r.recipe.contains("base_model")) << r.recipe.dump();
    ASSERT_EQ(r.recipe["models"].size(), 2u) << r.recipe.dump();
    double total = 0;
    for (const auto& m : r.recipe["models"]) {
      const double weight = m["parameters"]["weight"].get<double>();
      total += weight;
      EXPECT_NEAR(weight, m["model"] == candidate(f, "base") ? w : 1 - w, 0.005) << r.recipe.dump();
    }
    EXPECT_NEAR(total, 1.0, 1e-9);
    ASSERT_TRUE(r.evidence.contains("alternatives")) << r.evidence.dump();
    EXPECT_EQ(r.evidence["alternatives"][0]["merge_method"], "task_arithmetic");
  }
}

INSTANTIATE_TEST_SUITE_P(Families, AssayVerdictLayouts, ::testing::Values("llama", "gpt_oss", "qwen3_5_moe", "mixtral"));

// Noise on a sparse merge removes its exact equalities, and the dense fit reads it as task
// arithmetic; its residual still depends on the parents' delta magnitudes, so the verdict stays a
// merge whose method is not established (confidence low, the reason in summary and report). A
// task arithmetic merge under the same noise keeps its method and full confidence.
TEST_P(AssayVerdictLayouts, ASparseMergeUnderNoiseIsNotCalledDense) {
  AssayFamily f(*alloy::family_from_name(GetParam()), 34, 0.02, 2);
  const auto merged_with_noise = [&](const std::string& method, const std::string& params1, const std::string& params2,
                                     const fs::path& out) {
    const std::string base_model = method == "linear" ? "" : "\nbase_model: " + candidate(f, "base");
    merge_into("merge_method: " + method + base_model + "\nmodels:\n  - model: " +
                   candidate(f, "ft_1") + "\n    parameters: " + params1 + "\n  - model: " + candidate(f, "ft_2") +
                   "\n    parameters: " + params2 + "\ndtype: bfloat16\n",
               out / "merged");
    alloy::PerturbOptions noise;
    noise.kind = alloy::PerturbKind::kNoise;
    noise.strength = 0.5;
    noise.reference = candidate(f, "base");
    alloy::perturb_model(out / "merged", out / "noisy", noise);
    return assay(out / "noisy", f.candidates());
  };
  // dare_linear's weights sum to 1: its dense reading is a linear blend of the parents alone, the
  // base carrying no weight, and the residual is still read against the base.
  for (const char* method : {"ties", "dare_ties", "della", "dare_linear"}) {
    alloy::test::TempDir out;
    const auto r = merged_with_noise(method, "{weight: 0.6, density: 0.5}", "{weight: 0.4, density: 0.5}", out.path());
    ASSERT_EQ(r.verdict, "merge") << method << ": " << r.evidence["summary"];
    EXPECT_EQ(r.evidence.value("confidence", ""), "low") << method << ": " << r.evidence["summary"];
    EXPECT_EQ(r.evidence.value("method_established", true), false) << method;
    EXPECT_EQ(r.evidence["summary"].get<std::string>().rfind("a merge, but not by the method named", 0), 0u) << method;
    EXPECT_NE(alloy::assay_report_html(alloy::assay_to_json(r)).find("whose method the noise hides"), std::string::npos);
  }
  // Dense merges under the same noise keep their method and full confidence, the test having run:
  // task arithmetic (the base involved) and the Rio blend (linear, the base carrying no weight).
  const std::pair<const char*, std::pair<const char*, const char*>> dense_merges[] = {
      {"task_arithmetic", {"{weight: 0.7}", "{weight: 0.5}"}}, {"linear", {"{weight: 0.571}", "{weight: 0.429}"}}};
  for (const auto& [method, params] : dense_merges) {
    alloy::test::TempDir out;
    const auto dense = merged_with_noise(method, params.first, params.second, out.path());
    ASSERT_EQ(dense.verdict, "merge") << method << ": " << dense.evidence["summary"];
    EXPECT_EQ(dense.method, method);
    EXPECT_FALSE(dense.evidence.contains("confidence")) << method << ": " << dense.evidence["summary"];
    ASSERT_TRUE(dense.evidence.contains("residual_by_magnitude")) << method << ": " << dense.evidence.dump();
    for (const auto& row : dense.evidence["residual_by_magnitude"]) {
      EXPECT_FALSE(row["magnitude_dependent"].get<bool>()) << method << ": " << row;
    }
  }
}

// Read densely, breadcrumbs_ties under noise gives the base a weight that the trimming makes differ
// between GPT-OSS's expert tensors, and the sameness test took it for siblings: a fine-tune with
// full confidence, "not a merge". The residual's dependence on the deltas' magnitudes (which
// siblings do not show: tests/assay/test_assay_null.cpp) now leaves such a fine-tune undecided.
TEST(AssayVerdictSparse, ASparseMergeUnderNoiseIsNeverAConfidentFineTune) {
  int undecided = 0;
  for (uint64_t seed = 3; seed <= 6; ++seed) {
    alloy::test::TempDir dir;
    alloy::BaseModelOptions base;
    base.arch.family = alloy::ModelFamily::kGptOss;
    base.arch.layers = 2;
    base.arch.hidden = 128;
    base.seed = seed;
    alloy::FineTuneOptions ft;
    ft.relative_delta = 0.02;
    alloy::synth_family(dir / "fam", base, 2, 1, ft);
    const std::string b = (dir / "fam" / "base").string(), a1 = (dir / "fam" / "ft_1").string(),
                      a2 = (dir / "fam" / "ft_2").string();
    merge_into("merge_method: breadcrumbs_ties\nbase_model: " + b + "\nmodels:\n  - model: " + a1 +
                   "\n    parameters: {weight: 0.6, density: 0.5}\n  - model: " + a2 +
                   "\n    parameters: {weight: 0.4, density: 0.5}\ndtype: bfloat16\n",
               dir / "merged");
    alloy::PerturbOptions noise;
    noise.kind = alloy::PerturbKind::kNoise;
    noise.strength = 0.5;
    noise.reference = b;
    alloy::perturb_model(dir / "merged", dir / "noisy", noise);
    const auto r = assay(dir / "noisy", {b, a1, a2, (dir / "fam" / "unrelated_1").string()});
    const std::string summary = r.evidence["summary"];
    EXPECT_EQ(r.evidence.value("confidence", ""), "low") << "seed " << seed << ": " << summary;
    if (r.verdict != "fine-tune") continue;
    ++undecided;
    EXPECT_TRUE(r.evidence.value("sparse_merge_possible", false)) << "seed " << seed;
    EXPECT_EQ(summary.rfind("undecided, possibly a sparse merge under noise: ", 0), 0u) << summary;
    EXPECT_NE(alloy::assay_report_html(alloy::assay_to_json(r)).find("the fine-tune is not established"),
              std::string::npos);
  }
  EXPECT_GT(undecided, 0) << "no seed reached the case this test is about";
}

}  // namespace
