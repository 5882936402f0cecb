// Merge methods on small hand-checked tensors, and against straightforward references written out
// here (sort-based selection, the rounding chains of docs/methods.md spelled out element by
// element, double-precision trigonometry), never against the implementation itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "alloy/core/parallel.h"
#include "test_method_utils.h"

namespace {

using alloy::DType;
using alloy::ErrorCode;
using alloy::test::error_code_of;
using alloy::test::MethodCall;
using alloy::test::rnd;
using alloy::test::ulp_distance;
using alloy::test::wd;

constexpr DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

// ---------------------------------------------------------------------------------------------
// Registry and declared parameters

TEST(MethodRegistry, NamesAreSortedAndComplete) {
  const auto names = alloy::merge_method_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  const std::vector<std::string> expected = {
      "arcee_fusion", "breadcrumbs",     "breadcrumbs_ties", "dare_linear", "dare_ties",
      "della",        "della_linear",    "karcher",          "linear",      "model_stock",
      "multislerp",   "nearswap",        "nuslerp",          "passthrough", "ram",
      "sce",          "slerp",           "task_arithmetic",  "ties"};
  EXPECT_EQ(names, expected);
  for (const auto& n : names) {
    ASSERT_NE(alloy::find_merge_method(n), nullptr) << n;
    EXPECT_EQ(alloy::find_merge_method(n)->name(), n);
  }
}

TEST(MethodRegistry, UnknownNamesAreNull) {
  for (const char* n : {"dare-ties", "", "LINEAR", "linear ", "karcher_mean", "ramplus_tl"}) {
    EXPECT_EQ(alloy::find_merge_method(n), nullptr) << n;
  }
}

struct ExpectedParameter {
  std::string name;
  bool per_model;
  std::optional<double> default_value;
  bool required;
};

std::vector<ExpectedParameter> expected_parameters(const std::string& method) {
  if (method == "linear") return {{"weight", true, {}, true}, {"normalize", false, 1.0, false}};
  if (method == "slerp") return {{"t", false, {}, true}};
  if (method == "nuslerp") {
    return {{"weight", true, {}, true},
            {"nuslerp_flatten", false, 1.0, false},
            {"nuslerp_row_wise", false, 0.0, false}};
  }
  if (method == "model_stock") return {{"filter_wise", false, 0.0, false}};
  if (method == "passthrough") return {{"scale", true, {}, false}};
  // The methods mergekit defines with its easy_define decorator and the two task classes
  // (mergekit/merge_methods/{sce,karcher,multislerp,arcee_fusion,nearswap,ram}.py).
  if (method == "sce") return {{"select_topk", false, 1.0, false}, {"int8_mask", false, 0.0, false}};
  if (method == "karcher") return {{"max_iter", false, 10.0, false}, {"tol", false, 1e-5, false}};
  if (method == "multislerp") {
    return {{"weight", true, {}, true},
            {"normalize_weights", false, 1.0, false},
            {"eps", false, 1e-8, false}};
  }
  if (method == "arcee_fusion") return {};
  if (method == "nearswap") return {{"t", false, {}, true}};
  if (method == "ram") return {{"epsilon", false, 1e-5, false}};
  // The task-arithmetic family (mergekit's GeneralizedTaskArithmeticMerge and its registry).
  const std::map<std::string, std::pair<double, double>> normalize_rescale = {
      {"task_arithmetic", {0, 0}}, {"ties", {1, 0}},        {"dare_ties", {0, 1}},
      {"dare_linear", {0, 1}},     {"breadcrumbs", {0, 0}}, {"breadcrumbs_ties", {0, 0}},
      {"della", {1, 1}},           {"della_linear", {0, 1}}};
  const auto [normalize, rescale] = normalize_rescale.at(method);
  std::vector<ExpectedParameter> p = {{"weight", true, {}, true}, {"density", true, 1.0, false}};
  if (method.rfind("breadcrumbs", 0) == 0) p.push_back({"gamma", true, 0.01, false});
  if (method.rfind("della", 0) == 0) p.push_back({"epsilon", true, 0.15, false});
  p.push_back({"int8_mask", false, 0.0, false});
  p.push_back({"normalize", false, normalize, false});
  p.push_back({"rescale", false, rescale, false});
  p.push_back({"lambda", false, 1.0, false});
  return p;
}

TEST(MethodRegistry, ParametersDefaultsBaseAndCropAsMergekit) {
  for (const auto& name : alloy::merge_method_names()) {
    const alloy::MergeMethod* m = alloy::find_merge_method(name);
    auto expected = expected_parameters(name);
    auto actual = m->parameters();
    auto by_name = [](const auto& a, const auto& b) { return a.name < b.name; };
    std::sort(expected.begin(), expected.end(), by_name);
    std::sort(actual.begin(), actual.end(), by_name);
    ASSERT_EQ(actual.size(), expected.size()) << name;
    for (size_t i = 0; i < actual.size(); ++i) {
      EXPECT_EQ(actual[i].name, expected[i].name) << name;
      EXPECT_EQ(actual[i].per_model, expected[i].per_model) << name << " " << actual[i].name;
      EXPECT_EQ(actual[i].default_value, expected[i].default_value)
          << name << " " << actual[i].name;
      EXPECT_EQ(actual[i].required, expected[i].required) << name << " " << actual[i].name;
    }
    const std::set<std::string> others = {"linear",     "slerp",        "nuslerp",  "model_stock",
                                          "passthrough", "sce",          "karcher",  "multislerp",
                                          "arcee_fusion", "nearswap",    "ram"};
    const bool family = others.count(name) == 0;
    const bool needs_base = family || name == "slerp" || name == "model_stock" || name == "sce" ||
                            name == "arcee_fusion" || name == "nearswap" || name == "ram";
    EXPECT_EQ(m->requires_base_model(), needs_base) << name;
    const alloy::CropPolicy crop = family                  ? alloy::CropPolicy::kToBase
                                   : name == "passthrough" ? alloy::CropPolicy::kNone
                                                           : alloy::CropPolicy::kCommonPrefix;
    EXPECT_EQ(m->crop_policy(), crop) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// linear

TEST(MethodLinear, F32NormalizedAndNot) {
  MethodCall c{"linear"};
  c.sources = {{{1, 2, 3}, {{"weight", 0.75}}}, {{3, 2, -1}, {{"weight", 0.25}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1.5f, 2.0f, 2.0f}));
  c.sources[0].params["weight"] = 1.0;
  c.sources[1].params["weight"] = 3.0;
  c.params["normalize"] = 0;
  EXPECT_EQ(c.run(), (std::vector<float>{10, 8, 0}));
  c.params["normalize"] = 1;
  EXPECT_EQ(c.run(), (std::vector<float>{2.5f, 2.0f, 0.0f}));
}

TEST(MethodLinear, Bf16RoundsWeightsFirst) {
  // Weights become bf16 before use: 0.6 -> 0.6015625, 0.4 -> 0.400390625, and their bf16 sum
  // 1.001953125 rounds to 1.0.
  EXPECT_EQ(wd(DType::BF16, 0.6), 0.6015625f);
  EXPECT_EQ(wd(DType::BF16, 0.4), 0.400390625f);
  EXPECT_EQ(wd(DType::BF16, 0.3), 0.30078125f);
  EXPECT_EQ(wd(DType::BF16, 0.7), 0.69921875f);
  MethodCall c{"linear", DType::BF16};
  c.sources = {{{1.0f, 1.0f, 2.0f}, {{"weight", 0.6}}}, {{0.0f, 1.0f, 0.0f}, {{"weight", 0.4}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0.6015625f, 1.0f, 1.203125f}));
  c.params["normalize"] = 0;
  // Unnormalised: 1 * 0.6015625 + 1 * 0.400390625 = 1.001953125 -> bf16 1.0.
  EXPECT_EQ(c.run(), (std::vector<float>{0.6015625f, 1.0f, 1.203125f}));
  c.dtype = DType::F32;
  c.params.clear();
  EXPECT_EQ(c.run()[0], 0.6f / (0.6f + 0.4f));
}

TEST(MethodLinear, RoundingChainAgainstReferenceInEveryDtype) {
  for (DType d : kDtypes) {
    const size_t n = 3000;
    const std::vector<double> weights = {0.3, 0.7, -0.15};
    MethodCall c{"linear", d};
    for (size_t k = 0; k < weights.size(); ++k) {
      c.sources.push_back({alloy::test::random_values(d, n, 10 + k), {{"weight", weights[k]}}});
    }
    for (bool normalize : {true, false}) {
      c.params["normalize"] = normalize;
      const auto out = c.run();
      // Reference: p_k = rnd(wD(w_k) x_k), s = rnd(float sum in order), out = rnd(s / rnd(sum wD)).
      float weight_sum = 0.0f;
      for (double w : weights) weight_sum += wd(d, w);
      weight_sum = rnd(d, weight_sum);
      size_t differs_from_exact = 0;
      for (size_t i = 0; i < n; ++i) {
        float s = 0.0f;
        double exact = 0.0;
        for (size_t k = 0; k < weights.size(); ++k) {
          s += rnd(d, wd(d, weights[k]) * c.sources[k].values[i]);
          exact += weights[k] * c.sources[k].values[i];
        }
        float expected = rnd(d, s);
        if (normalize) {
          expected = rnd(d, expected / weight_sum);
          exact /= (0.3 + 0.7 - 0.15);
        }
        ASSERT_TRUE(alloy::test::same_bits(out[i], expected)) << dtype_name(d) << " element " << i;
        differs_from_exact += out[i] != rnd(d, exact);
      }
      // The chain is not "exact math rounded once": in half precision many elements differ.
      if (d != DType::F32) {
        EXPECT_GT(differs_from_exact, n / 10) << dtype_name(d);
      }
    }
  }
}

// normalize divides by W = rnd(sum of the weights); where W is a power of two with a normal
// reciprocal the kernel multiplies by 1 / W instead, and where W == 1 it skips the step. Both must
// be the division's bits: for every dtype, on random values, subnormals and values near the
// dtype's largest, with W = 1, 0.5, 2, 0.25, -0.5, 2^-59 (multiplied), 3 and 2^127 (whose
// reciprocal is subnormal: divided).
TEST(MethodLinear, NormalizeByAPowerOfTwoIsTheDivision) {
  const std::vector<std::pair<double, double>> weight_pairs = {
      {0.5, 0.5}, {0.25, 0.25}, {1.5, 0.5}, {0.125, 0.125}, {-0.25, -0.25},
      {std::ldexp(1.0, -60), std::ldexp(1.0, -60)}, {1.0, 2.0}, {std::ldexp(1.0, 126), std::ldexp(1.0, 126)}};
  for (DType d : kDtypes) {
    const float largest = d == DType::F16 ? 65504.0f : d == DType::BF16 ? 3.3e38f : 3.4e38f;
    for (const auto& [w0, w1] : weight_pairs) {
      const float weight_sum = rnd(d, wd(d, w0) + wd(d, w1));
      if (weight_sum == 0.0f || !std::isfinite(weight_sum)) continue;  // out of this dtype's range
      MethodCall c{"linear", d};
      std::vector<float> a = alloy::test::random_values(d, 2000, 7), b = alloy::test::random_values(d, 2000, 8);
      for (const float x : {1e-40f, -3e-42f, 6e-8f, -6e-5f, largest / 4, -largest / 3, 0.0f, -0.0f}) {
        a.push_back(rnd(d, x));
        b.push_back(rnd(d, x / 2));
      }
      c.sources = {{a, {{"weight", w0}}}, {b, {{"weight", w1}}}};
      std::vector<float> out;
      try {
        out = c.run();
      } catch (const alloy::Error&) {
        continue;  // a sum past the dtype's range: refused as non-finite, whatever the step
      }
      for (size_t i = 0; i < a.size(); ++i) {
        float s = 0.0f;  // the float32 sum from +0, in source order (a -0 sum is +0)
        s += rnd(d, wd(d, w0) * a[i]);
        s += rnd(d, wd(d, w1) * b[i]);
        s = rnd(d, s);
        ASSERT_TRUE(alloy::test::same_bits(out[i], rnd(d, s / weight_sum)))
            << dtype_name(d) << " W " << weight_sum << " element " << i << ": " << a[i] << ", " << b[i];
      }
    }
  }
}

// The kernel keeps the sums of two and three models in registers and takes other counts through a
// buffer; either way the bits are the reference chain's, also when the merge runs in place (the
// executor passes source 0's buffer as the output: merges_in_place()).
TEST(MethodLinear, EveryModelCountInPlaceAndNot) {
  const std::vector<double> weights = {0.3, 0.7, -0.15, 0.45, 0.2};
  for (DType d : {DType::BF16, DType::F32}) {
    for (size_t count = 1; count <= weights.size(); ++count) {
      MethodCall c{"linear", d};
      for (size_t k = 0; k < count; ++k) {
        c.sources.push_back({alloy::test::random_values(d, 1500, 40 + k), {{"weight", weights[k]}}});
      }
      const std::vector<float> out = c.run();
      float weight_sum = 0.0f;
      for (size_t k = 0; k < count; ++k) weight_sum += wd(d, weights[k]);
      weight_sum = rnd(d, weight_sum);
      for (size_t i = 0; i < out.size(); ++i) {
        float s = 0.0f;
        for (size_t k = 0; k < count; ++k) s += rnd(d, wd(d, weights[k]) * c.sources[k].values[i]);
        ASSERT_TRUE(alloy::test::same_bits(out[i], rnd(d, rnd(d, s) / weight_sum)))
            << dtype_name(d) << " " << count << " models, element " << i;
      }
      const alloy::MergeMethod* method = alloy::find_merge_method("linear");
      ASSERT_TRUE(method->merges_in_place());
      alloy::MergeContext ctx;
      ctx.tensor_name = c.tensor;
      ctx.compute_dtype = d;
      ctx.shape = {out.size()};
      std::vector<std::vector<float>> values;
      for (const auto& source : c.sources) values.push_back(source.values);
      for (size_t k = 0; k < count; ++k) ctx.sources.push_back({values[k].data(), c.sources[k].params, false, "m"});
      method->merge(ctx, values[0].data());
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_TRUE(alloy::test::same_bits(values[0][i], out[i])) << dtype_name(d) << " " << count << " in place " << i;
      }
    }
  }
}

TEST(MethodLinear, WeightsSummingToZeroAreRefused) {
  MethodCall c{"linear"};
  c.tensor = "model.layers.3.self_attn.o_proj.weight";
  c.sources = {{{1.0f, 2.0f}, {{"weight", 1.0}}}, {{2.0f, 2.0f}, {{"weight", -1.0}}}};
  std::string message;
  EXPECT_EQ(error_code_of([&] { c.run(); }, &message), ErrorCode::kNonFinite);
  EXPECT_NE(message.find("model.layers.3.self_attn.o_proj.weight"), std::string::npos) << message;
  // In bf16, 0.1 and -0.1 still cancel; without normalize the sum is fine.
  c.dtype = DType::BF16;
  c.sources[0].params["weight"] = 0.1;
  c.sources[1].params["weight"] = -0.1;
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kNonFinite);
  c.params["normalize"] = 0;
  EXPECT_EQ(c.run(), (std::vector<float>{rnd(DType::BF16, wd(DType::BF16, 0.1) * -1.0f), 0.0f}));
}

TEST(MethodLinear, NonFiniteInputsAreRefusedAndMissingWeightsNamed) {
  MethodCall c{"linear"};
  c.sources = {{{1.0f, INFINITY}, {{"weight", 1.0}}}, {{2.0f, -INFINITY}, {{"weight", 1.0}}}};
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kNonFinite);
  c.sources[1].params.clear();
  std::string message;
  EXPECT_EQ(error_code_of([&] { c.run(); }, &message), ErrorCode::kRecipe);
  EXPECT_NE(message.find("weight"), std::string::npos);
  EXPECT_NE(message.find("model1"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// passthrough

TEST(MethodPassthrough, CopiesOrScales) {
  MethodCall c{"passthrough"};
  c.sources = {{{1.5f, -2.0f, 3.0f}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1.5f, -2.0f, 3.0f}));
  c.sources[0].params["scale"] = 0.5;
  EXPECT_EQ(c.run(), (std::vector<float>{0.75f, -1.0f, 1.5f}));
  // bf16: the scale is rounded first, 0.3 -> 0.30078125, and 3 * 0.30078125 = 0.90234375.
  c.dtype = DType::BF16;
  c.sources[0].params["scale"] = 0.3;
  EXPECT_EQ(c.run()[2], 0.90234375f);
  c.sources.push_back({{1, 2, 3}, {}});
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

// ---------------------------------------------------------------------------------------------
// The task-arithmetic family against a sort-based reference

enum class RefSparsify { kNone, kMagnitude, kOutliers };

struct RefModel {
  std::vector<float> x;
  double weight;
  double density = 1.0;
  double gamma = 0.01;
};

// Straightforward reference of docs/methods.md: full sort by (|delta| descending, index ascending).
std::vector<float> reference_task_arithmetic(DType d, const std::vector<float>& base,
                                             const std::vector<RefModel>& models,
                                             RefSparsify sparsify, bool consensus, bool normalize,
                                             double lambda) {
  const size_t n = base.size();
  std::vector<std::vector<float>> v;
  std::vector<float> w;
  for (const auto& m : models) {
    std::vector<float> delta(n);
    for (size_t i = 0; i < n; ++i) delta[i] = rnd(d, m.x[i] - base[i]);
    if (sparsify != RefSparsify::kNone && m.density < 1.0) {
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        const float fa = std::fabs(delta[a]), fb = std::fabs(delta[b]);
        return fa != fb ? fa > fb : a < b;
      });
      size_t lo = 0, hi = 0;
      if (sparsify == RefSparsify::kMagnitude) {
        hi = static_cast<size_t>(m.density * static_cast<double>(n));
      } else {
        long n_top = static_cast<long>(m.gamma * n),
             n_bot = static_cast<long>(n) - static_cast<long>(m.density * n) - n_top;
        if (n_bot < 0) n_top += n_bot, n_bot = 0;
        if (n_top > 0) lo = static_cast<size_t>(n_top), hi = n - static_cast<size_t>(n_bot);
      }
      std::vector<float> kept(n, 0.0f);
      for (size_t r = lo; r < hi; ++r) kept[order[r]] = delta[order[r]];
      delta = kept;
    }
    const float wm = wd(d, m.weight);
    for (auto& x : delta) x = rnd(d, x * wm);
    v.push_back(delta);
    w.push_back(wm);
  }
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    float mixed = 0.0f, divisor = 0.0f;
    if (consensus) {
      float s = 0.0f;
      for (auto& vm : v) s += vm[i];
      const float sign = rnd(d, s) >= 0 ? 1.0f : -1.0f;
      for (size_t m = 0; m < v.size(); ++m) {
        if (v[m][i] != 0.0f && std::copysign(1.0f, v[m][i]) == sign) {
          mixed += v[m][i];
          divisor += w[m];
        }
      }
      divisor = rnd(d, divisor);
      if (divisor == 0.0f) divisor = 1.0f;
    } else {
      for (size_t m = 0; m < v.size(); ++m) {
        mixed += v[m][i];
        divisor += w[m];
      }
      divisor = rnd(d, divisor);
      if (std::fabs(divisor) < wd(d, 1e-8)) divisor = 1.0f;
    }
    mixed = rnd(d, mixed);
    if (normalize) mixed = rnd(d, mixed / divisor);
    if (lambda != 1.0) mixed = rnd(d, mixed * wd(d, lambda));
    out[i] = rnd(d, base[i] + mixed);
  }
  return out;
}

