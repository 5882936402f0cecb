// The sparse-merge statistics of one tensor (detail::sparse_statistics, detail::subset_statistics)
// on rows whose merge is known: a DARE merge (random keeps, rescaled deltas) must give back each
// other's rescaled weight and keep rate, a TIES merge (the largest deltas kept, the sign elected,
// the weighted mean of the kept deltas of that sign) its keep rates and relative weights. The
// element count leaves partial sub-chunks and blocks, so the vectorised event and mask sweeps and
// their tails are all read.
#include <algorithm>
#include <cmath>
#include <random>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "assay/internal.h"
#include "assay/subchunks.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

constexpr size_t kElements = 3 * kDefaultGrain + 1237;

// [0] the suspect, [1] the base, [2], [3] the two others; bf16 values.
struct Rows {
  std::vector<std::vector<float>> values;
  TensorInfo info;
  std::vector<ModelTensor> tensors;
  detail::TensorViews views() {
    info.dtype = DType::BF16;  // subset_statistics reads the suspect's dtype (its rounding)
    tensors.assign(values.size(), ModelTensor{nullptr, &info});
    detail::TensorViews v;
    for (size_t i = 0; i < values.size(); ++i) {
      v.inputs.push_back(&tensors[i]);
      v.values.push_back(values[i].data());
    }
    v.numel = kElements;
    return v;
  }
};

// The base and two others, base + a delta of half the base's spread (so that most deltas are
// "well resolved", at least an eighth of the base value), every value bf16.
Rows family(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> weight(0.0f, 0.02f), delta(0.0f, 0.01f);
  Rows rows;
  rows.values.assign(4, std::vector<float>(kElements));
  for (size_t i = 0; i < kElements; ++i) {
    const float base = round_to(DType::BF16, weight(rng));
    rows.values[1][i] = base;
    for (size_t c = 2; c < 4; ++c) rows.values[c][i] = round_to(DType::BF16, base + delta(rng));
  }
  return rows;
}

TEST(AssaySparseStatistics, DareMergeGivesBackEachRescaledWeightAndKeepRate) {
  Rows rows = family(7);
  const double keep[2] = {0.5, 0.7}, weight[2] = {0.6, 0.4};
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> draw(0.0, 1.0);
  for (size_t i = 0; i < kElements; ++i) {
    const float base = rows.values[1][i];
    float merged = base;
    for (size_t j = 0; j < 2; ++j) {
      const float delta = rows.values[2 + j][i] - base;
      if (draw(rng) < keep[j]) merged += float(weight[j] / keep[j]) * delta;
    }
    rows.values[0][i] = round_to(DType::BF16, merged);
  }
  const detail::TensorViews views = rows.views();
  const detail::SparseStats sparse = detail::sparse_statistics(views, 1, {2, 3});
  const detail::SubsetStats subsets = detail::subset_statistics(views, 1, {2, 3}, sparse);
  for (size_t j = 0; j < 2; ++j) {
    SCOPED_TRACE("other " + std::to_string(j));
    const double scale = weight[j] / keep[j];
    // The ratio histogram's mode (bins 0.02 wide) where j alone was kept, averaged over the bins
    // beside it: within half a bin.
    EXPECT_NEAR(sparse.kept_scale[j], scale, 0.01);
    // Kept alone against nothing kept: p_j (1 - p_o) / ((p_j + 1 - p_j)(1 - p_o)) = p_j.
    EXPECT_NEAR(sparse.solo_density[j], keep[j], 0.03);
    // The kept sets read element by element: each keep rate and, by least squares, each scale.
    EXPECT_NEAR(subsets.density[j], keep[j], 0.02);
    EXPECT_NEAR(subsets.scale[j], scale, 0.01);
  }
  EXPECT_GT(subsets.classifiable, kElements / 20);
  EXPECT_GT(subsets.matched_share, 0.95);
  // Opposite-sign elements where both were kept are made by the plain sum (dare_linear) only.
  EXPECT_GT(subsets.sum_votes, subsets.opposite / 10);
}

