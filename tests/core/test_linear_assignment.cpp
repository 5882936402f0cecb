// Tests for the linear assignment solver against exhaustive search and planted permutations.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "alloy/core/linear_assignment.h"

namespace {

double total_cost(const std::vector<double>& cost, size_t n, const std::vector<uint32_t>& columns) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += cost[i * n + columns[i]];
  return sum;
}

TEST(LinearAssignment, MatchesExhaustiveSearchOnRandomMatrices) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uniform(-1, 1);
  for (size_t n = 1; n <= 7; ++n) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<double> cost(n * n);
      for (auto& c : cost) c = uniform(rng);
      const std::vector<uint32_t> got = alloy::linear_assignment(cost, n);
      std::vector<uint32_t> sorted = got;
      std::sort(sorted.begin(), sorted.end());
      std::vector<uint32_t> identity(n);
      std::iota(identity.begin(), identity.end(), 0u);
      ASSERT_EQ(sorted, identity) << "not a permutation, n=" << n;
      double best = 1e300;
      std::vector<uint32_t> perm = identity;
      do best = std::min(best, total_cost(cost, n, perm));
      while (std::next_permutation(perm.begin(), perm.end()));
      EXPECT_NEAR(total_cost(cost, n, got), best, 1e-12) << "n=" << n << " trial " << trial;
    }
  }
}

TEST(LinearAssignment, RecoversAPlantedPermutation) {
  const size_t n = 64;
  std::mt19937_64 rng(5);
  std::vector<uint32_t> planted(n);
  std::iota(planted.begin(), planted.end(), 0u);
  std::shuffle(planted.begin(), planted.end(), rng);
  std::uniform_real_distribution<double> noise(0.5, 1.0);
  std::vector<double> cost(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) cost[i * n + j] = j == planted[i] ? 0.0 : noise(rng);
  EXPECT_EQ(alloy::linear_assignment(cost, n), planted);
}

TEST(LinearAssignment, TiesResolveToTheLowestIndex) {
  const std::vector<double> cost(9, 1.0);
  EXPECT_EQ(alloy::linear_assignment(cost, 3), (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_TRUE(alloy::linear_assignment({}, 0).empty());
}

}  // namespace