struct FamilyCase {
  const char* method;
  RefSparsify sparsify;
  bool consensus;
};

TEST(MethodTaskArithmetic, FamilyAgainstReferenceInEveryDtype) {
  const FamilyCase cases[] = {{"task_arithmetic", RefSparsify::kNone, false},
                              {"ties", RefSparsify::kMagnitude, true},
                              {"breadcrumbs", RefSparsify::kOutliers, false},
                              {"breadcrumbs_ties", RefSparsify::kOutliers, true}};
  for (DType d : kDtypes) {
    for (size_t n :
         {size_t{64}, size_t{1000}, size_t{150000}}) {  // 150000: several selection chunks
      const auto base = alloy::test::random_values(d, n, 1);
      std::vector<RefModel> models = {{alloy::test::fine_tune(d, base, 2, 0.05), 0.5, 0.8, 0.01},
                                      {alloy::test::fine_tune(d, base, 3, 0.08), 0.3, 0.33, 0.02},
                                      {alloy::test::fine_tune(d, base, 4, 0.04), -0.2, 0.5, 0.0},
                                      {alloy::test::fine_tune(d, base, 5, 0.04), 0.0, 0.9, 0.05}};
      for (const auto& fc : cases) {
        for (bool normalize : {false, true}) {
          for (double lambda : {1.0, 0.7}) {
            if (n > 1000 && (normalize || lambda != 1.0))
              continue;  // the large size once per method
            MethodCall c{fc.method, d};
            c.base = 1;  // the base in the middle of the source list: it is skipped wherever it is
            for (size_t m = 0; m < models.size(); ++m) {
              c.sources.push_back({models[m].x,
                                   {{"weight", models[m].weight},
                                    {"density", models[m].density},
                                    {"gamma", models[m].gamma}}});
              if (m == 0) c.sources.push_back({base, {}});
            }
            c.params = {{"normalize", normalize}, {"lambda", lambda}};
            const auto out = c.run();
            const auto expected = reference_task_arithmetic(d, base, models, fc.sparsify,
                                                            fc.consensus, normalize, lambda);
            size_t mismatches = 0;
            for (size_t i = 0; i < n; ++i)
              mismatches += !alloy::test::same_bits(out[i], expected[i]);
            EXPECT_EQ(mismatches, 0u) << fc.method << " " << dtype_name(d) << " n=" << n
                                      << " normalize=" << normalize << " lambda=" << lambda;
          }
        }
      }
    }
  }
}

