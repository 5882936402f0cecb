// Merge methods on small hand-checked tensors; expected values come from the formulas written out
// here (double arithmetic, then the documented rounding), not from the implementation.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "alloy/dtype.h"
#include "alloy/error.h"
#include "alloy/merge_method.h"
#include "alloy/parallel.h"

namespace {

using alloy::DType;

struct Inputs {
  std::vector<std::vector<float>> values;
  std::vector<std::map<std::string, double>> params;
  int base = -1;
};

std::vector<float> run(const std::string& method, const Inputs& in, std::map<std::string, double> params = {},
                       DType dtype = DType::F32, std::vector<uint64_t> shape = {}, uint64_t seed = 1) {
  const alloy::MergeMethod* m = alloy::find_merge_method(method);
  EXPECT_NE(m, nullptr) << method;
  alloy::MergeContext ctx;
  ctx.tensor_name = "t";
  ctx.compute_dtype = dtype;
  ctx.shape = shape.empty() ? std::vector<uint64_t>{in.values[0].size()} : shape;
  ctx.base_index = in.base;
  ctx.params = params;
  ctx.seed = seed;
  for (size_t k = 0; k < in.values.size(); ++k) {
    ctx.sources.push_back({in.values[k].data(), in.params[k], static_cast<int>(k) == in.base, "m" + std::to_string(k)});
  }
  std::vector<float> out(in.values[0].size());
  m->merge(ctx, out.data());
  return out;
}

TEST(MethodRegistry, NamesAreSortedAndComplete) {
  const auto names = alloy::merge_method_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const char* n : {"linear", "slerp", "nuslerp", "ties", "task_arithmetic", "dare_ties", "dare_linear",
                        "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "passthrough"}) {
    EXPECT_NE(alloy::find_merge_method(n), nullptr) << n;
  }
  EXPECT_EQ(alloy::find_merge_method("dare-ties"), nullptr);
  EXPECT_TRUE(alloy::find_merge_method("ties")->requires_base_model());
  EXPECT_EQ(alloy::find_merge_method("ties")->crop_policy(), alloy::CropPolicy::kToBase);
}

TEST(MethodLinear, F32NormalizedAndNot) {
  Inputs in{{{1, 2, 3}, {3, 2, -1}}, {{{"weight", 0.75}}, {{"weight", 0.25}}}};
  EXPECT_EQ(run("linear", in), (std::vector<float>{1.5f, 2.0f, 2.0f}));
  in.params = {{{"weight", 1.0}}, {{"weight", 3.0}}};
  EXPECT_EQ(run("linear", in, {{"normalize", 0}}), (std::vector<float>{10, 8, 0}));
  EXPECT_EQ(run("linear", in, {{"normalize", 1}}), (std::vector<float>{2.5f, 2.0f, 0.0f}));
}

TEST(MethodLinear, Bf16RoundsWeightsFirst) {
  // 0.6 is 0.6015625 in bf16 and 0.4 is 0.400390625; the bf16 sum of the two rounds to 1.0.
  Inputs in{{{1.0f}, {0.0f}}, {{{"weight", 0.6}}, {{"weight", 0.4}}}};
  EXPECT_EQ(run("linear", in, {}, DType::BF16)[0], 0.6015625f);
  EXPECT_EQ(run("linear", in, {}, DType::F32)[0], static_cast<float>(0.6f / (0.6f + 0.4f)));
}

TEST(MethodLinear, WeightsSummingToZeroAreRefused) {
  Inputs in{{{1.0f}, {2.0f}}, {{{"weight", 1.0}}, {{"weight", -1.0}}}};
  try {
    run("linear", in);
    FAIL();
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kNonFinite);
    EXPECT_NE(std::string(e.what()).find("'t'"), std::string::npos);
  }
}

