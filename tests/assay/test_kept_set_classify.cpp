// The kept-set classification's two forms (assay/kept_sets.h): eight elements at a time in
// AVX-512 lanes must give the same counts and the same sums, bit for bit, as one element at a
// time, for one to four others, on elements built to reach every outcome (a plain-sum kept set, a
// sign-consensus one, a weighted mean of one sign's deltas or of two others, sums too close to
// tell apart, S equal to the base, infinities and NaN), in stretches whose lengths leave partial
// lane groups, added onto running sums.
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "alloy/core/cpu_features.h"
#include "assay/kept_sets.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

// Values of a float's full precision, not on the bf16 grid: the products of bf16 deltas add up
// exactly in double, in any order, and a test on them could not see the order of the sums.
float on_float_grid(double x) {
  return float(x);
}

struct Stretch {
  std::vector<float> base, suspect;
  std::vector<std::vector<float>> others;
  std::vector<const float*> other_rows;
  detail::ResolvedValues values(size_t begin, size_t count) {
    other_rows.clear();
    for (auto& row : others) other_rows.push_back(row.data() + begin);
    return {base.data() + begin, suspect.data() + begin, other_rows.data(), count};
  }
};

// Elements of every kind for k others with rescaled weights `scale`.
Stretch build_stretch(size_t k, const std::vector<double>& scale, size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> weight(0.0, 0.02);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Stretch st;
  st.others.assign(k, std::vector<float>(count));
  for (size_t i = 0; i < count; ++i) {
    const double b = on_float_grid(weight(rng));
    std::vector<double> u(k);
    const bool same_sign = unit(rng) < 0.6;
    const double sign = unit(rng) < 0.5 ? 1.0 : -1.0;
    for (size_t j = 0; j < k; ++j) {
      double delta = std::fabs(weight(rng)) + 0.002;
      if (!same_sign && j == 1) delta = -delta;
      delta *= sign;
      const float c = on_float_grid(b + delta);
      st.others[j][i] = c;
      u[j] = scale[j] * (double(c) - b);
    }
    const double kind = unit(rng);
    double r = 0;
    if (kind < 0.45) {  // a plain-sum kept set
      for (size_t j = 0; j < k; ++j) r += unit(rng) < 0.5 ? u[j] : 0.0;
    } else if (kind < 0.6 && k == 2) {  // sign consensus: the larger one alone
      r = std::fabs(u[0]) > std::fabs(u[1]) ? u[0] : u[1];
    } else if (kind < 0.6) {  // a weighted mean of the others of the first one's sign
      double sum = 0, weights = 0;
      for (size_t j = 0; j < k; ++j) {
        if ((u[j] > 0) != (u[0] > 0)) continue;
        const double w = 1.0 + double(j);
        sum += w * u[j], weights += w;
      }
      r = sum / weights;
    } else if (kind < 0.75) {  // a weighted mean of two of them
      const size_t i = k == 1 ? 0 : size_t(rng() % (k - 1)),
                   j = k == 1 ? 0 : i + 1 + size_t(rng() % (k - 1 - i));
      r = 0.3 * u[i] + 0.7 * u[j];
    } else if (kind < 0.8) {  // too close to tell the kept sets apart
      for (size_t j = 0; j < k; ++j) st.others[j][i] = on_float_grid(b + 1e-4);
    } else if (kind < 0.85) {
      r = 0;  // S is the base
    } else {
      r = weight(rng);
    }
    st.base.push_back(float(b));
    st.suspect.push_back(on_float_grid(b + r));
  }
  // A few values no checkpoint should hold, but a hostile one may.
  const float inf = std::numeric_limits<float>::infinity();
  st.others[0][count / 3] = inf;
  st.suspect[count / 2] = std::numeric_limits<float>::quiet_NaN();
  st.base[count / 2 + 1] = -inf;
  st.suspect[count / 5] = inf;
  st.base[count / 7] = 0.0f;
  return st;
}

uint64_t bits(double x) {
  return std::bit_cast<uint64_t>(x);
}

void expect_same(const detail::KeptSetCounts& lanes, const detail::KeptSetCounts& one) {
  EXPECT_EQ(lanes.kept, one.kept);
  EXPECT_EQ(lanes.solo, one.solo);
  EXPECT_EQ(lanes.classifiable, one.classifiable);
  EXPECT_EQ(lanes.matched, one.matched);
  EXPECT_EQ(lanes.opposite, one.opposite);
  EXPECT_EQ(lanes.sum, one.sum);
  EXPECT_EQ(lanes.none, one.none);
  EXPECT_EQ(lanes.between, one.between);
  EXPECT_EQ(bits(lanes.lambda_num), bits(one.lambda_num));
  EXPECT_EQ(bits(lanes.lambda_den), bits(one.lambda_den));
  ASSERT_EQ(lanes.normal.rows(), one.normal.rows());
  ASSERT_EQ(lanes.normal.cols(), one.normal.cols());
  EXPECT_EQ(lanes.pair_bins, one.pair_bins);
  ASSERT_EQ(lanes.pair_sums.size(), one.pair_sums.size());
  for (size_t e = 0; e < one.pair_sums.size(); ++e)
    EXPECT_EQ(bits(lanes.pair_sums[e]), bits(one.pair_sums[e])) << "pair_sums[" << e << "]";
  for (Eigen::Index j = 0; j < one.normal.rows(); ++j) {
    for (Eigen::Index c = 0; c < one.normal.cols(); ++c)
      EXPECT_EQ(bits(lanes.normal(j, c)), bits(one.normal(j, c)))
          << "normal(" << j << ", " << c << ")";
  }
}