TEST(MethodTaskArithmetic, WeightedDeltasWithLambda) {
  MethodCall c{"task_arithmetic"};
  c.base = 0;
  c.sources = {{{1, 1, 1}, {}}, {{2, 0, 1}, {{"weight", 0.5}}}, {{1, 3, 5}, {{"weight", -1.0}}}};
  c.params["lambda"] = 2.0;
  // out = base + lambda * (0.5 (x1 - base) - (x2 - base))
  EXPECT_EQ(c.run(), (std::vector<float>{2.0f, -4.0f, -7.0f}));
}

TEST(MethodTaskArithmetic, NormalizeWithCancellingWeightsDividesByOne) {
  // Weights 0.5 and -0.5 sum to 0, below 1e-8: the divisor becomes 1.
  MethodCall c{"task_arithmetic"};
  c.base = 0;
  c.sources = {{{10}, {}}, {{12}, {{"weight", 0.5}}}, {{14}, {{"weight", -0.5}}}};
  c.params["normalize"] = 1;
  EXPECT_EQ(c.run(), (std::vector<float>{9.0f}));  // 10 + (0.5 * 2 - 0.5 * 4) / 1
}

TEST(MethodTaskArithmetic, OnlyTheBaseGivesTheBaseAndNoBaseIsRefused) {
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{{1.5f, -0.0f}, {}}};
  const auto out = c.run();
  EXPECT_TRUE(alloy::test::same_bits(out[0], 1.5f));
  EXPECT_TRUE(alloy::test::same_bits(out[1], -0.0f));
  c.base = -1;
  c.sources.push_back({{1, 2}, {{"weight", 1.0}}});
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