TEST(MethodSlerp, EndpointsMidpointAndColinearFallback) {
  const std::vector<float> a = {1, 0, 0, 0}, b = {0, 1, 0, 0};
  Inputs in{{a, b}, {{}, {}}, 0};
  EXPECT_EQ(run("slerp", in, {{"t", 0.0}}), a);
  EXPECT_EQ(run("slerp", in, {{"t", 1.0}}), b);
  const auto mid = run("slerp", in, {{"t", 0.5}});
  EXPECT_FLOAT_EQ(mid[0], static_cast<float>(std::sin(M_PI / 4)));  // 90 degrees apart: cos/sin of 45
  EXPECT_FLOAT_EQ(mid[1], static_cast<float>(std::sin(M_PI / 4)));
  const auto third = run("slerp", in, {{"t", 1.0 / 3.0}});
  EXPECT_NEAR(third[0], std::cos(M_PI / 6), 1e-7);
  EXPECT_NEAR(third[1], std::sin(M_PI / 6), 1e-7);
  // Nearly parallel vectors of different length: a plain lerp of the raw values.
  Inputs colinear{{{1, 2, 3}, {2, 4, 6.001f}}, {{}, {}}, 0};
  const auto lerp = run("slerp", colinear, {{"t", 0.25}});
  EXPECT_EQ(lerp[1], 0.75f * 2 + 0.25f * 4);
}

TEST(MethodTaskArithmetic, WeightedDeltasWithLambda) {
  Inputs in{{{1, 1, 1}, {2, 0, 1}, {1, 3, 5}}, {{}, {{"weight", 0.5}}, {{"weight", -1.0}}}, 0};
  // out = base + lambda * (0.5 (x1 - base) - (x2 - base))
  EXPECT_EQ(run("task_arithmetic", in, {{"lambda", 2.0}}), (std::vector<float>{2.0f, -4.0f, -7.0f}));
}

TEST(MethodTies, SignElectionDivisorAndZeroWeightModel) {
  // Deltas: m1 = [+2, -1, +1], m2 = [-1, -3, +1], m3 = [+5, +5, +5] with weight 0.
  Inputs in{{{0, 0, 0}, {2, -1, 1}, {-1, -3, 1}, {5, 5, 5}},
            {{}, {{"weight", 1.0}}, {{"weight", 0.5}}, {{"weight", 0.0}}},
            0};
  // Element 0: weighted 2, -0.5, 0 -> sum +, only m1 agrees -> 2/1. Element 1: -1, -1.5 -> both
  // agree -> -2.5/1.5. Element 2: 1, 0.5 -> 1.5/1.5 = 1. The zero-weight model never votes.
  const auto out = run("ties", in, {{"normalize", 1}});
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], static_cast<float>(-2.5f / 1.5f));
  EXPECT_EQ(out[2], 1.0f);
  const auto raw = run("ties", in, {{"normalize", 0}});
  EXPECT_EQ(raw, (std::vector<float>{2.0f, -2.5f, 1.5f}));
}

TEST(MethodTies, MagnitudeTopKTruncatesAndBreaksTiesToLowerIndex) {
  // density 0.5 of 5 elements keeps int(2.5) = 2; |delta| = 3, 1, 3, 2, 3: the two 3s at the lowest
  // indices win the tie.
  Inputs in{{{0, 0, 0, 0, 0}, {3, -1, -3, 2, 3}}, {{}, {{"weight", 1.0}, {"density", 0.5}}}, 0};
  EXPECT_EQ(run("ties", in), (std::vector<float>{3, 0, -3, 0, 0}));
  in.params[1]["density"] = 1.0;
  EXPECT_EQ(run("ties", in), (std::vector<float>{3, -1, -3, 2, 3}));
}

