// Paths, alignment, REPAIR and curves: a planted permutation recovered exactly, the barrier of a
// model with itself, path points bit-identical to the real alloy-merge executable's output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "alloy/lmc/lmc.h"
#include "alloy/lmc/plot.h"
#include "lmc/lmc_test_utils.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

std::vector<std::vector<uint32_t>> planted_perms(const std::vector<size_t>& sizes, uint32_t seed) {
  std::vector<std::vector<uint32_t>> perms;
  uint32_t x = seed;
  for (size_t h = 1; h + 1 < sizes.size(); ++h) {
    std::vector<uint32_t> p(sizes[h]);
    for (size_t i = 0; i < p.size(); ++i) p[i] = uint32_t(i);
    for (size_t i = p.size(); i > 1; --i) {
      x = x * 1664525u + 1013904223u;
      std::swap(p[i - 1], p[(x >> 8) % i]);
    }
    perms.push_back(p);
  }
  return perms;
}

std::vector<float> logits_of(const lmc::Mlp& m, const lmc::Split& split, size_t count) {
  std::vector<size_t> idx(count);
  for (size_t i = 0; i < count; ++i) idx[i] = i;
  std::vector<float> x(count * split.features()), out(count * m.sizes.back());
  lmc::scale_pixels(split, idx.data(), count, x.data());
  lmc::forward<float>(m.sizes, m.params.data(), x.data(), count, out.data());
  return out;
}

TEST(LmcAlign, RecoversAPlantedPermutationExactly) {
  const std::vector<size_t> sizes = {20, 16, 12, 10};
  const lmc::Mlp a = lmc::init_mlp(sizes, 11);
  const auto planted = planted_perms(sizes, 3);
  const lmc::Mlp b = lmc::permute_hidden(a, planted);
  ASSERT_NE(0, std::memcmp(a.params.data(), b.params.data(), 4 * a.params.size()));
  const lmc::Split train = synthetic_split(400, 20, 9);
  for (auto method : {lmc::AlignMethod::kWeight, lmc::AlignMethod::kActivation}) {
    const lmc::AlignResult r = lmc::align_models(a, b, method, &train, 400);
    // b's unit i is a's unit planted[h][i]; aligned position i takes b's unit r.perms[h][i], which
    // must be a's unit i: r.perms is the inverse of the planted permutation.
    auto inverse = planted;
    for (size_t h = 0; h < planted.size(); ++h)
      for (size_t i = 0; i < planted[h].size(); ++i) inverse[h][planted[h][i]] = uint32_t(i);
    EXPECT_EQ(r.perms, inverse);
    EXPECT_EQ(0, std::memcmp(r.aligned.params.data(), a.params.data(), 4 * a.params.size()));
    EXPECT_EQ(logits_of(r.aligned, train, 50), logits_of(a, train, 50));
  }
}

TEST(LmcAlign, AlignedModelComputesTheSameFunction) {
  const std::vector<size_t> sizes = {20, 32, 24, 10};
  const lmc::Mlp a = lmc::init_mlp(sizes, 1), b = lmc::init_mlp(sizes, 2);
  const lmc::Split train = synthetic_split(300, 20, 4);
  const lmc::AlignResult r = lmc::align_models(a, b, lmc::AlignMethod::kWeight, nullptr);
  size_t moved = 0;
  for (const auto& p : r.perms)
    for (size_t i = 0; i < p.size(); ++i) moved += p[i] != i;
  EXPECT_GT(moved, 0u);
  const auto before = logits_of(b, train, 100), after = logits_of(r.aligned, train, 100);
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_NEAR(after[i], before[i], 1e-5f * (1 + std::fabs(before[i])));
  // and it sits closer to a than b did
  double d_before = 0, d_after = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    d_before += std::pow(double(a.params[i]) - b.params[i], 2);
    d_after += std::pow(double(a.params[i]) - r.aligned.params[i], 2);
  }
  EXPECT_LT(d_after, d_before);
  EXPECT_THROW(lmc::permute_hidden(a, {{0, 0}}), Error);
}

lmc::Dataset synthetic_dataset(size_t features) {
  lmc::Dataset d;
  d.train = synthetic_split(600, features, 1);
  d.test = synthetic_split(300, features, 2);
  return d;
}