TEST(MethodTaskArithmetic, NonFiniteResultIsRefused) {
  MethodCall c{"task_arithmetic"};
  c.base = 0;
  c.sources = {{{1, 2}, {}}, {{3e38f, 2}, {{"weight", 1.0}}}, {{3e38f, 2}, {{"weight", 1.0}}}};
  std::string message;
  EXPECT_EQ(error_code_of([&] { c.run(); }, &message), ErrorCode::kNonFinite);
  EXPECT_NE(message.find(c.tensor), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// ties

TEST(MethodTies, SignElectionDivisorAndZeroWeightModel) {
  // Deltas: m1 = [+2, -1, +1], m2 = [-1, -3, +1], m3 = [+5, +5, +5] with weight 0.
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{{0, 0, 0}, {}},
               {{2, -1, 1}, {{"weight", 1.0}}},
               {{-1, -3, 1}, {{"weight", 0.5}}},
               {{5, 5, 5}, {{"weight", 0.0}}}};
  // Element 0: weighted 2, -0.5, 0 -> sum +, only m1 agrees -> 2/1. Element 1: -1, -1.5 -> both
  // agree -> -2.5/1.5. Element 2: 1, 0.5 -> 1.5/1.5 = 1. The zero-weight model never votes and
  // never enters the divisor.
  c.params["normalize"] = 1;
  const auto out = c.run();
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], -2.5f / 1.5f);
  EXPECT_EQ(out[2], 1.0f);
  c.params["normalize"] = 0;
  EXPECT_EQ(c.run(), (std::vector<float>{2.0f, -2.5f, 1.5f}));
}

// The combine against an element-by-element reference, for 1, 2, 9 and 10 models (the kernel keeps
// up to 8 models' block on the stack and more on the heap), with and without sign consensus.
// Every sum starts at +0 (as a zeroed buffer): where every term is -0 (base and model -0, weight
// negative), task_arithmetic's output is rnd(-0 + +0) = +0, not -0.
TEST(MethodTies, ManyModelsAgainstAnElementReference) {
  for (const char* method : {"ties", "task_arithmetic"}) {
    const bool consensus = std::string(method) == "ties";
    for (DType d : {DType::BF16, DType::F32}) {
      for (size_t count : {1, 2, 9, 10}) {
        MethodCall c{method, d};
        c.base = 0;
        std::vector<float> base = alloy::test::random_values(d, 600, 90);
        base.push_back(-0.0f);
        c.sources.push_back({base, {}});
        std::vector<float> weights;
        for (size_t m = 0; m < count; ++m) {
          std::vector<float> x = alloy::test::random_values(d, 600, 91 + m);
          x.push_back(-0.0f);
          // One model of negative weight: its -0 term (from the delta +0 = -0 - -0) alone makes
          // the sum +0 only when the sum starts at +0.
          const double w = count == 1 ? -0.5 : 0.2 + 0.15 * static_cast<double>(m % 4) - (m == 5 ? 0.9 : 0.0);
          c.sources.push_back({x, {{"weight", w}, {"density", 1.0}}});
          weights.push_back(wd(d, w));
        }
        const std::vector<float> out = c.run();
        for (size_t i = 0; i < base.size(); ++i) {
          std::vector<float> v;
          float vote = 0.0f;
          for (size_t m = 0; m < count; ++m) {
            v.push_back(rnd(d, rnd(d, c.sources[m + 1].values[i] - base[i]) * weights[m]));
            vote += v.back();
          }
          const float sign = rnd(d, vote) >= 0.0f ? 1.0f : -1.0f;
          float mixed = 0.0f, divisor = 0.0f;
          for (size_t m = 0; m < count; ++m) {
            if (consensus && !(v[m] * sign > 0.0f)) continue;
            mixed += v[m];
            divisor += weights[m];
          }
          float change = rnd(d, mixed);
          if (consensus) {  // normalize (ties' default): by the weights that took part, 0 -> 1
            const float by = rnd(d, divisor) == 0.0f ? 1.0f : rnd(d, divisor);
            change = rnd(d, change / by);
          }
          ASSERT_TRUE(alloy::test::same_bits(out[i], rnd(d, base[i] + change)))
              << method << " " << dtype_name(d) << " " << count << " models, element " << i;
        }
      }
    }
  }
}

TEST(MethodTies, TheVoteUsesWeightedDeltasAndZeroVotesPlus) {
  MethodCall c{"ties"};
  c.base = 0;
  // Raw deltas +1 and -2 would elect "-"; weighted (1 and 0.25) they are +1 and -0.5: "+" wins.
  c.sources = {{{0, 0}, {}}, {{1, 1}, {{"weight", 1.0}}}, {{-2, -1}, {{"weight", 0.25}}}};
  const auto out = c.run();
  EXPECT_EQ(out[0], 1.0f);
  // Element 1: weighted +1 and -0.25 -> "+", divisor 1.
  EXPECT_EQ(out[1], 1.0f);
  // A vote summing to exactly 0 counts as "+".
  c.sources = {{{0}, {}}, {{1}, {{"weight", 1.0}}}, {{-1}, {{"weight", 1.0}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1.0f}));
}

TEST(MethodTies, MagnitudeTopKTruncatesAndBreaksTiesToLowerIndex) {
  // density 0.5 of 5 elements keeps int(2.5) = 2; |delta| = 3, 1, 3, 2, 3: the two 3s at the lowest
  // indices win the tie.
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{{0, 0, 0, 0, 0}, {}}, {{3, -1, -3, 2, 3}, {{"weight", 1.0}, {"density", 0.5}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{3, 0, -3, 0, 0}));
  c.sources[1].params["density"] = 0.7;  // int(3.5) = 3: all three 3s
  EXPECT_EQ(c.run(), (std::vector<float>{3, 0, -3, 0, 3}));
  c.sources[1].params["density"] = 1.0;  // density 1: untouched
  EXPECT_EQ(c.run(), (std::vector<float>{3, -1, -3, 2, 3}));
}

TEST(MethodTies, DensityTimesNumelIsTruncatedInDouble) {
  // |delta| = 1..100 (shuffled by sign); 0.29 * 100 = 28.999999999999996 -> 28 kept, and
  // 0.7 * 10 = 7.000000000000001 -> 7.
  std::vector<float> delta(100);
  for (size_t i = 0; i < 100; ++i)
    delta[i] = (i % 3 ? 1.0f : -1.0f) * static_cast<float>((i * 37) % 100 + 1);
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{std::vector<float>(100, 0.0f), {}}, {delta, {{"weight", 1.0}, {"density", 0.29}}}};
  auto out = c.run();
  size_t kept = 0;
  for (size_t i = 0; i < 100; ++i) {
    kept += out[i] != 0.0f;
    if (out[i] != 0.0f) {
      EXPECT_GE(std::fabs(out[i]), 73.0f);
    }
  }
  EXPECT_EQ(kept, 28u);
  c.sources = {
      {std::vector<float>(10, 0.0f), {}},
      {std::vector<float>(delta.begin(), delta.begin() + 10), {{"weight", 1.0}, {"density", 0.7}}}};
  out = c.run();
  EXPECT_EQ(std::count_if(out.begin(), out.end(), [](float x) { return x != 0.0f; }), 7);
}