TEST(AssaySparseStatistics, TiesMergeGivesBackKeepRatesAndRelativeWeights) {
  Rows rows = family(8);
  const double keep[2] = {0.4, 0.6}, weight[2] = {0.7, 0.3};
  // Each other keeps its largest |delta|: the (1 - keep) quantile is its threshold.
  float threshold[2];
  for (size_t j = 0; j < 2; ++j) {
    std::vector<float> magnitude(kElements);
    for (size_t i = 0; i < kElements; ++i)
      magnitude[i] = std::fabs(rows.values[2 + j][i] - rows.values[1][i]);
    const size_t at = size_t(double(kElements) * (1 - keep[j]));
    std::nth_element(magnitude.begin(), magnitude.begin() + ptrdiff_t(at), magnitude.end());
    threshold[j] = magnitude[at];
  }
  // The sign of the weighted kept deltas' sum is elected; the kept deltas of that sign are
  // averaged with their weights (TIES's disjoint mean).
  for (size_t i = 0; i < kElements; ++i) {
    const float base = rows.values[1][i];
    float delta[2], vote = 0;
    for (size_t j = 0; j < 2; ++j) {
      delta[j] = rows.values[2 + j][i] - base;
      if (std::fabs(delta[j]) < threshold[j]) delta[j] = 0;
      vote += float(weight[j]) * delta[j];
    }
    float sum = 0, weights = 0;
    for (size_t j = 0; j < 2; ++j) {
      if (delta[j] == 0 || (delta[j] > 0) != (vote > 0)) continue;
      sum += float(weight[j]) * delta[j];
      weights += float(weight[j]);
    }
    rows.values[0][i] = round_to(DType::BF16, weights > 0 ? base + sum / weights : base);
  }
  const detail::TensorViews views = rows.views();
  const detail::SparseStats sparse = detail::sparse_statistics(views, 1, {2, 3});
  const detail::SubsetStats subsets = detail::subset_statistics(views, 1, {2, 3}, sparse);
  // The weight ratios' sums do not depend on the kept sets read beside them: the same bits where
  // the kept sets are not read (no usable scales).
  detail::SparseStats no_scales = sparse;
  no_scales.kept_scale.assign(2, std::nan(""));
  const detail::SubsetStats skipped = detail::subset_statistics(views, 1, {2, 3}, no_scales);
  EXPECT_EQ(skipped.ratio_weights, subsets.ratio_weights);
  EXPECT_EQ(skipped.classifiable, 0u);
  EXPECT_TRUE(std::isnan(skipped.density[0]));
  for (size_t j = 0; j < 2; ++j) {
    SCOPED_TRACE("other " + std::to_string(j));
    EXPECT_NEAR(sparse.density[j], keep[j], 0.02);
    EXPECT_NEAR(sparse.threshold[j], threshold[j], 0.05 * threshold[j]);  // bins 1/32 octave
    // TIES keeps every large delta: "nothing kept" never happens in the top 10%.
    EXPECT_GT(sparse.magnitude_step[j], 0.9);
    // Where both are kept and agree in sign, S - C_b is their weighted mean: w_j / (w_1 + w_2).
    // (Elements of opposite signs, where the elected sign drops one, must stay out of it.)
    EXPECT_NEAR(subsets.ratio_weights[j], weight[j], 0.01);
  }
}

TEST(AssaySparseStatistics, KeptPositionsListsTheFlaggedElementsInOrder) {
  // Lengths around the 16-flag steps and a sub-chunk's; flags of every density, any nonzero byte.
  std::mt19937 rng(3);
  for (const size_t count : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(47),
                             kDefaultGrain - 5, kDefaultGrain}) {
    for (const double density : {0.0, 0.1, 0.5, 1.0}) {
      std::bernoulli_distribution flag(density);
      std::vector<uint8_t> keep(count);
      std::vector<uint32_t> expected;
      for (size_t i = 0; i < count; ++i) {
        keep[i] = flag(rng) ? uint8_t(1 + rng() % 255) : 0;
        if (keep[i]) expected.push_back(uint32_t(i));
      }
      std::vector<uint32_t> at(count + 16, 0xFFFFFFFFu);
      const size_t m = detail::kept_positions(keep.data(), count, at.data());
      at.resize(m);
      EXPECT_EQ(at, expected) << count << " flags, density " << density;
    }
  }
}

}  // namespace
}  // namespace alloy::test
