// cosine_cost and row_dots (lib/assay/cosine_cost.cpp): the alignment's products of rows, in
// register tiles. Checked against a plain loop, on sizes whose rows and terms fall short of every
// tile (n not a multiple of 4 or of the 128-row tasks, dim not a multiple of the 8 lanes or the
// 512-term tiles), and the same bits for any thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "alloy/core/parallel.h"
#include "assay/internal.h"

namespace {

std::vector<double> random_rows(size_t n, size_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> rows(n * dim);
  for (double& x : rows) x = normal(rng);
  return rows;
}

TEST(CosineCost, MatchesAPlainLoopOnEverySize) {
  for (const size_t n : {size_t{1}, size_t{3}, size_t{5}, size_t{70}, size_t{131}}) {
    for (const size_t dim : {size_t{1}, size_t{7}, size_t{8}, size_t{515}, size_t{1100}}) {
      const std::vector<double> a = random_rows(n, dim, 1), b = random_rows(n, dim, 2);
      const std::vector<double> cost = alloy::detail::cosine_cost(a, b, n, dim, 3.0);
      ASSERT_EQ(cost.size(), n * n);
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < n; ++j) {
          double d = 0, scale = 0;
          for (size_t t = 0; t < dim; ++t)
            d += a[i * dim + t] * b[j * dim + t],
                scale += std::fabs(a[i * dim + t] * b[j * dim + t]);
          // Summation order aside, the same number: within a few units of the terms' magnitude.
          ASSERT_NEAR(cost[i * n + j], 1 - d / 3.0, 1e-14 * (scale + 1))
              << "n " << n << " dim " << dim << " i " << i << " j " << j;
        }
      }
    }
  }
}

// row_dots on rectangular sides (the rotation's products: a tensor's rows against the rotation's).
TEST(CosineCost, RowDotsOfUnequalSides) {
  for (const auto& [m, n] : {std::pair<size_t, size_t>{13, 70}, {200, 3}, {1, 1}}) {
    const size_t dim = 515;
    const std::vector<double> a = random_rows(m, dim, 5), b = random_rows(n, dim, 6);
    std::vector<double> out(m * n);
    alloy::detail::row_dots(a.data(), m, b.data(), n, dim, out.data());
    for (size_t i = 0; i < m; ++i) {
      for (size_t j = 0; j < n; ++j) {
        double d = 0, scale = 0;
        for (size_t t = 0; t < dim; ++t)
          d += a[i * dim + t] * b[j * dim + t], scale += std::fabs(a[i * dim + t] * b[j * dim + t]);
        ASSERT_NEAR(out[i * n + j], d, 1e-14 * (scale + 1))
            << m << " x " << n << " i " << i << " j " << j;
      }
    }
  }
}

// Every pair's sum is fixed: with 1 or 2 threads (and so other rows per task and thread), the bits
// are the same; a row repeated in a gives the same costs as its first copy (exact ties stay ties).
TEST(CosineCost, SameBitsForAnyThreadCountAndForEqualRows) {
  const size_t n = 300, dim = 1030;
  std::vector<double> a = random_rows(n, dim, 3);
  const std::vector<double> b = random_rows(n, dim, 4);
  std::copy_n(a.begin() + 5 * dim, dim, a.begin() + 290 * dim);
  alloy::set_thread_count(1);
  const std::vector<double> one = alloy::detail::cosine_cost(a, b, n, dim, 1.0);
  alloy::set_thread_count(2);
  const std::vector<double> two = alloy::detail::cosine_cost(a, b, n, dim, 1.0);
  alloy::set_thread_count(0);
  ASSERT_EQ(one.size(), two.size());
  for (size_t k = 0; k < one.size(); ++k) ASSERT_EQ(std::memcmp(&one[k], &two[k], 8), 0) << k;
  for (size_t j = 0; j < n; ++j) ASSERT_EQ(one[290 * n + j], one[5 * n + j]) << j;
}

}  // namespace