TEST(MethodTies, DensityKeepingNothingIsRefusedAsMergekitDoes) {
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{{0, 0, 0, 0, 0}, {}},
               {{1, 2, 3, 4, 5}, {{"weight", 1.0}, {"density", 0.19}}}};  // int(0.95) = 0
  std::string message;
  EXPECT_EQ(error_code_of([&] { c.run(); }, &message), ErrorCode::kRecipe);
  EXPECT_NE(message.find("density"), std::string::npos);
  c.sources[1].params["density"] = 0.2;  // int(1.0) = 1
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0, 0, 0, 5}));
}

TEST(MethodTies, Int8MaskChangesNoBit) {
  const DType d = DType::BF16;
  const auto base = alloy::test::random_values(d, 4096, 7);
  MethodCall c{"ties", d};
  c.base = 0;
  c.sources = {{base, {}},
               {alloy::test::fine_tune(d, base, 8, 0.05), {{"weight", 0.6}, {"density", 0.4}}},
               {alloy::test::fine_tune(d, base, 9, 0.05), {{"weight", 0.4}, {"density", 0.6}}}};
  const auto plain = c.run();
  c.params["int8_mask"] = 1;
  EXPECT_EQ(c.run(), plain);
}

TEST(MethodTies, RescaleKeepsTheL1NormOfTheTaskVector) {
  // rescale with magnitude pruning: kept entries times rnd(sum |delta| / sum |kept|).
  std::vector<float> delta = {4, -3, 2, -1};  // top 2 kept: 4 and -3; ratio 10 / 7
  MethodCall c{"ties"};
  c.base = 0;
  c.sources = {{{0, 0, 0, 0}, {}}, {delta, {{"weight", 1.0}, {"density", 0.5}}}};
  c.params = {{"rescale", 1}, {"normalize", 0}};
  const float ratio = 10.0f / 7.0f;
  EXPECT_EQ(c.run(), (std::vector<float>{4 * ratio, -3 * ratio, 0, 0}));
}

// ---------------------------------------------------------------------------------------------
// breadcrumbs

TEST(MethodBreadcrumbs, OutliersAndTheZeroTopQuirk) {
  std::vector<float> delta(10);
  std::iota(delta.begin(), delta.end(), 1.0f);  // |delta| = 1..10
  MethodCall c{"breadcrumbs"};
  c.base = 0;
  c.sources = {{std::vector<float>(10, 0.0f), {}},
               {delta, {{"weight", 1.0}, {"density", 0.5}, {"gamma", 0.2}}}};
  // n_top = 2 (drop 9, 10), n_bot = 10 - 5 - 2 = 3 (drop 1, 2, 3): keep 4..8.
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0, 0, 4, 5, 6, 7, 8, 0, 0}));
  // gamma 0.01 on 10 elements: n_top = 0 and mergekit's [n_bot:-0] slice keeps nothing.
  c.sources[1].params["gamma"] = 0.01;
  EXPECT_EQ(c.run(), std::vector<float>(10, 0.0f));
  c.sources[1].params["gamma"] = 0.0;
  EXPECT_EQ(c.run(), std::vector<float>(10, 0.0f));
  // density 0.9, gamma 0.2: n_top = 2, n_bot = 10 - 9 - 2 = -1 -> n_top = 1, n_bot = 0: only the
  // largest is dropped.
  c.sources[1].params = {{"weight", 1.0}, {"density", 0.9}, {"gamma", 0.2}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 0}));
}

TEST(MethodBreadcrumbs, SixtyFourElementNormsContributeNothingWithDefaultGamma) {
  // As in the golden breadcrumbs_ties case: int(0.01 * 64) = 0, so the model's delta vanishes; a
  // model with gamma 0.02 (n_top = 1) still changes the tensor.
  const DType d = DType::BF16;
  const auto base = alloy::test::random_values(d, 64, 11, 0.1, 1.0);
  MethodCall c{"breadcrumbs_ties", d};
  c.base = 2;
  c.sources = {{alloy::test::fine_tune(d, base, 12, 0.05), {{"weight", 0.5}, {"density", 0.8}}},
               {alloy::test::fine_tune(d, base, 13, 0.05),
                {{"weight", 0.3}, {"density", 0.7}, {"gamma", 0.01}}},
               {base, {}}};
  EXPECT_EQ(c.run(), base);
  c.sources[1].params["gamma"] = 0.02;
  EXPECT_NE(c.run(), base);
}

// ---------------------------------------------------------------------------------------------
// DARE and DELLA (random masks)

TEST(MethodDare, KeepsAboutDensityRescalesAndIsDeterministic) {
  const size_t n = 200000;
  std::vector<float> delta(n);
  for (size_t i = 0; i < n; ++i) delta[i] = (i % 2 ? 1.0f : -1.0f) * (1.0f + (i % 7));
  MethodCall c{"dare_linear"};
  c.base = 0;
  c.sources = {{std::vector<float>(n, 0.0f), {}}, {delta, {{"weight", 1.0}, {"density", 0.3}}}};
  alloy::set_thread_count(1);
  const auto one = c.run();
  alloy::set_thread_count(2);
  const auto two = c.run();
  alloy::set_thread_count(0);
  EXPECT_EQ(one, two);
  EXPECT_EQ(c.run(), one) << "same seed, same bits";
  size_t kept = 0;
  double l1_in = 0, l1_out = 0;
  for (size_t i = 0; i < n; ++i) {
    kept += one[i] != 0.0f;
    l1_in += std::fabs(delta[i]);
    l1_out += std::fabs(one[i]);
  }
  EXPECT_NEAR(double(kept) / n, 0.3, 5 * std::sqrt(0.3 * 0.7 / n));
  EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-5);  // rescaled to the original L1 norm
  c.seed = 2;
  EXPECT_NE(c.run(), one) << "another seed, another mask";
}

TEST(MethodDare, Bf16RescaleFollowsTheRoundingChain) {
  // bf16: kept entries become rnd(delta * r), r = rnd(rnd(sum |delta|) / rnd(sum |kept delta|)).
  const DType d = DType::BF16;
  const size_t n = 50000;
  const auto delta = alloy::test::random_values(d, n, 21, 0.01);
  MethodCall c{"dare_linear", d};
  c.base = 0;
  c.sources = {{std::vector<float>(n, 0.0f), {}}, {delta, {{"weight", 1.0}, {"density", 0.5}}}};
  const auto out = c.run();
  double before = 0, after = 0;
  for (size_t i = 0; i < n; ++i) {
    before += std::fabs(delta[i]);
    if (out[i] != 0.0f) after += std::fabs(delta[i]);
  }
  const float ratio = rnd(d, rnd(d, before) / rnd(d, after));
  size_t kept = 0;
  for (size_t i = 0; i < n; ++i) {
    if (out[i] == 0.0f) continue;
    ++kept;
    ASSERT_EQ(out[i], rnd(d, delta[i] * ratio)) << i;
  }
  EXPECT_NEAR(double(kept) / n, 0.5, 5 * std::sqrt(0.25 / n));
  // Without rescale the kept entries are the deltas themselves.
  c.params["rescale"] = 0;
  const auto plain = c.run();
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(plain[i] == 0.0f || plain[i] == delta[i]) << i;
}

