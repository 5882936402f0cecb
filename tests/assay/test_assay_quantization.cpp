// Quantization grids in the suspect (lib/assay/quantization.cpp): int4 and int8 round trips of
// synthetic models in every storage dtype are found with their group size and scheme, min-max
// (asymmetric) groups are told from absmax ones, unquantized models never show a grid, and an int4
// merge too small for the sameness test is confirmed through the grid, and one hidden by noise
// before the rounding gets a lowered fine-tune verdict that says why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "alloy/core/dtype.h"
#include "alloy/perturb/perturb.h"
#include "assay/quantization.h"
#include "test_assay_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::DType;
using alloy::detail::quantization_finding;

alloy::BaseModelOptions model_in(DType dtype, uint64_t seed) {
  alloy::BaseModelOptions o = alloy::test::small_base(alloy::ModelFamily::kLlama, 2, 128, 128, seed);
  o.dtype = dtype;
  return o;
}

nlohmann::json finding_of(const fs::path& dir) {
  return quantization_finding(alloy::Model::open(dir));
}

TEST(AssayQuantization, RoundTripsAreFoundWithTheirGridInEveryStorageDtype) {
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    alloy::test::TempDir dir;
    alloy::synth_base_model(dir / "base", model_in(dtype, 5));
    EXPECT_TRUE(finding_of(dir / "base").is_null()) << alloy::dtype_name(dtype) << ": " << finding_of(dir / "base");
    for (const auto format : {alloy::ReroundFormat::kInt4, alloy::ReroundFormat::kInt8}) {
      alloy::PerturbOptions round;
      round.kind = alloy::PerturbKind::kReround;
      round.format = format;
      alloy::perturb_model(dir / "base", dir / "q", round);
      const nlohmann::json f = finding_of(dir / "q");
      const std::string what = std::string(alloy::dtype_name(dtype)) + " " + alloy::reround_format_name(format);
      ASSERT_FALSE(f.is_null()) << what;
      EXPECT_EQ(f["scheme"], "absmax") << what;
      EXPECT_EQ(f["tensors"], f["tested"]) << what << ": " << f;
      EXPECT_GT(f["share"].get<double>(), 0.99) << what;
      if (format == alloy::ReroundFormat::kInt4) {
        EXPECT_EQ(f["format"], "int4") << what;
        EXPECT_EQ(f["levels"], 7) << what;
        EXPECT_EQ(f["group_size"], 32) << what;
      } else {
        EXPECT_EQ(f["format"], "int8") << what;
        EXPECT_EQ(f["levels"], 127) << what;
        // One scale per row: rows of 128 read as groups of 128, the others as whole rows.
        EXPECT_TRUE(f["group_size"] == 0 || f["group_size"] == 128) << what << ": " << f;
      }
      fs::remove_all(dir / "q");
    }
  }
}

TEST(AssayQuantization, FineTunesAndMergesOfUnquantizedModelsShowNoGrid) {
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    alloy::test::TempDir dir;
    alloy::FineTuneOptions ft;
    ft.relative_delta = 0.01;
    alloy::synth_family(dir / "fam", model_in(dtype, 7), 2, 0, ft);
    alloy::test::merge_into("merge_method: linear\nmodels:\n  - model: " + (dir / "fam" / "ft_1").string() +
                                "\n    parameters: {weight: 0.571}\n  - model: " + (dir / "fam" / "ft_2").string() +
                                "\n    parameters: {weight: 0.429}\n",
                            dir / "merged");
    for (const char* m : {"fam/ft_1", "fam/ft_2", "merged"}) {
      EXPECT_TRUE(finding_of(dir / m).is_null()) << alloy::dtype_name(dtype) << " " << m << ": " << finding_of(dir / m);
    }
  }
}

// Asymmetric int4 (x = min + q s, q in 0..15, one scale and minimum per 64 elements, as GPTQ and
// AWQ store them) written by hand in bf16: read as min-max with groups of 64, not as absmax.
TEST(AssayQuantization, MinMaxGroupsAreToldFromAbsmax) {
  alloy::test::TempDir dir;
  const uint64_t rows = 64, cols = 256, group = 64;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> level(0, 15);
  std::normal_distribution<float> scale(0.02f, 0.002f), offset(-0.1f, 0.05f);
  std::string data;
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t g = 0; g < cols / group; ++g) {
      const float s = scale(rng), m = offset(rng);
      for (uint64_t i = 0; i < group; ++i) {
        // The extremes 0 and 15 appear in every group, so its range is 15 steps.
        const int q = i == 0 ? 0 : i == 1 ? 15 : level(rng);
        const uint16_t h = alloy::f32_to_bf16(m + float(q) * s);
        data.append(reinterpret_cast<const char*>(&h), 2);
      }
    }
  }
  fs::create_directories(dir / "m");
  alloy::test::write_safetensors(
      dir / "m" / "model.safetensors",
      "{" + alloy::test::tensor_entry("model.layers.0.mlp.up_proj.weight", "BF16", {rows, cols}, 0, data.size()) + "}",
      data);
  const nlohmann::json f = finding_of(dir / "m");
  ASSERT_FALSE(f.is_null());
  EXPECT_EQ(f["scheme"], "min-max");
  EXPECT_EQ(f["levels"], 15);
  EXPECT_EQ(f["group_size"], 64);
}

