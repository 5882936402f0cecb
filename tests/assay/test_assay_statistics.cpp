// The assay's full statistics pass (detail::accumulate_resolved): its fused sub-block steps give the
// same bits as the separate steps, for every vector count and pivot they cover.
#include <cmath>
#include <cstring>
#include <random>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "assay/internal.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

uint64_t bits_of(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

// A suspect and `candidates` candidates of n bf16-rounded values: the suspect a rounded blend of
// the first two, except on a stretch where it is the first candidate itself; one stretch where the
// candidates agree (no spread) and one where they differ by less than the resolve fraction.
std::vector<std::vector<float>> blend_rows(int candidates, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> weight(0.0f, 0.02f), delta(0.0f, 0.002f);
  std::vector<std::vector<float>> rows(size_t(candidates) + 1, std::vector<float>(n));
  for (size_t i = 0; i < n; ++i) {
    const float base = weight(rng);
    for (int c = 1; c <= candidates; ++c) {
      float v = base + delta(rng);
      if (i % 1000 < 50) v = base;                      // no spread
      if (i % 1000 >= 50 && i % 1000 < 80) v = base * (1.0f + 1e-4f * float(c));  // unresolved
      rows[size_t(c)][i] = round_to(DType::BF16, v);
    }
    rows[0][i] = round_to(DType::BF16, 0.571f * rows[1][i] + 0.429f * rows[2][i]);
    if (i % 1000 >= 100 && i % 1000 < 130) rows[0][i] = rows[1][i];
  }
  return rows;
}

detail::ResolvedMoments statistics(const std::vector<std::vector<float>>& rows, int pivot, bool fused,
                                   const std::vector<bool>& members = {}) {
  detail::TensorViews views;
  views.inputs.assign(rows.size(), nullptr);
  views.numel = rows[0].size();
  for (const auto& row : rows) views.values.push_back(row.data());
  detail::set_fused_statistics(fused);
  const detail::ResolvedMoments moments = detail::accumulate_resolved(views, 0.01, pivot, members);
  detail::set_fused_statistics(true);
  return moments;
}

void expect_same_bits(const detail::ResolvedMoments& a, const detail::ResolvedMoments& b, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.n, b.n);
  EXPECT_EQ(a.n_resolved, b.n_resolved);
  EXPECT_EQ(a.n_spread, b.n_spread);
  for (int v = 0; v < a.vectors; ++v) {
    EXPECT_EQ(a.equal[size_t(v)], b.equal[size_t(v)]) << "vector " << v;
    EXPECT_EQ(a.equal_resolved[size_t(v)], b.equal_resolved[size_t(v)]) << "vector " << v;
    EXPECT_EQ(a.equal_all[size_t(v)], b.equal_all[size_t(v)]) << "vector " << v;
  }
  for (int r = 0; r <= a.vectors; ++r) {
    for (int c = 0; c <= a.vectors; ++c) {
      EXPECT_EQ(bits_of(a.gram[size_t(r)][size_t(c)]), bits_of(b.gram[size_t(r)][size_t(c)]))
          << "gram[" << r << "][" << c << "] " << a.gram[size_t(r)][size_t(c)] << " vs " << b.gram[size_t(r)][size_t(c)];
    }
  }
}

TEST(AssayStatistics, FusedStepsGiveTheSeparateStepsBitsForEveryVectorCountAndPivot) {
  // Several chunks of full sub-blocks (16 lanes where the CPU has AVX-512), then a last sub-block
  // of 216 elements (a multiple of 8: the fused steps in 8 lanes) or of 213 (the separate steps).
  for (const size_t n : {3 * kDefaultGrain + 1240, 3 * kDefaultGrain + 1237}) {
    for (int candidates = 1; candidates <= 3; ++candidates) {
      const auto rows = blend_rows(std::max(candidates, 2), n, uint32_t(17 + candidates));
      std::vector<std::vector<float>> used(rows.begin(), rows.begin() + candidates + 1);
      if (candidates == 1) used[0] = rows[0];  // suspect and one candidate
      for (int pivot = 1; pivot <= candidates; ++pivot) {
        const auto fused = statistics(used, pivot, true);
        const auto separate = statistics(used, pivot, false);
        expect_same_bits(fused, separate,
                         std::to_string(n) + " elements, " + std::to_string(candidates) + " candidates, pivot " +
                             std::to_string(pivot));
        if (candidates == 1) continue;  // one candidate never spreads
        // The data exercise every count: equalities, unspread and unresolved elements.
        EXPECT_GT(separate.n_spread, separate.n_resolved);
        EXPECT_LT(separate.n_spread, separate.n);
        EXPECT_GT(separate.equal_all[1], separate.equal[1]);
        EXPECT_GT(separate.equal_resolved[1], 0u);
        EXPECT_NE(separate.gram[0][size_t(separate.vectors)], 0.0);  // Y_0 . P
      }
    }
  }
  const size_t n = 3 * kDefaultGrain + 1237;
  // A spread over some candidates only takes the separate steps either way.
  const auto rows = blend_rows(3, n, 5);
  expect_same_bits(statistics(rows, 2, true, {true, false, true}), statistics(rows, 2, false, {true, false, true}),
                   "members 1 and 3");
}

}  // namespace
}  // namespace alloy::test