TEST(MethodDare, ModelsDrawIndependentMasksAndDensityZeroKeepsNothing) {
  const size_t n = 4096;
  std::vector<float> delta(n, 1.0f);
  MethodCall c{"dare_linear"};
  c.base = 0;
  c.sources = {{std::vector<float>(n, 0.0f), {}},
               {delta, {{"weight", 1.0}, {"density", 0.5}}},
               {delta, {{"weight", 1.0}, {"density", 0.5}}}};
  c.params["rescale"] = 0;
  // Each element is 0, 1 or 2: how many of the two masks kept it. Independent masks give all three.
  const auto out = c.run();
  std::set<float> values(out.begin(), out.end());
  EXPECT_EQ(values, (std::set<float>{0.0f, 1.0f, 2.0f}));
  c.sources[1].params["density"] = 0.0;
  c.sources[2].params["density"] = 0.0;
  EXPECT_EQ(c.run(), std::vector<float>(n, 0.0f));
}

TEST(MethodDare, TiesVariantElectsSignsAfterTheDrop) {
  const DType d = DType::BF16;
  const size_t n = 100000;
  const auto base = alloy::test::random_values(d, n, 31);
  MethodCall c{"dare_ties", d};
  c.base = 3;
  for (int m = 0; m < 3; ++m) {
    c.sources.push_back(
        {alloy::test::fine_tune(d, base, 32 + m, 0.05), {{"weight", 0.4}, {"density", 0.5}}});
  }
  c.sources.push_back({base, {}});
  alloy::set_thread_count(1);
  const auto one = c.run();
  alloy::set_thread_count(2);
  EXPECT_EQ(c.run(), one);
  alloy::set_thread_count(0);
  // Changed fraction: an element stays at the base if every model dropped it (0.5^3), or if the
  // surviving deltas vanish in bf16 rounding: at most 1 - 0.5^3 = 0.875, a little below.
  size_t changed = 0;
  for (size_t i = 0; i < n; ++i) changed += one[i] != base[i];
  EXPECT_GT(double(changed) / n, 0.70);
  EXPECT_LT(double(changed) / n, 0.875 + 5 * std::sqrt(0.875 * 0.125 / n));
}

TEST(MethodDella, KeepProbabilityRisesWithMagnitudeRankWithinRows) {
  // 4000 rows of 10: |delta| rank r keeps with p = 0.4 + 0.2 r / 9 (density 0.5, epsilon 0.1).
  const size_t rows = 4000, cols = 10;
  std::vector<float> delta(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < cols; ++j)
      delta[r * cols + j] = static_cast<float>((j * 7 + r) % cols + 1);
  }
  MethodCall c{"della_linear"};
  c.shape = {rows, cols};
  c.base = 0;
  c.sources = {{std::vector<float>(rows * cols, 0.0f), {}},
               {delta, {{"weight", 1.0}, {"density", 0.5}, {"epsilon", 0.1}}}};
  c.params["rescale"] = 0;
  alloy::set_thread_count(1);
  const auto out = c.run();
  alloy::set_thread_count(2);
  EXPECT_EQ(c.run(), out);
  alloy::set_thread_count(0);
  std::vector<double> kept(cols + 1, 0);
  for (size_t i = 0; i < out.size(); ++i) kept[static_cast<size_t>(delta[i])] += out[i] != 0.0f;
  for (size_t rank = 0; rank < cols; ++rank) {
    const double p = 0.4 + 0.2 * rank / 9.0;
    EXPECT_NEAR(kept[rank + 1] / rows, p, 5 * std::sqrt(p * (1 - p) / rows)) << "rank " << rank;
  }
}

TEST(MethodDella, ParameterChecksAsMergekit) {
  MethodCall c{"della"};
  c.base = 0;
  c.sources = {{{0, 0, 0, 0}, {}},
               {{1, 2, 3, 4}, {{"weight", 1.0}, {"density", 0.1}, {"epsilon", 0.15}}}};
  std::string message;
  EXPECT_EQ(error_code_of([&] { c.run(); }, &message), ErrorCode::kRecipe);  // 0.1 - 0.15 <= 0
  EXPECT_NE(message.find("epsilon"), std::string::npos);
  c.sources[1].params["density"] = 0.0;  // mergekit: zeros
  EXPECT_EQ(c.run(), (std::vector<float>{0, 0, 0, 0}));
  c.sources[1].params["density"] = 1.0;  // untouched, normalised by weight 1
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2, 3, 4}));
}

// ---------------------------------------------------------------------------------------------
// slerp

// Double-precision slerp of flattened a (base) and b; *scale gets |s0 a| + |s1 b| per element
// (float32 element arithmetic is accurate relative to that, not to a cancelling result).
std::vector<double> reference_slerp(const std::vector<float>& a, const std::vector<float>& b,
                                    double t, std::vector<double>* scale) {
  double aa = 0, bb = 0, ab = 0;
  for (size_t i = 0; i < a.size(); ++i)
    aa += double(a[i]) * a[i], bb += double(b[i]) * b[i], ab += double(a[i]) * b[i];
  const double dot = ab / std::sqrt(aa) / std::sqrt(bb);
  std::vector<double> out(a.size());
  double s0 = 1 - t, s1 = t;
  if (std::fabs(dot) <= 0.9995) {
    const double theta = std::acos(dot);
    s0 = std::sin((1 - t) * theta) / std::sin(theta);
    s1 = std::sin(t * theta) / std::sin(theta);
  }
  scale->resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    out[i] = s0 * a[i] + s1 * b[i];
    (*scale)[i] = std::fabs(s0 * a[i]) + std::fabs(s1 * b[i]);
  }
  return out;
}

TEST(MethodSlerp, EndpointsMidpointAndColinearFallback) {
  const std::vector<float> a = {1, 0, 0, 0}, b = {0, 1, 0, 0};
  MethodCall c{"slerp"};
  c.base = 0;
  c.sources = {{a, {}}, {b, {}}};
  c.params["t"] = 0.0;
  EXPECT_EQ(c.run(), a);
  c.params["t"] = 1.0;
  EXPECT_EQ(c.run(), b);
  c.params["t"] = 0.5;
  const auto mid = c.run();
  EXPECT_FLOAT_EQ(mid[0], static_cast<float>(std::sin(M_PI / 4)));  // 90 degrees apart: 45 each
  EXPECT_FLOAT_EQ(mid[1], static_cast<float>(std::sin(M_PI / 4)));
  c.params["t"] = 1.0 / 3.0;
  const auto third = c.run();
  EXPECT_NEAR(third[0], std::cos(M_PI / 6), 1e-7);
  EXPECT_NEAR(third[1], std::sin(M_PI / 6), 1e-7);
  // Nearly parallel vectors of different length: a plain lerp of the raw values.
  c.sources = {{{1, 2, 3}, {}}, {{2, 4, 6.001f}, {}}};
  c.params["t"] = 0.25;
  EXPECT_EQ(c.run()[1], 0.75f * 2 + 0.25f * 4);
}

// The sums |a|^2, |b|^2 and <a, b> are taken four elements at a time; the last 1-3 elements of a
// chunk take another path. Here only such elements are nonzero: a = (1, 0, 1), b = (0, 1, 1) there
// are 60 degrees apart (cos 1/2), so t = 1/2 gives s0 = s1 = sin(30) / sin(60) = 1/sqrt(3); a
// sum that dropped or misweighted those elements would see 90 degrees or another angle.
TEST(MethodSlerp, SumsCountTheElementsPastTheLastFullLane) {
  for (size_t before : {size_t{4}, alloy::kDefaultGrain + 4}) {  // in the first chunk, in the second
    std::vector<float> a(before + 3, 0.0f), b(before + 3, 0.0f);
    a[before] = 1, a[before + 2] = 1;
    b[before + 1] = 1, b[before + 2] = 1;
    MethodCall c{"slerp"};
    c.base = 0;
    c.sources = {{a, {}}, {b, {}}};
    c.params["t"] = 0.5;
    const auto out = c.run();
    const double s = 1 / std::sqrt(3.0);
    EXPECT_NEAR(out[before], s, 1e-7) << before;
    EXPECT_NEAR(out[before + 1], s, 1e-7) << before;
    EXPECT_NEAR(out[before + 2], 2 * s, 1e-7) << before;
  }
}