TEST(MethodBreadcrumbs, OutliersAndTheZeroTopQuirk) {
  std::vector<float> delta(10);
  std::iota(delta.begin(), delta.end(), 1.0f);  // |delta| = 1..10
  Inputs in{{std::vector<float>(10, 0.0f), delta}, {{}, {{"weight", 1.0}, {"density", 0.5}, {"gamma", 0.2}}}, 0};
  // n_top = 2 (drop 9, 10), n_bot = 10 - 5 - 2 = 3 (drop 1, 2, 3): keep 4..8.
  EXPECT_EQ(run("breadcrumbs", in), (std::vector<float>{0, 0, 0, 4, 5, 6, 7, 8, 0, 0}));
  // gamma 0.01 on 10 elements: n_top = 0 and mergekit's [n_bot:-0] slice keeps nothing.
  in.params[1]["gamma"] = 0.01;
  EXPECT_EQ(run("breadcrumbs", in), std::vector<float>(10, 0.0f));
}

TEST(MethodDare, KeepsAboutDensityRescalesAndIsDeterministic) {
  const size_t n = 200000;
  std::vector<float> delta(n);
  for (size_t i = 0; i < n; ++i) delta[i] = (i % 2 ? 1.0f : -1.0f) * (1.0f + (i % 7));
  Inputs in{{std::vector<float>(n, 0.0f), delta}, {{}, {{"weight", 1.0}, {"density", 0.3}}}, 0};
  alloy::set_thread_count(1);
  const auto one = run("dare_linear", in);
  alloy::set_thread_count(2);
  const auto two = run("dare_linear", in);
  alloy::set_thread_count(0);
  EXPECT_EQ(one, two);
  size_t kept = 0;
  double l1_in = 0, l1_out = 0;
  for (size_t i = 0; i < n; ++i) {
    kept += one[i] != 0.0f;
    l1_in += std::fabs(delta[i]);
    l1_out += std::fabs(one[i]);
  }
  EXPECT_NEAR(double(kept) / n, 0.3, 5 * std::sqrt(0.3 * 0.7 / n));
  EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-5);  // rescaled to the original L1 norm
  EXPECT_NE(run("dare_linear", in, {}, DType::F32, {}, 2), one) << "another seed, another mask";
}

TEST(MethodModelStock, TwoOrthogonalFineTunesGiveTZero) {
  // o1 = (1, 0), o2 = (0, 1): cos 0, t = 0: the output is the base.
  Inputs in{{{5, 5}, {6, 5}, {5, 6}}, {{}, {}, {}}, 0};
  EXPECT_EQ(run("model_stock", in), (std::vector<float>{5, 5}));
  // Identical task vectors: cos 1, t = 2 / (1 + 1) = 1: the average of the fine-tunes.
  Inputs same{{{1, 1}, {3, 5}, {3, 5}}, {{}, {}, {}}, 0};
  EXPECT_EQ(run("model_stock", same), (std::vector<float>{3, 5}));
}

TEST(MethodNuslerp, TaskVectorSlerpFlattenAndRowWise) {
  // Task vectors (1, 0) and (0, 1), weights 1 and 1: t = 0.5, 45 degrees each, norms kept at 1.
  Inputs in{{{1, 1}, {2, 1}, {1, 2}}, {{}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0};
  const auto out = run("nuslerp", in);
  EXPECT_NEAR(out[0], 1 + std::sin(M_PI / 4), 1e-6);
  EXPECT_NEAR(out[1], 1 + std::sin(M_PI / 4), 1e-6);
  // Per row on a 2x2 with identical rows gives the same per-row result.
  Inputs rows{{{0, 0, 0, 0}, {1, 0, 1, 0}, {0, 1, 0, 1}}, {{}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0};
  const auto per_row = run("nuslerp", rows, {{"nuslerp_flatten", 0}}, DType::F32, {2, 2});
  EXPECT_NEAR(per_row[0], std::sin(M_PI / 4), 1e-6);
  EXPECT_NEAR(per_row[3], std::sin(M_PI / 4), 1e-6);
}

TEST(MethodPassthrough, CopiesOrScales) {
  Inputs in{{{1.5f, -2.0f}}, {{}}};
  EXPECT_EQ(run("passthrough", in), (std::vector<float>{1.5f, -2.0f}));
  in.params[0]["scale"] = 0.5;
  EXPECT_EQ(run("passthrough", in), (std::vector<float>{0.75f, -1.0f}));
}

}  // namespace