TEST(LmcPath, BarrierOfAModelWithItselfIsZero) {
  const lmc::Dataset data = synthetic_dataset(20);
  const lmc::Mlp a = lmc::init_mlp({20, 16, 10}, 5);
  for (const char* method : {"linear", "slerp"}) {
    lmc::PathOptions options;
    options.method = method;
    options.points = 11;
    const lmc::PathResult path = lmc::evaluate_path(a, a, data, options);
    EXPECT_EQ(path.points.size(), 11u);
    EXPECT_NEAR(path.loss_barrier, 0.0, 1e-6) << method;
    EXPECT_NEAR(path.train_loss_barrier, 0.0, 1e-6) << method;
    EXPECT_NEAR(path.accuracy_barrier, 0.0, 1e-12) << method;
    const nlohmann::json j = lmc::path_json(path);
    for (const char* key : {"points", "loss_barrier", "accuracy_barrier", "train_loss_barrier"})
      EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_TRUE(j["points"][0].contains("train_accuracy"));
  }
  EXPECT_DOUBLE_EQ(lmc::barrier({0, 0.5, 1}, {1, 3, 2}), 1.5);
  EXPECT_DOUBLE_EQ(lmc::barrier({0, 0.5, 1}, {0.9, 0.5, 0.8}, true), 0.35);
}

TEST(LmcPath, PointsAreBitIdenticalToAlloyMerge) {
  TempDir dir;
  const lmc::Mlp a = lmc::init_mlp({20, 16, 12, 10}, 1), b = lmc::init_mlp({20, 16, 12, 10}, 2);
  lmc::save_mlp(a, dir / "a", false);
  lmc::save_mlp(b, dir / "b", false);
  struct Case {
    const char* method;
    double t;
  };
  for (const Case c : {Case{"linear", 0.3}, Case{"linear", 0.65}, Case{"slerp", 0.4}}) {
    SCOPED_TRACE(std::string(c.method) + " " + std::to_string(c.t));
    char recipe[1024];
    if (std::string(c.method) == "linear") {
      std::snprintf(
          recipe, sizeof recipe,
          "merge_method: linear\nmodels:\n  - model: %s\n    parameters:\n      weight: %.17g\n"
          "  - model: %s\n    parameters:\n      weight: %.17g\ndtype: float32\n",
          (dir / "a").c_str(), 1.0 - c.t, (dir / "b").c_str(), c.t);
    } else {
      std::snprintf(recipe, sizeof recipe,
                    "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\n"
                    "parameters:\n  t: %.17g\ndtype: float32\n",
                    (dir / "a").c_str(), (dir / "a").c_str(), (dir / "b").c_str(), c.t);
    }
    write_bytes(dir / "recipe.yml", recipe);
    std::filesystem::remove_all(dir / "merged");
    int status = 0;
    const std::string out = run_command(bin("alloy-merge") + " " + (dir / "recipe.yml").string() +
                                            " " + (dir / "merged").string() + " 2>&1",
                                        &status);
    ASSERT_EQ(status, 0) << out;
    const lmc::Mlp merged = lmc::load_mlp(dir / "merged");
    const lmc::Mlp ours = lmc::merge_models(a, b, c.method, c.t);
    ASSERT_EQ(merged.params.size(), ours.params.size());
    EXPECT_EQ(0, std::memcmp(merged.params.data(), ours.params.data(), 4 * ours.params.size()));
  }
}

TEST(LmcRepair, MatchesTheInterpolatedStatistics) {
  const lmc::Split train = synthetic_split(500, 20, 3);
  const lmc::Mlp a = lmc::init_mlp({20, 24, 16, 10}, 1), b = lmc::init_mlp({20, 24, 16, 10}, 2);
  const lmc::Mlp r = lmc::repair_interpolation(a, b, 0.5, train, 500);
  // The first hidden layer's pre-activations now have the average of the endpoints' means.
  auto mean_of = [&](const lmc::Mlp& m, size_t unit) {
    const auto z = lmc::hidden_activations(m, train, 500, 1, true);
    double s = 0;
    for (size_t i = 0; i < 500; ++i) s += z[i * 24 + unit];
    return s / 500;
  };
  for (size_t unit : {0u, 7u, 23u})
    EXPECT_NEAR(mean_of(r, unit), (mean_of(a, unit) + mean_of(b, unit)) / 2, 1e-4);
}

TEST(LmcCurve, BezierPointHitsTheEndpoints) {
  const lmc::Mlp a = lmc::init_mlp({8, 6, 10}, 1), b = lmc::init_mlp({8, 6, 10}, 2),
                 c = lmc::init_mlp({8, 6, 10}, 3);
  EXPECT_EQ(lmc::bezier_point(a, c, b, 0).params, a.params);
  EXPECT_EQ(lmc::bezier_point(a, c, b, 1).params, b.params);
  const lmc::Dataset data = synthetic_dataset(8);
  lmc::CurveOptions options;
  options.epochs = 1;
  options.points = 5;
  const lmc::CurveResult curve = lmc::train_curve(a, b, data, options);
  EXPECT_EQ(curve.curve.size(), 5u);
  EXPECT_EQ(curve.line.points.size(), 5u);
  EXPECT_DOUBLE_EQ(curve.curve.front().test.loss, curve.line.points.front().test.loss);
}

