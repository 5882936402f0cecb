// Parity with mergekit: every case of tests/data/golden/manifest.json (outputs mergekit itself
// produced) is merged by the real alloy-merge executable and compared here, in C++, under the
// case's policy: exact (bit-identical), ulp1 (within one unit in the last place) or stat (random
// methods: per-tensor changed fraction and L1 of out - base against mergekit's Monte-Carlo stats).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "alloy/core/model.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct GoldenCase {
  std::string name, recipe, expected, policy;
};

std::vector<GoldenCase> golden_cases() {
  const json manifest =
      json::parse(alloy::test::read_bytes(fs::path(alloy::test::data_dir()) / "golden" / "manifest.json"));
  std::vector<GoldenCase> cases;
  for (const auto& c : manifest["cases"]) cases.push_back({c["name"], c["recipe"], c["expected"], c["policy"]});
  return cases;
}

std::vector<double> values_of(const alloy::ModelTensor& t) {
  std::vector<float> f(t.info->numel());
  alloy::load_as_f32(t.info->dtype, t.data(), f.size(), f.data());
  return {f.begin(), f.end()};
}

// Monotonic integer image of a float's bits, so that adjacent representable values differ by 1.
int64_t ordered(uint64_t bits, unsigned width) {
  const uint64_t sign = uint64_t{1} << (width - 1);
  const int64_t magnitude = static_cast<int64_t>(bits & (sign - 1));
  return (bits & sign) ? -magnitude : magnitude;
}

uint64_t element_bits(const uint8_t* data, size_t i, unsigned bytes) {
  uint64_t v = 0;
  std::memcpy(&v, data + i * bytes, bytes);
  return v;
}

void compare_bits(const alloy::Model& expected, const alloy::Model& actual, bool exact) {
  for (const auto& e : expected.tensors()) {
    const auto* a = actual.find(e.name());
    ASSERT_NE(a, nullptr) << "missing " << e.name();
    ASSERT_EQ(a->info->dtype, e.info->dtype) << e.name();
    ASSERT_EQ(a->info->shape, e.info->shape) << e.name();
    const unsigned bytes = alloy::dtype_bits(e.info->dtype) / 8;
    size_t mismatches = 0;
    for (size_t i = 0; i < e.info->numel(); ++i) {
      const uint64_t eb = element_bits(e.data(), i, bytes), ab = element_bits(a->data(), i, bytes);
      if (eb == ab) continue;
      const int64_t diff = ordered(eb, bytes * 8) - ordered(ab, bytes * 8);
      const bool is_nan = std::isnan(values_of(e)[i]);
      if (exact || is_nan || diff > 1 || diff < -1) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0u) << e.name() << (exact ? " is not bit-identical" : " differs by more than 1 ulp");
  }
  EXPECT_EQ(actual.tensors().size(), expected.tensors().size());
}

void compare_stat(const fs::path& expected_dir, const alloy::Model& actual, const alloy::Model& base) {
  const json stat = json::parse(alloy::test::read_bytes(expected_dir / "stat.json"));
  double total_n = 0, changed = 0, changed_mean = 0, changed_var = 0, l1 = 0, l1_mean = 0, l1_var = 0;
  for (const auto& [name, info] : stat["tensors"].items()) {
    const auto* a = actual.find(name);
    const auto* b = base.find(name);
    ASSERT_NE(a, nullptr) << name;
    ASSERT_NE(b, nullptr) << name;
    const auto av = values_of(*a), bv = values_of(*b);
    ASSERT_EQ(av.size(), bv.size()) << name;
    double diff_count = 0, l1_tensor = 0;
    for (size_t i = 0; i < av.size(); ++i) {
      ASSERT_TRUE(std::isfinite(av[i])) << name;
      diff_count += av[i] != bv[i];
      l1_tensor += std::fabs(av[i] - bv[i]);
    }
    const double n = static_cast<double>(av.size()), fraction = diff_count / n;
    const double fm = info["changed_mean"], fsd = info["changed_sd"], lm = info["l1_mean"], lsd = info["l1_sd"];
    EXPECT_NEAR(fraction, fm, std::max(0.02, 6 * fsd)) << name << " changed fraction";
    if (lm > 0) {
      EXPECT_NEAR(l1_tensor / lm, 1.0, std::max(0.02, 6 * lsd / lm)) << name << " L1(out - base)";
    }
    total_n += n;
    changed += fraction * n;
    changed_mean += fm * n;
    changed_var += (fsd * n) * (fsd * n);
    l1 += l1_tensor;
    l1_mean += lm;
    l1_var += lsd * lsd;
  }
  EXPECT_NEAR(changed / total_n, changed_mean / total_n, std::max(0.005, 6 * std::sqrt(changed_var) / total_n));
  EXPECT_NEAR(l1 / l1_mean, 1.0, std::max(0.01, 6 * std::sqrt(l1_var) / l1_mean));
}

void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name; }

class Golden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(Golden, AlloyMergeMatchesMergekit) {
  const GoldenCase& c = GetParam();
  const fs::path golden = fs::path(alloy::test::data_dir()) / "golden";
  alloy::test::TempDir out;
  int status = -1;
  // Run from the golden folder: recipes name models relative to it, as mergekit resolves them.
  const std::string output = alloy::test::run_command(
      "cd '" + golden.string() + "' && '" + alloy::test::bin("alloy-merge") + "' -q " + c.recipe + " '" +
          (out / "merged").string() + "' 2>&1",
      &status);
  ASSERT_EQ(status, 0) << output;
  const auto expected = alloy::Model::open(golden / c.expected);
  const auto actual = alloy::Model::open(out / "merged");
  const json expected_config = json::parse(alloy::test::read_bytes(golden / c.expected / "config.json"));
  const json actual_config = json::parse(alloy::test::read_bytes(out / "merged" / "config.json"));
  EXPECT_EQ(actual_config["num_hidden_layers"], expected_config["num_hidden_layers"]);
  EXPECT_EQ(actual_config["torch_dtype"], expected_config.contains("torch_dtype") ? expected_config["torch_dtype"]
                                                                                  : expected_config["dtype"]);
  if (c.policy == "stat") {
    compare_stat(golden / c.expected, actual, alloy::Model::open(golden / "models" / "base"));
  } else {
    compare_bits(expected, actual, c.policy == "exact");
  }
}

INSTANTIATE_TEST_SUITE_P(Mergekit, Golden, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(GoldenManifest, CoversNineteenCases) {
  // The 12 first cases and the 7 of the methods added later (sce to ram).
  EXPECT_EQ(golden_cases().size(), 19u);
}

}  // namespace
