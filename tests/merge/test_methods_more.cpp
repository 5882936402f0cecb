// The methods added after the first twelve golden cases (sce, karcher, multislerp, arcee_fusion,
// nearswap, ram) on small hand-worked inputs: each expected value below is worked out from
// mergekit's definition (docs/methods.md), so a method that computes something else fails. Their
// parity with mergekit's own outputs is tests/merge/test_method_golden.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "alloy/core/parallel.h"
#include "test_method_utils.h"

namespace {

using alloy::DType;
using alloy::ErrorCode;
using alloy::test::error_code_of;
using alloy::test::MethodCall;
using alloy::test::rnd;
using alloy::test::wd;

void expect_near_all(const std::vector<float>& actual, const std::vector<double>& expected,
                     double tolerance) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], tolerance) << "element " << i;
}

// ---------------------------------------------------------------------------------------------
// nearswap

TEST(MethodNearswap, TakesCloseValuesAndMovesLessTowardFarOnes) {
  MethodCall c{"nearswap"};
  c.base = 0;
  c.params["t"] = 0.001;
  c.sources = {{{0.0f, 1.0f, 2.0f, 5.0f}, {}}, {{0.0005f, 1.5f, 2.0f, 5.0f}, {}}};
  const auto out = c.run();
  EXPECT_EQ(out[0], 0.0005f);  // |d| < t: weight clamps to 1, the fine-tune's value
  // |d| = 0.5: weight = t / 0.5 = 0.002, out = 0.002 * 1.5 + 0.998 * 1
  EXPECT_NEAR(out[1], 0.002 * 1.5 + 0.998 * 1.0, 1e-6);
  EXPECT_EQ(out[2], 2.0f);  // equal: |d| clamps to 1e-6, weight 1
  EXPECT_EQ(out[3], 5.0f);
}

TEST(MethodNearswap, Bf16DividesByTheReciprocalLikeTorch) {
  MethodCall c{"nearswap", DType::BF16};
  c.base = 1;
  c.params["t"] = 0.3;
  const std::vector<float> base = {rnd(DType::BF16, 1.0f), rnd(DType::BF16, -0.7f), 3.0f};
  const std::vector<float> x = {rnd(DType::BF16, 1.9f), rnd(DType::BF16, 0.45f), 3.0f};
  c.sources = {{x, {}}, {base, {}}};
  const auto out = c.run();
  for (size_t i = 0; i < x.size(); ++i) {
    const DType d = DType::BF16;
    const float distance = std::max(std::fabs(rnd(d, base[i] - x[i])), wd(d, 1e-6));
    const float w = std::clamp(rnd(d, rnd(d, 1.0f / distance) * wd(d, 0.3)), 0.0f, 1.0f);
    const float expected = rnd(d, rnd(d, w * x[i]) + rnd(d, rnd(d, 1.0f - w) * base[i]));
    EXPECT_EQ(out[i], expected) << i;
  }
}

TEST(MethodNearswap, OneModelBesidesTheBaseAndTRequired) {
  MethodCall c{"nearswap"};
  c.base = 0;
  c.params["t"] = 0.1;
  c.sources = {{{1, 2}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2}));  // only the base
  c.sources = {{{1, 2}, {}}, {{2, 3}, {}}, {{3, 4}, {}}};
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
  c.sources.pop_back();
  c.params.clear();
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
  c.params["t"] = 0.1;
  c.base = -1;
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

// ---------------------------------------------------------------------------------------------
// ram

TEST(MethodRam, UniqueDeltasKeptSharedOnesAveragedSmallOnesDropped) {
  MethodCall c{"ram"};
  c.base = 3;
  c.params["epsilon"] = 1e-5;
  c.sources = {{{1.0f, 0.5f, 0.0f, 2e-6f, 10.0f}, {}},
               {{1.0f, 0.0f, 0.0f, 0.0f, 10.0f}, {}},
               {{-1.0f, 0.0f, 3.0f, 0.0f, 10.0f}, {}},
               {{0.0f, 0.0f, 0.0f, 0.0f, 9.0f}, {}}};
  const auto out = c.run();
  EXPECT_EQ(out[0], 1.0f / 3 + 1.0f / 3 - 1.0f / 3);  // three models: each delta divided by 3
  EXPECT_EQ(out[1], 0.5f);                            // one model: kept whole
  EXPECT_EQ(out[2], 3.0f);
  EXPECT_EQ(out[3], 0.0f);   // below epsilon: not counted
  EXPECT_EQ(out[4], 10.0f);  // 9 + (1 + 1 + 1) / 3
}