TEST(MethodSlerp, WithinOneUlpOfDoubleReferenceAndExactEndpoints) {
  for (DType d : kDtypes) {
    const size_t n = 20000;
    const auto a = alloy::test::random_values(d, n, 41);
    const auto b = alloy::test::fine_tune(d, alloy::test::random_values(d, n, 42), 43, 0.5);
    MethodCall c{"slerp", d};
    c.base = 1;  // the base second in the source list
    c.sources = {{b, {}}, {a, {}}};
    for (double t : {0.3, 0.5, 0.85}) {
      c.params["t"] = t;
      const auto out = c.run();
      std::vector<double> scale;
      const auto expected = reference_slerp(a, b, t, &scale);
      // Within 1 ulp of the correctly rounded value, or, where the two terms cancel, within the
      // float32 error of the element arithmetic (a few 2^-24 of the terms) plus the final rounding.
      const double precision = d == DType::F32 ? 0x1p-24 : d == DType::BF16 ? 0x1p-8 : 0x1p-11;
      size_t beyond = 0;
      for (size_t i = 0; i < n; ++i) {
        if (ulp_distance(d, out[i], rnd(d, expected[i])) <= 1) continue;
        beyond += std::fabs(out[i] - expected[i]) >
                  4 * 0x1p-24 * scale[i] + precision * std::fabs(expected[i]);
      }
      EXPECT_EQ(beyond, 0u) << dtype_name(d) << " t=" << t;
    }
    c.params["t"] = 0.0;
    EXPECT_EQ(c.run(), a);
    c.params["t"] = 1.0;
    EXPECT_EQ(c.run(), b);
  }
}

// b = a * 1.03 (as the golden ft_a layer-2 norm): |cos| > 0.9995, out = rnd(f32(1-t) a + f32(t) b),
// bit-exact in every dtype over enough elements to fill every vector width: a clone that fused the
// two products into one FMA (GCC does by default on FMA targets, see CMakeLists.txt) differs in
// many float32 elements.
TEST(MethodSlerp, NearlyColinearTensorsAreLerpedInFloat32) {
  for (DType d : kDtypes) {
    const auto a = alloy::test::random_values(d, 4099, 52, 0.1, 1.0);
    std::vector<float> b(a.size());
    for (size_t i = 0; i < a.size(); ++i) b[i] = rnd(d, a[i] * 1.03f);
    MethodCall c{"slerp", d};
    c.base = 0;
    c.sources = {{a, {}}, {b, {}}};
    c.params["t"] = 0.3;
    const auto out = c.run();
    const float s0 = wd(DType::F32, 0.7), s1 = wd(DType::F32, 0.3);
    size_t fused_differs = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const float first = s0 * a[i], second = s1 * b[i];
      ASSERT_TRUE(alloy::test::same_bits(out[i], rnd(d, first + second))) << dtype_name(d) << " element " << i;
      fused_differs += rnd(d, std::fma(s0, a[i], second)) != out[i];
    }
    // The data can tell the two apart (in float32 at least).
    if (d == DType::F32) {
      EXPECT_GT(fused_differs, a.size() / 20);
    }
  }
}

TEST(MethodSlerp, SourceCountAndParameterChecks) {
  MethodCall c{"slerp"};
  c.base = 0;
  c.sources = {{{1, 2}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2}));  // a lone tensor passes through, as in mergekit
  c.sources = {{{1, 2}, {}}, {{2, 1}, {}}};
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);  // no t
  c.params["t"] = 0.5;
  c.sources.push_back({{0, 1}, {}});
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);  // three models
}

// ---------------------------------------------------------------------------------------------
// nuslerp

// Reference: gathers each vector explicitly, then the chain of docs/methods.md element by element.
std::vector<float> reference_nuslerp(DType d, const std::vector<uint64_t>& shape,
                                     const std::vector<float>* base, const std::vector<float>& x0,
                                     const std::vector<float>& x1, double w0, double w1,
                                     bool flatten, bool row_wise) {
  const size_t n = x0.size();
  const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
  std::vector<std::vector<size_t>> vectors;  // flat indices of each vector
  if (flatten) {
    vectors.emplace_back(n);
    std::iota(vectors[0].begin(), vectors[0].end(), 0);
  } else {
    // Fibers along dim 0 (row_wise) or along the last dim.
    const size_t dim = row_wise ? 0 : shape.size() - 1;
    size_t stride = 1;
    for (size_t k = dim + 1; k < shape.size(); ++k) stride *= shape[k];
    for (size_t i = 0; i < n; ++i) {
      if ((i / stride) % shape[dim] != 0) continue;  // i starts a fiber
      std::vector<size_t> v;
      for (size_t j = 0; j < shape[dim]; ++j) v.push_back(i + j * stride);
      vectors.push_back(v);
    }
  }
  std::vector<float> out(n);
  for (const auto& idx : vectors) {
    std::vector<float> v0, v1;
    for (size_t i : idx) {
      v0.push_back(base ? rnd(d, x0[i] - (*base)[i]) : x0[i]);
      v1.push_back(base ? rnd(d, x1[i] - (*base)[i]) : x1[i]);
    }
    double s0 = 0, s1 = 0;
    for (size_t j = 0; j < v0.size(); ++j) s0 += double(v0[j]) * v0[j], s1 += double(v1[j]) * v1[j];
    const float n0 = std::max(rnd(d, std::sqrt(s0)), wd(d, 1e-7)),
                n1 = std::max(rnd(d, std::sqrt(s1)), wd(d, 1e-7));
    double dot = 0;
    for (size_t j = 0; j < v0.size(); ++j) dot += rnd(d, rnd(d, v0[j] / n0) * rnd(d, v1[j] / n1));
    const float cos_theta = std::clamp(rnd(d, dot), -1.0f, 1.0f);
    const float theta = rnd(d, std::acos(cos_theta)), s = rnd(d, std::sin(theta));
    const float c0 = rnd(d, std::sin(rnd(d, wd(d, 1 - t) * theta))),
                c1 = rnd(d, std::sin(rnd(d, wd(d, t) * theta)));
    for (size_t j = 0; j < idx.size(); ++j) {
      float res = std::fabs(s) < 1e-8
                      ? rnd(d, rnd(d, wd(d, 1 - t) * v0[j]) + rnd(d, wd(d, t) * v1[j]))
                      : rnd(d, rnd(d, rnd(d, c0 * v0[j]) + rnd(d, c1 * v1[j])) / s);
      out[idx[j]] = base ? rnd(d, (*base)[idx[j]] + res) : res;
    }
  }
  return out;
}

TEST(MethodNuslerp, FlattenRowWiseAndPerRowAgainstReference) {
  const std::vector<std::vector<uint64_t>> shapes = {{12}, {3, 4}, {2, 3, 4}, {64, 96}};
  for (DType d : kDtypes) {
    for (const auto& shape : shapes) {
      size_t n = 1;
      for (auto s : shape) n *= s;
      const auto base = alloy::test::random_values(d, n, 61);
      const auto x0 = alloy::test::fine_tune(d, base, 62, 0.1),
                 x1 = alloy::test::fine_tune(d, base, 63, 0.1);
      for (bool with_base : {true, false}) {
        for (int layout = 0; layout < 3; ++layout) {
          const bool flatten = layout == 0, row_wise = layout == 1;
          MethodCall c{"nuslerp", d};
          c.shape = shape;
          c.sources = {{x0, {{"weight", 0.75}}}, {x1, {{"weight", 0.25}}}};
          if (with_base) {
            c.sources.push_back({base, {}});
            c.base = 2;
          }
          c.params = {{"nuslerp_flatten", flatten}, {"nuslerp_row_wise", row_wise}};
          const auto out = c.run();
          const auto expected = reference_nuslerp(d, shape, with_base ? &base : nullptr, x0, x1,
                                                  0.75, 0.25, flatten, row_wise);
          size_t mismatches = 0;
          for (size_t i = 0; i < n; ++i) mismatches += !alloy::test::same_bits(out[i], expected[i]);
          EXPECT_EQ(mismatches, 0u) << dtype_name(d) << " rank " << shape.size() << " base "
                                    << with_base << " layout " << layout;
        }
      }
    }
  }
}