// int4 rounding of a 0.571 / 0.429 merge of parents 1% from their base, hidden 64: the rounding
// (~10% of the weights' norm) is 13x the merge's own deviation, and the sameness test of the
// weights cannot decide. Through the grid it can: the blend rounds to the suspect's grid points.
TEST(AssayQuantization, AnInt4MergeTooSmallForTheSamenessTestIsConfirmedThroughTheGrid) {
  alloy::test::TempDir dir;
  const auto candidates =
      alloy::test::int4_rounded_merge(alloy::test::small_base(alloy::ModelFamily::kLlama, 4, 64, 64, 23), dir.path());
  const auto r = alloy::test::assay(dir / "int4", candidates);
  ASSERT_EQ(r.verdict, "merge") << r.evidence.dump();
  EXPECT_EQ(r.method, "linear");
  EXPECT_EQ(r.evidence["merge_signature"], "untestable");  // the path this test is about
  EXPECT_EQ(r.evidence["quantization"]["format"], "int4");
  const auto& g = r.evidence["grid_rebuild"];
  EXPECT_TRUE(g["confirmed"].get<bool>()) << g;
  EXPECT_LT(g["ratio"].get<double>(), 0.05) << g;
  EXPECT_NEAR(alloy::test::weight_of(r, candidates[1]), 0.571, 0.04);
  EXPECT_NEAR(alloy::test::weight_of(r, candidates[2]), 0.429, 0.04);
}

// Noise of twice the merge's deviation before the int4 rounding: the blend no longer rounds to the
// suspect (the noise moves values across cell edges), so the grid cannot confirm the merge and
// the fine-tune the statistics allow is lowered, with the reason, in the summary and the report.
TEST(AssayQuantization, NoiseBeforeTheRoundingLeavesAnUndecidedFineTune) {
  alloy::test::TempDir dir;
  const auto candidates =
      alloy::test::int4_rounded_merge(alloy::test::small_base(alloy::ModelFamily::kLlama, 4, 64, 64, 23), dir.path());
  alloy::PerturbOptions noise;
  noise.kind = alloy::PerturbKind::kNoise;
  noise.strength = 2.0;
  noise.reference = candidates[0];
  alloy::perturb_model(dir / "merged", dir / "noisy", noise);
  alloy::PerturbOptions round;
  round.kind = alloy::PerturbKind::kReround;
  round.format = alloy::ReroundFormat::kInt4;
  alloy::perturb_model(dir / "noisy", dir / "noisy_int4", round);
  const auto r = alloy::test::assay(dir / "noisy_int4", candidates);
  ASSERT_EQ(r.verdict, "fine-tune") << r.evidence.dump();
  EXPECT_EQ(r.evidence.value("confidence", ""), "low") << r.evidence.dump();
  EXPECT_EQ(r.evidence["quantization"]["format"], "int4");
  EXPECT_EQ(r.evidence["summary"].get<std::string>().rfind("undecided under the quantization noise: ", 0), 0u);
  if (r.evidence.contains("grid_rebuild")) {
    EXPECT_FALSE(r.evidence["grid_rebuild"]["confirmed"].get<bool>());
  }
  // The report says why the confidence is low (not "the recipe does not rebuild").
  const std::string html = alloy::assay_report_html(alloy::assay_to_json(r));
  EXPECT_NE(html.find("int4 round trip whose rounding leaves the merge test undecided"), std::string::npos);
  // Without the rounding the same merge is found: the grid, not the recipe, hid it.
  const auto plain = alloy::test::assay(dir / "merged", candidates);
  EXPECT_EQ(plain.verdict, "merge") << plain.evidence.dump();
  EXPECT_FALSE(plain.evidence.contains("quantization"));
}

// Real layouts carry tensors of a few elements (gpt-oss attention sinks, Qwen3-Next's A_log and
// dt_bias: 4 each at this size) whose weights, fitted on 4 elements, have standard errors from 1-2
// residual degrees of freedom. They once put a rounded merge's sameness test at "differs" (and the
// verdict at a full-confidence fine-tune); the test now leaves them out. The same families' int4
// round trip of a third fine-tune stays a fine-tune: the grid does not make siblings a merge.
class AssayQuantizationLayouts : public ::testing::TestWithParam<const char*> {};

TEST_P(AssayQuantizationLayouts, AnInt4MergeIsFoundAndAnInt4SiblingIsNot) {
  alloy::test::TempDir dir;
  const auto family = alloy::family_from_name(GetParam());
  ASSERT_TRUE(family.has_value());
  const auto candidates =
      alloy::test::int4_rounded_merge(alloy::test::small_base(*family, 2, 128, 64, 1), dir.path(), 3);
  const auto r = alloy::test::assay(dir / "int4", candidates);
  ASSERT_EQ(r.verdict, "merge") << r.evidence["summary"];
  EXPECT_EQ(r.method, "linear");
  EXPECT_NE(r.evidence["merge_signature"], "absent") << r.evidence["weight_spread"];
  EXPECT_FALSE(r.evidence.contains("confidence")) << r.evidence["summary"];
  EXPECT_NEAR(alloy::test::weight_of(r, candidates[1]), 0.571, 0.06);
  EXPECT_NEAR(alloy::test::weight_of(r, candidates[2]), 0.429, 0.06);

  alloy::PerturbOptions round;
  round.kind = alloy::PerturbKind::kReround;
  round.format = alloy::ReroundFormat::kInt4;
  alloy::perturb_model(dir / "fam" / "ft_3", dir / "ft_3_int4", round);
  const auto sibling = alloy::test::assay(dir / "ft_3_int4", candidates);
  EXPECT_EQ(sibling.verdict, "fine-tune") << sibling.evidence["summary"];
  EXPECT_EQ(sibling.base, 0) << sibling.evidence["summary"];
}

INSTANTIATE_TEST_SUITE_P(RealLayouts, AssayQuantizationLayouts, ::testing::Values("gpt_oss", "qwen3_next", "qwen3_5_moe"));

}  // namespace