TEST(MethodRam, EpsilonIsAStrictThreshold) {
  MethodCall c{"ram", DType::BF16};
  c.base = 2;
  c.params["epsilon"] = 0.0009765625;  // 2^-10
  c.sources = {{{0.0009765625f, 0.001953125f}, {}}, {{0.0f, 0.001953125f}, {}}, {{0.0f, 0.0f}, {}}};
  const auto out = c.run();
  EXPECT_EQ(out[0], 0.0f);          // |d| == epsilon does not count
  EXPECT_EQ(out[1], 0.001953125f);  // both count: (d + d) / 2
}

// ---------------------------------------------------------------------------------------------
// sce

// Task vectors (base 0): d1 = [2, 0, 0, 0], d2 = [4, 0, 0, 2], d3 = [-1, 1, 0, 0].
MethodCall sce_call() {
  MethodCall c{"sce"};
  c.base = 3;
  c.sources = {{{2, 0, 0, 0}, {}}, {{4, 0, 0, 2}, {}}, {{-1, 1, 0, 0}, {}}, {{0, 0, 0, 0}, {}}};
  return c;
}

TEST(MethodSce, MeanSquareWeightsAndSignElection) {
  // Weights mean(d^2): 1, 5, 0.5 -> 2/13, 10/13, 1/13. Element 0 elects + (sum 5): d1 and d2
  // agree, (2 * 2/13 + 4 * 10/13) / (12/13) = 11/3; element 1: only d3; element 3: only d2.
  expect_near_all(sce_call().run(), {11.0 / 3, 1, 0, 2}, 1e-6);
}

TEST(MethodSce, TopKKeepsTheElementsOfLargestVariance) {
  // Variances across the models: 114/27, 2/9, 0, 8/9; three are nonzero.
  MethodCall c = sce_call();
  c.params["select_topk"] = 0.5;  // k = int(3 * 0.5) = 1: element 0 only
  // Weights of the masked vectors: 1, 4, 0.25 -> 4/21, 16/21, 1/21; (2*4 + 4*16) / 20 = 3.6.
  expect_near_all(c.run(), {3.6, 0, 0, 0}, 1e-6);
  c.params["select_topk"] = 0.7;  // k = int(2.1) = 2: elements 0 and 3
  // Weights 1, 5, 0.25 -> 4/25, 20/25, 1/25; element 0: (2*4 + 4*20) / 24 = 11/3.
  expect_near_all(c.run(), {11.0 / 3, 0, 0, 2}, 1e-6);
  c.params["select_topk"] = 0.0;  // nothing selected: the base
  expect_near_all(c.run(), {0, 0, 0, 0}, 0);
}

TEST(MethodSce, EqualVariancesRankByLowerIndex) {
  MethodCall c{"sce"};
  c.base = 2;
  c.params["select_topk"] = 0.5;
  c.sources = {{{1, 1, 1}, {}}, {{0, 0, 0}, {}}, {{0, 0, 0}, {}}};
  // All three variances are 2/9; k = int(3 * 0.5) = 1 keeps element 0.
  EXPECT_EQ(c.run(), (std::vector<float>{1, 0, 0}));
}

// ---------------------------------------------------------------------------------------------
// multislerp

TEST(MultiSlerp, OrthogonalModelsMeetOnTheSphereAtTheWeightedMeanDirection) {
  MethodCall c{"multislerp"};
  c.sources = {{{3, 0, 0}, {{"weight", 0.75}}}, {{0, 1, 0}, {{"weight", 0.25}}}};
  // Direction of 0.75 e1 + 0.25 e2 (the tangent vectors sum to zero), length the weighted mean
  // of the norms 0.75 * 3 + 0.25 * 1 = 2.5.
  const double len = std::sqrt(0.75 * 0.75 + 0.25 * 0.25);
  expect_near_all(c.run(), {2.5 * 0.75 / len, 2.5 * 0.25 / len, 0}, 2e-6);
  c.params["normalize_weights"] = 0;  // the same direction, length 0.75 * 3 + 0.25 * 1
  c.sources[0].params["weight"] = 0.6;
  c.sources[1].params["weight"] = 0.3;
  const double len2 = std::sqrt(0.36 + 0.09);
  expect_near_all(c.run(), {2.1 * 0.6 / len2, 2.1 * 0.3 / len2, 0}, 2e-6);
}