TEST(MethodNuslerp, HandCheckedAnglesAndTheLerpFallback) {
  // Task vectors (1, 0) and (0, 1), weights 1 and 1: t = 0.5, 45 degrees each, norms kept at 1.
  MethodCall c{"nuslerp"};
  c.base = 0;
  c.sources = {{{1, 1}, {}}, {{2, 1}, {{"weight", 1.0}}}, {{1, 2}, {{"weight", 1.0}}}};
  auto out = c.run();
  EXPECT_NEAR(out[0], 1 + std::sin(M_PI / 4), 1e-6);
  EXPECT_NEAR(out[1], 1 + std::sin(M_PI / 4), 1e-6);
  // Per row on a 2x2 with identical rows gives the same per-row result.
  c.shape = {2, 2};
  c.sources = {
      {{0, 0, 0, 0}, {}}, {{1, 0, 1, 0}, {{"weight", 1.0}}}, {{0, 1, 0, 1}, {{"weight", 1.0}}}};
  c.params["nuslerp_flatten"] = 0;
  out = c.run();
  EXPECT_NEAR(out[0], std::sin(M_PI / 4), 1e-6);
  EXPECT_NEAR(out[3], std::sin(M_PI / 4), 1e-6);
  // Parallel task vectors: cos 1, theta = 0, sin theta = 0 -> lerp with t = 3 / (1 + 3).
  c.shape.clear();
  c.params.clear();
  c.sources = {{{0, 0}, {}}, {{1, 0}, {{"weight", 1.0}}}, {{3, 0}, {{"weight", 3.0}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0.25f * 1 + 0.75f * 3, 0.0f}));
  // Weights summing to zero: t = 0.5.
  c.sources[1].params["weight"] = 1.0;
  c.sources[2].params["weight"] = -1.0;
  EXPECT_EQ(c.run(), (std::vector<float>{2.0f, 0.0f}));
}

TEST(MethodNuslerp, NeedsExactlyTwoModelsBesidesTheBase) {
  MethodCall c{"nuslerp"};
  c.sources = {{{1, 2}, {{"weight", 1.0}}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2}));
  c.sources = {
      {{1, 2}, {{"weight", 1.0}}}, {{1, 2}, {{"weight", 1.0}}}, {{1, 2}, {{"weight", 1.0}}}};
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

// ---------------------------------------------------------------------------------------------
// model_stock

std::vector<float> reference_model_stock(DType d, const std::vector<uint64_t>& shape,
                                         const std::vector<float>& base,
                                         const std::vector<std::vector<float>>& ws,
                                         bool filter_wise) {
  const size_t n = base.size(), length = filter_wise ? shape.back() : n, count = ws.size();
  std::vector<float> out(n);
  for (size_t start = 0; start < n; start += length) {
    std::vector<std::vector<float>> o(count, std::vector<float>(length));
    for (size_t m = 0; m < count; ++m) {
      for (size_t j = 0; j < length; ++j) o[m][j] = rnd(d, ws[m][start + j] - base[start + j]);
    }
    auto norm = [&](const std::vector<float>& v) {
      double s = 0;
      for (float x : v) s += double(x) * x;
      return rnd(d, std::sqrt(s));
    };
    float cos_sum = 0.0f;
    int pairs = 0;
    for (size_t a = 0; a < count; ++a) {
      for (size_t b = a + 1; b < count; ++b) {
        double dot = 0;
        for (size_t j = 0; j < length; ++j) dot += rnd(d, o[a][j] * o[b][j]);
        const float product = std::max(rnd(d, norm(o[a]) * norm(o[b])), wd(d, 1e-6));
        cos_sum += std::clamp(rnd(d, rnd(d, dot) / product), -1.0f, 1.0f);
        ++pairs;
      }
    }
    const float cos = rnd(d, rnd(d, cos_sum) / static_cast<float>(pairs));
    const float nf = static_cast<float>(count);
    const float t = rnd(d, rnd(d, nf * cos) / rnd(d, 1.0f + rnd(d, (nf - 1.0f) * cos)));
    for (size_t j = 0; j < length; ++j) {
      float sum = ws[0][start + j];
      for (size_t m = 1; m < count; ++m) sum = rnd(d, sum + ws[m][start + j]);
      const float avg = rnd(d, sum / nf);
      out[start + j] = rnd(d, rnd(d, t * avg) + rnd(d, rnd(d, 1.0f - t) * base[start + j]));
    }
  }
  return out;
}

TEST(MethodModelStock, TwoAndThreeModelsAgainstReference) {
  for (DType d : kDtypes) {
    const std::vector<uint64_t> shape = {48, 64};
    const size_t n = 48 * 64;
    const auto base = alloy::test::random_values(d, n, 71);
    std::vector<std::vector<float>> ws;
    for (int m = 0; m < 3; ++m) ws.push_back(alloy::test::fine_tune(d, base, 72 + m, 0.05));
    for (size_t count : {2, 3}) {
      for (bool filter_wise : {false, true}) {
        MethodCall c{"model_stock", d};
        c.shape = shape;
        c.sources = {{base, {}}};
        c.base = 0;
        std::vector<std::vector<float>> used(ws.begin(), ws.begin() + static_cast<long>(count));
        for (const auto& w : used) c.sources.push_back({w, {}});
        c.params["filter_wise"] = filter_wise;
        const auto out = c.run();
        const auto expected = reference_model_stock(d, shape, base, used, filter_wise);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; ++i) mismatches += !alloy::test::same_bits(out[i], expected[i]);
        EXPECT_EQ(mismatches, 0u) << dtype_name(d) << " models " << count << " filter_wise "
                                  << filter_wise;
      }
    }
  }
}

TEST(MethodModelStock, HandCheckedRatios) {
  // o1 = (1, 0), o2 = (0, 1): cos 0, t = 0: the output is the base.
  MethodCall c{"model_stock"};
  c.base = 0;
  c.sources = {{{5, 5}, {}}, {{6, 5}, {}}, {{5, 6}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{5, 5}));
  // Identical task vectors: cos 1, t = 2 / (1 + 1) = 1: the average of the fine-tunes.
  c.sources = {{{1, 1}, {}}, {{3, 5}, {}}, {{3, 5}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{3, 5}));
  // Three models with norm 2 and pairwise cos exactly 0.5: t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75,
  // out = 0.75 * (sum / 3) over the models (2, 0, 0, 0), (1, 1, 1, 1), (1, 1, 1, -1).
  c.sources = {{{0, 0, 0, 0}, {}}, {{2, 0, 0, 0}, {}}, {{1, 1, 1, 1}, {}}, {{1, 1, 1, -1}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{0.75f * (4.0f / 3.0f), 0.75f * (2.0f / 3.0f),
                                         0.75f * (2.0f / 3.0f), 0.0f}));
}

TEST(MethodModelStock, OnlyBaseOrTooFewModels) {
  MethodCall c{"model_stock"};
  c.base = 0;
  c.sources = {{{1, 2}, {}}};
  EXPECT_EQ(c.run(), (std::vector<float>{1, 2}));
  c.sources.push_back({{2, 3}, {}});
  EXPECT_EQ(error_code_of([&] { c.run(); }), ErrorCode::kRecipe);
}

}  // namespace