TEST(KeptSetClassify, LanesGiveTheOneByOneCountsAndSumsBitForBit) {
  if (!cpu_has_x86_64_v4()) GTEST_SKIP() << "no AVX-512 here: the lanes form does not run";
  const double eps = std::ldexp(1.0, -8);  // bf16
  for (const auto& [k, tolerance] : {std::pair{size_t(1), detail::kModeScaleTolerance},
                                     std::pair{size_t(2), detail::kModeScaleTolerance},
                                     std::pair{size_t(3), detail::kModeScaleTolerance},
                                     std::pair{size_t(4), detail::kModeScaleTolerance},
                                     std::pair{size_t(2), detail::kFittedScaleTolerance},
                                     std::pair{size_t(3), detail::kFittedScaleTolerance},
                                     std::pair{size_t(4), detail::kFittedScaleTolerance}}) {
    SCOPED_TRACE(std::to_string(k) + " others, slack " + std::to_string(tolerance.slack));
    const std::vector<double> all_scales{1.6, 2.5, 1.1, 3.7};
    const std::vector<double> scale(all_scales.begin(), all_scales.begin() + std::ptrdiff_t(k));
    const size_t count = 48003;
    Stretch st = build_stretch(k, scale, count, uint32_t(11 + k));
    detail::KeptSetCounts lanes, one;
    lanes.resize(k), one.resize(k);
    // Three stretches added in turn onto the same running sums, the last one 3 elements long.
    for (const auto& [begin, size] :
         {std::pair{size_t(0), size_t(23997)}, std::pair{size_t(23997), size_t(24003)},
          std::pair{size_t(48000), size_t(3)}}) {
      ASSERT_TRUE(detail::classify_kept_sets_in_lanes(k, st.values(begin, size), scale.data(), eps,
                                                      tolerance, lanes));
      detail::classify_kept_sets_one_by_one(k, st.values(begin, size), scale.data(), eps, tolerance,
                                            one);
    }
    expect_same(lanes, one);
    // Every outcome was reached, so every mask and sum above was compared on real elements.
    EXPECT_GT(one.classifiable, 200u);
    EXPECT_GT(one.matched, 200u);
    EXPECT_GT(one.none, 20u);
    EXPECT_GT(one.classifiable, one.matched);  // the random S match no kept set
    for (size_t j = 0; j < k; ++j) EXPECT_GT(one.solo[j], 20u);
    EXPECT_NE(one.normal(0, Eigen::Index(k)), 0.0);
    if (k >= 2) {
      EXPECT_GT(one.kept[0], one.solo[0]);  // kept with others
      EXPECT_GT(one.opposite, 500u);
      EXPECT_GT(one.sum, 20u);
      EXPECT_LT(one.sum, one.opposite);
    }
    if (k == 2) {
      EXPECT_GT(one.between, 50u);
      EXPECT_GT(one.lambda_den, 0.0);
    }
    if (k >= 3) {
      uint64_t between = 0;
      for (uint64_t c : one.pair_bins) between += c;
      EXPECT_GT(between, 50u);
    }
  }
}

TEST(KeptSetClassify, LanesTakeNoMoreOthersThanTheKeptSetsCover) {
  detail::KeptSetCounts part;
  part.resize(5);
  Stretch st = build_stretch(5, {1.0, 1.0, 1.0, 1.0, 1.0}, 16, 5);
  const std::vector<double> scale(5, 1.0);
  EXPECT_FALSE(detail::classify_kept_sets_in_lanes(5, st.values(0, 16), scale.data(), 0.004,
                                                   detail::kModeScaleTolerance, part));
  EXPECT_EQ(part.classifiable + part.opposite, 0u);
}

TEST(KeptSetClassify, CompactResolvedKeepsTheFlaggedValuesOfEveryRowInOrder) {
  std::mt19937 rng(7);
  for (const size_t count :
       {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(1024), size_t(1037)}) {
    for (const double density : {0.0, 0.3, 1.0}) {
      std::bernoulli_distribution flag(density);
      std::vector<uint8_t> keep(count);
      std::vector<std::vector<float>> in(3, std::vector<float>(count)), expected(3);
      for (size_t i = 0; i < count; ++i) {
        keep[i] = flag(rng) ? uint8_t(1 + rng() % 255) : 0;
        for (size_t v = 0; v < 3; ++v) {
          in[v][i] = float(v * 100000 + i);
          if (keep[i]) expected[v].push_back(in[v][i]);
        }
      }
      std::vector<std::vector<float>> out(3, std::vector<float>(count + 16, -1.0f));
      const float* rows_in[3] = {in[0].data(), in[1].data(), in[2].data()};
      float* rows_out[3] = {out[0].data(), out[1].data(), out[2].data()};
      const size_t m = detail::compact_resolved(keep.data(), count, rows_in, 3, rows_out);
      for (size_t v = 0; v < 3; ++v) {
        out[v].resize(m);
        EXPECT_EQ(out[v], expected[v])
            << count << " elements, density " << density << ", row " << v;
      }
    }
  }
}

}  // namespace
}  // namespace alloy::test