TEST(MultiSlerp, WithABaseInterpolatesTaskVectors) {
  MethodCall c{"multislerp"};
  c.base = 0;
  c.sources = {{{10, 10}, {}}, {{12, 10}, {{"weight", 0.5}}}, {{10, 12}, {{"weight", 0.5}}}};
  // Task vectors 2 e1 and 2 e2: direction (e1 + e2) / sqrt 2, length 2.
  expect_near_all(c.run(), {10 + std::sqrt(2.0), 10 + std::sqrt(2.0)}, 2e-6);
}

TEST(MultiSlerp, LoneModelOpposedPairAndOpposedTriple) {
  MethodCall c{"multislerp"};
  c.base = 0;
  c.sources = {{{1, 1}, {}}, {{5, -3}, {{"weight", 0.2}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{5, -3}));  // one model: returned as it is
  c.base = -1;
  c.sources = {{{1, 0}, {{"weight", 1}}}, {{-1, 0}, {{"weight", 1}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0}));  // opposite pair: the linear fallback
  c.sources.push_back({{0, 0}, {{"weight", 1}}});
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

// ---------------------------------------------------------------------------------------------
// karcher

// |sum_i log_u(u_i)|: the Riemannian gradient whose zero defines the Karcher mean.
double karcher_gradient(const std::vector<std::vector<double>>& units, std::vector<double> u) {
  const double len = std::sqrt(std::inner_product(u.begin(), u.end(), u.begin(), 0.0));
  for (double& x : u) x /= len;
  std::vector<double> g(u.size(), 0.0);
  for (const auto& v : units) {
    const double c = std::inner_product(u.begin(), u.end(), v.begin(), 0.0);
    const double theta = std::acos(std::clamp(c, -1.0, 1.0));
    for (size_t j = 0; j < u.size(); ++j) g[j] += theta / std::sin(theta) * (v[j] - c * u[j]);
  }
  return std::sqrt(std::inner_product(g.begin(), g.end(), g.begin(), 0.0));
}

TEST(MethodKarcher, ConvergesToTheRiemannianMeanScaledByTheMeanNorm) {
  MethodCall c{"karcher"};
  c.params["max_iter"] = 50;
  c.params["tol"] = 1e-7;
  // Unit directions e1, e2 and (e1 + e2 + e3)/sqrt 3 with norms 1, 2, 3.
  const double s = 1.0 / std::sqrt(3.0);
  const std::vector<std::vector<double>> units = {{1, 0, 0}, {0, 1, 0}, {s, s, s}};
  c.sources = {{{1, 0, 0}, {}}, {{0, 2, 0}, {}}, {{float(3 * s), float(3 * s), float(3 * s)}, {}}};
  const auto out = c.run();
  const std::vector<double> result(out.begin(), out.end());
  EXPECT_NEAR(std::sqrt(std::inner_product(result.begin(), result.end(), result.begin(), 0.0)), 2.0,
              1e-6);
  // The normalised arithmetic mean is not the Karcher mean here; the result is.
  EXPECT_GT(karcher_gradient(units, {1 + s, 1 + s, s}), 1e-3);
  EXPECT_LT(karcher_gradient(units, result), 1e-5);
  c.params["max_iter"] = 0;  // no iteration: the normalised mean, scaled
  const auto initial = c.run();
  EXPECT_GT(karcher_gradient(units, {initial.begin(), initial.end()}), 1e-3);
}

TEST(MethodKarcher, LoneAndZeroModels) {
  MethodCall c{"karcher"};
  c.sources = {{{1, 2}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2}));
  c.sources = {{{0, 0}, {}}, {{0, 0}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0}));
  // A zero model is left out of the direction but counts in the mean norm: (0 + 4) / 2.
  c.sources = {{{0, 0}, {}}, {{0, 4}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0, 2}));
}

