// Kernels: values against long-double references, and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "alloy/core/kernels.h"
#include "alloy/core/parallel.h"

namespace {

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  std::normal_distribution<float> normal(0.1f, 1.0f);
  // Mixed magnitudes (2^-20 .. 2^10) so that the double accumulation is actually exercised.
  for (auto& x : v) x = std::ldexp(normal(rng), static_cast<int>(rng() % 31) - 20);
  return v;
}

uint64_t bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

class KernelsThreads : public ::testing::Test {
 protected:
  void TearDown() override { alloy::set_thread_count(0); }
};

TEST_F(KernelsThreads, ReductionsMatchReferenceAndAreThreadCountIndependent) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{100003}, size_t{3000000}}) {
    const auto a = random_vector(n, 1), b = random_vector(n, 2), c = random_vector(n, 3);
    long double ref_dot = 0, ref_sq = 0, ref_sum = 0, ref_centered = 0;
    for (size_t i = 0; i < n; ++i) {
      ref_dot += (long double)a[i] * b[i];
      ref_sq += (long double)a[i] * a[i];
      ref_sum += a[i];
      ref_centered += ((long double)a[i] - c[i]) * ((long double)b[i] - c[i]);
    }
    // Double accumulation in 8 lanes and 2^16-element chunks: the error is far below this bound.
    const double tol = 1e-13 * (1 + std::sqrt((double)n));
    alloy::set_thread_count(1);
    const double d1 = alloy::dot(n, a.data(), b.data()), s1 = alloy::sum_squares(n, a.data());
    const double u1 = alloy::sum(n, a.data()), c1 = alloy::dot_centered(n, a.data(), b.data(), c.data());
    const double n1 = alloy::norm2(n, a.data());
    alloy::set_thread_count(2);
    const double n2 = alloy::norm2(n, a.data());
    EXPECT_EQ(bits(n1), bits(n2)) << n;
    const double d2 = alloy::dot(n, a.data(), b.data()), s2 = alloy::sum_squares(n, a.data());
    const double u2 = alloy::sum(n, a.data()), c2 = alloy::dot_centered(n, a.data(), b.data(), c.data());
    EXPECT_EQ(bits(d1), bits(d2)) << n;
    EXPECT_EQ(bits(s1), bits(s2)) << n;
    EXPECT_EQ(bits(u1), bits(u2)) << n;
    EXPECT_EQ(bits(c1), bits(c2)) << n;
    // Relative to the sum of magnitudes: a cancelling sum can only be as exact as its terms.
    long double mag_dot = 0, mag_sum = 0, mag_centered = 0;
    for (size_t i = 0; i < n; ++i) {
      mag_dot += std::fabs((long double)a[i] * b[i]);
      mag_sum += std::fabs((long double)a[i]);
      mag_centered += std::fabs(((long double)a[i] - c[i]) * ((long double)b[i] - c[i]));
    }
    EXPECT_NEAR(d1, (double)ref_dot, tol * (double)mag_dot) << n;
    EXPECT_NEAR(s1, (double)ref_sq, tol * (double)ref_sq) << n;
    EXPECT_NEAR(u1, (double)ref_sum, tol * (double)mag_sum) << n;
    EXPECT_NEAR(c1, (double)ref_centered, tol * (double)mag_centered) << n;
    if (n == 0) {
      EXPECT_EQ(bits(d1), bits(0.0));
      EXPECT_EQ(bits(n1), bits(0.0));
    }
    EXPECT_NEAR(n1, std::sqrt((double)ref_sq), tol * std::sqrt((double)ref_sq)) << n;
  }
}

TEST_F(KernelsThreads, ElementwiseKernels) {
  const size_t n = 70001;
  const auto x = random_vector(n, 4), y0 = random_vector(n, 5), z = random_vector(n, 6);
  std::vector<float> y = y0;
  alloy::axpby(n, 0.25f, x.data(), -2.0f, y.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], 0.25f * x[i] + -2.0f * y0[i]);
  y = y0;
  alloy::axpy(n, 3.0f, x.data(), y.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], y0[i] + 3.0f * x[i]);
  const float* inputs[3] = {x.data(), y0.data(), z.data()};
  const float weights[3] = {0.5f, -1.5f, 2.0f};
  std::vector<float> out(n);
  alloy::weighted_sum(n, 3, inputs, weights, out.data());
  for (size_t i = 0; i < n; ++i) {
    float expect = 0.0f;
    expect += 0.5f * x[i];
    expect += -1.5f * y0[i];
    expect += 2.0f * z[i];
    ASSERT_EQ(out[i], expect);
  }
  alloy::weighted_sum(n, 1, inputs, weights, out.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 0.0f + 0.5f * x[i]);
  alloy::weighted_sum(n, 0, inputs, weights, out.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 0.0f);
  alloy::subtract(n, x.data(), z.data(), out.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], x[i] - z[i]);
  alloy::scale(n, 0.5f, out.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], (x[i] - z[i]) * 0.5f);
}

TEST(Kernels, CountNonFinite) {
  std::vector<float> v(100000, 1.0f);
  v[5] = NAN;
  v[99999] = INFINITY;
  v[500] = -INFINITY;
  v[70000] = -NAN;
  v[70001] = 3.4028235e38f;  // finite
  for (int threads : {1, 2}) {
    alloy::set_thread_count(threads);
    EXPECT_EQ(alloy::count_non_finite(v.size(), v.data()), 4u);
    EXPECT_EQ(alloy::count_non_finite(0, nullptr), 0u);
    EXPECT_EQ(alloy::count_non_finite(1, v.data() + 5), 1u);
  }
  alloy::set_thread_count(0);
}

TEST(Kernels, ParallelForCoversEveryChunkOnce) {
  std::vector<int> hits(100001, 0);
  alloy::parallel_for(hits.size(), 1000, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hits[i]++;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
}

// in_parallel_region: false outside; inside a region true, and a nested parallel_for runs all its
// chunks on the calling thread (what the assay's concurrent rebuild checks rely on).
TEST(Kernels, NestedParallelForStaysOnTheCallingThread) {
  EXPECT_FALSE(alloy::in_parallel_region());
  alloy::set_thread_count(2);
  std::vector<int> inside(2, 0), nested_elsewhere(2, 0);
  alloy::parallel_for(2, 1, [&](size_t b, size_t) {
    inside[b] = alloy::in_parallel_region();
    const std::thread::id me = std::this_thread::get_id();
    alloy::parallel_for(64, 1, [&](size_t, size_t) { nested_elsewhere[b] += std::this_thread::get_id() != me; });
  });
  alloy::set_thread_count(0);
  EXPECT_EQ(inside, (std::vector<int>{1, 1}));
  EXPECT_EQ(nested_elsewhere, (std::vector<int>{0, 0}));
  EXPECT_FALSE(alloy::in_parallel_region());
}

}  // namespace