TEST(LmcPlot, WritesASelfContainedSvg) {
  const std::string svg =
      lmc::svg_line_chart("t<1>", "x", "y", {{"a&b", {0, 0.5, 1}, {1, NAN, 3}}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("t&lt;1&gt;"), std::string::npos);
  EXPECT_NE(svg.find("a&amp;b"), std::string::npos);
  EXPECT_EQ(svg.find("http://www.w3.org/2000/svg"), svg.find("http"));  // no other link
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

TEST(LmcPlot, JsonHasThePlottedNumbers) {
  lmc::CsvInput a{
      "a.csv", "naive",
      lmc::parse_csv("t,test_loss,train_loss\n0,0.3,0.2\n0.5,1.25,1.5\n1,0.35,0.25\n", "a.csv")};
  lmc::CsvInput b{"b.csv", "aligned",
                  lmc::parse_csv("t,test_loss,train_loss\n0,0.3,0.2\n1,0.35,0.25\n", "b.csv")};
  const auto one = lmc::csv_series({a, b}, "t", {"test_loss"});
  ASSERT_EQ(one.size(), 2u);
  EXPECT_EQ(one[0].name, "naive");
  EXPECT_EQ(one[1].name, "aligned");
  const auto both = lmc::csv_series({a, b}, "t", {"test_loss", "train_loss"});
  ASSERT_EQ(both.size(), 4u);
  EXPECT_EQ(both[1].name, "naive train_loss");
  EXPECT_TRUE(both[1].dashed);
  EXPECT_EQ(both[0].color, both[1].color);
  EXPECT_NE(both[0].color, both[2].color);
  EXPECT_EQ(lmc::csv_series({a}, "t", {"test_loss", "train_loss"})[1].name, "train_loss");
  EXPECT_THROW(lmc::csv_series({a}, "t", {"missing"}), Error);

  lmc::Series with_nan{"s", {0, 1}, {2.5, NAN}};
  const nlohmann::json j = lmc::chart_json("T", "t", "loss", {one[0], with_nan});
  EXPECT_EQ(j["title"], "T");
  EXPECT_EQ(j["x_label"], "t");
  EXPECT_EQ(j["y_label"], "loss");
  ASSERT_EQ(j["series"].size(), 2u);
  EXPECT_EQ(j["series"][0]["name"], "naive");
  EXPECT_EQ(j["series"][0]["x"], nlohmann::json({0.0, 0.5, 1.0}));
  EXPECT_EQ(j["series"][0]["y"], nlohmann::json({0.3, 1.25, 0.35}));
  EXPECT_TRUE(j["series"][1]["y"][1].is_null());
}

TEST(LmcPlot, ToolWritesTheChartAndItsNumbers) {
  TempDir dir;
  write_bytes(dir / "path.csv",
              "t,test_loss,test_accuracy\n0,0.33,0.88\n0.5,1.26,0.65\n1,0.37,0.87\n");
  int status = 0;
  const std::string out =
      run_command(bin("alloy-lmc") + " plot " + (dir / "chart.svg").string() + " --input " +
                      (dir / "path.csv").string() + "=naive --y test_loss --title Barrier --json " +
                      (dir / "chart.json").string() + " 2>&1",
                  &status);
  ASSERT_EQ(status, 0) << out;
  std::ifstream svg(dir / "chart.svg");
  std::string head(4, '\0');
  svg.read(head.data(), 4);
  EXPECT_EQ(head, "<svg");
  std::ifstream in(dir / "chart.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["title"], "Barrier");
  ASSERT_EQ(j["series"].size(), 1u);
  EXPECT_EQ(j["series"][0]["name"], "naive");
  EXPECT_EQ(j["series"][0]["x"], nlohmann::json({0.0, 0.5, 1.0}));
  EXPECT_EQ(j["series"][0]["y"], nlohmann::json({0.33, 1.26, 0.37}));
  // A missing column is one clear error, and nothing is written.
  const std::string bad = run_command(
      bin("alloy-lmc") + " plot " + (dir / "bad.svg").string() + " --input " +
          (dir / "path.csv").string() + " --y nope --json " + (dir / "bad.json").string() + " 2>&1",
      &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(bad.find("no column 'nope'"), std::string::npos) << bad;
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.json"));
}

}  // namespace
}  // namespace alloy::test