// ---------------------------------------------------------------------------------------------
// arcee_fusion

TEST(MethodArceeFusion, KeepsTheChangesAboveTukeysFence) {
  MethodCall c{"arcee_fusion"};
  c.base = 0;
  // One row: importance = |d| * KL, proportional to 1..7, 100. Sorted, int(0.5 * 7) = 3 gives the
  // median 4, int(0.25 * 7) = 1 and int(0.75 * 7) = 5 give q1 = 2, q3 = 6; the fence is
  // 4 + 1.5 * 4 = 10 (times KL), which only the last element reaches.
  c.sources = {{{0, 0, 0, 0, 0, 0, 0, 0}, {}}, {{1, 2, 3, 4, 5, 6, 7, 100}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0, 0, 0, 0, 0, 0, 100}));
  // Each row is scored with its own KL divergence: a row shifted by 5 everywhere has the base's
  // softmax, KL 0, and keeps the base although its change is large. Over the 16 scores (8 zeros,
  // then k * [1..7, 100]) the median is s[7] = 0, q1 = s[3] = 0, q3 = s[11] = 4k: the fence 6k.
  c.shape = {2, 8};
  c.sources = {{std::vector<float>(16, 0.0f), {}},
               {{5, 5, 5, 5, 5, 5, 5, 5, 1, 2, 3, 4, 5, 6, 7, 100}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 7, 100}));
}

TEST(MethodArceeFusion, ResultIsFloat32AndOneModelIsRequired) {
  const alloy::MergeMethod* m = alloy::find_merge_method("arcee_fusion");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->result_dtype(DType::BF16), DType::F32);
  EXPECT_EQ(m->result_dtype(DType::F16), DType::F32);
  EXPECT_EQ(alloy::find_merge_method("linear")->result_dtype(DType::BF16), DType::BF16);
  // In bf16 the kept value is base + rnd(x - base) added in float32.
  MethodCall c{"arcee_fusion", DType::BF16};
  c.base = 0;
  const float big = rnd(DType::BF16, 1000.0f), small = rnd(DType::BF16, 0.00390625f);
  c.sources = {{{small, 0, 0, 0, 0, 0, 0, 0}, {}}, {{big, 0, 0, 0, 0, 0, 0, 0}, {}}};
  EXPECT_EQ(c.run()[0], small + rnd(DType::BF16, big - small));
  c.sources.push_back(c.sources[1]);
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

// ---------------------------------------------------------------------------------------------
// Every new method gives the same bits on one thread and on several.

TEST(MethodsMore, SameBitsOnAnyThreadCount) {
  const size_t n = 300000;  // several parallel chunks
  const auto base = alloy::test::random_values(DType::BF16, n, 1, 0.02);
  std::vector<std::vector<float>> models;
  for (uint64_t seed = 2; seed < 5; ++seed)
    models.push_back(alloy::test::fine_tune(DType::BF16, base, seed, 0.002));
  for (const char* name : {"sce", "karcher", "multislerp", "arcee_fusion", "nearswap", "ram"}) {
    MethodCall c{name, DType::BF16};
    c.shape = {n / 100, 100};
    const bool one_model = std::string(name) == "arcee_fusion" || std::string(name) == "nearswap";
    for (size_t m = 0; m < (one_model ? 1 : models.size()); ++m)
      c.sources.push_back({models[m], {{"weight", 0.2 + 0.1 * double(m)}}});
    if (std::string(name) != "karcher") {
      c.sources.push_back({base, {}});
      c.base = static_cast<int>(c.sources.size()) - 1;
    }
    c.params = {{"t", 0.001}, {"select_topk", 0.3}};
    if (std::string(name) != "nearswap") c.params.erase("t");
    if (std::string(name) != "sce") c.params.erase("select_topk");
    alloy::set_thread_count(1);
    const auto one = c.run();
    alloy::set_thread_count(2);
    const auto two = c.run();
    alloy::set_thread_count(0);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), n * sizeof(float)), 0) << name;
    size_t changed = 0;
    for (size_t i = 0; i < n; ++i) changed += one[i] != base[i];
    EXPECT_GT(changed, 0u) << name;
  }
}

}  // namespace
