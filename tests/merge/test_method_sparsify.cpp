// The selection behind magnitude and magnitude_outliers sparsification (lib/merge/methods/sparsify.h): a radix
// select on the bits of |delta| checked against a full sort with the documented order (descending
// |delta|, ties to the lower flat index), on data with many ties, in every compute dtype, across
// several selection chunks, and for thread-count independence.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "alloy/core/parallel.h"
#include "merge/methods/method_util.h"
#include "merge/methods/sparsify.h"
#include "test_method_utils.h"

namespace {

using alloy::DType;
using alloy::detail::select_rank_range;
using alloy::detail::TaskVectorView;

std::vector<bool> reference_keep(DType d, const std::vector<float>& x,
                                 const std::vector<float>& base, uint64_t lo, uint64_t hi) {
  const size_t n = x.size();
  std::vector<float> magnitude(n);
  for (size_t i = 0; i < n; ++i) magnitude[i] = std::fabs(alloy::test::rnd(d, x[i] - base[i]));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return magnitude[a] != magnitude[b] ? magnitude[a] > magnitude[b] : a < b;
  });
  std::vector<bool> keep(n, false);
  for (uint64_t r = lo; r < std::min<uint64_t>(hi, n); ++r) keep[order[r]] = true;
  return keep;
}

std::vector<bool> actual_keep(DType d, const std::vector<float>& x, const std::vector<float>& base,
                              uint64_t lo, uint64_t hi) {
  TaskVectorView tv{x.data(), base.data(), x.size(), d, {x.size()}, {}};
  std::vector<uint64_t> words;
  select_rank_range(tv, lo, hi, words);
  EXPECT_EQ(words.size(), (x.size() + 63) / 64);
  std::vector<bool> keep(x.size());
  for (size_t i = 0; i < x.size(); ++i) keep[i] = (words[i / 64] >> (i % 64)) & 1;
  return keep;
}

// Deltas drawn from few distinct magnitudes (heavy ties), or from a continuum, both signs.
std::vector<float> test_deltas(DType d, size_t n, uint64_t seed, bool ties) {
  std::mt19937_64 gen(seed);
  std::vector<float> v(n);
  for (auto& x : v) {
    if (ties) {
      x = static_cast<float>(static_cast<int>(gen() % 41) - 20) * 0.125f;
    } else {
      x = alloy::test::rnd(d, std::ldexp(static_cast<double>(gen() >> 11) * 0x1p-53 - 0.5,
                                         -static_cast<int>(gen() % 8)));
    }
  }
  return v;
}

TEST(MethodSparsify, RadixSelectEqualsFullSortWithTheTieRule) {
  std::mt19937_64 gen(99);
  for (DType d : {DType::F32, DType::BF16, DType::F16}) {
    for (size_t n : {size_t{1}, size_t{63}, size_t{64}, size_t{1000}, size_t{200003}}) {
      for (bool ties : {true, false}) {
        const auto x = test_deltas(d, n, n * 7 + ties, ties);
        const std::vector<float> base(n, 0.0f);
        for (int trial = 0; trial < 4; ++trial) {
          uint64_t lo = gen() % (n + 1), hi = gen() % (n + 1);
          if (trial == 0) lo = 0;  // the magnitude top-k form
          if (lo > hi) std::swap(lo, hi);
          const auto expected = reference_keep(d, x, base, lo, hi);
          const auto actual = actual_keep(d, x, base, lo, hi);
          size_t mismatches = 0;
          for (size_t i = 0; i < n; ++i) mismatches += expected[i] != actual[i];
          EXPECT_EQ(mismatches, 0u)
              << dtype_name(d) << " n=" << n << " ties=" << ties << " [" << lo << ", " << hi << ")";
        }
      }
    }
  }
}

TEST(MethodSparsify, DeltasAreTakenInTheComputeDtype) {
  // Ranking uses delta = rnd(x - base): 1.0078125 - (-256) = 257.0078125 becomes 258 in bf16 and
  // ties with the other delta, 258, so the lower index wins; in float32 it is the smaller one.
  const std::vector<float> x = {1.0078125f, 258.0f}, base = {-256.0f, 0.0f};
  EXPECT_EQ(actual_keep(DType::BF16, x, base, 0, 1), (std::vector<bool>{true, false}));
  EXPECT_EQ(actual_keep(DType::F32, x, base, 0, 1), (std::vector<bool>{false, true}));
  // f16 (the two-level path): equal deltas, the lower index ranks first.
  const std::vector<float> tie = {257.0f, 1.0f}, tie_base = {256.0f, 0.0f};
  EXPECT_EQ(actual_keep(DType::F16, tie, tie_base, 0, 1), (std::vector<bool>{true, false}));
  EXPECT_EQ(actual_keep(DType::F16, tie, tie_base, 1, 2), (std::vector<bool>{false, true}));
}

TEST(MethodSparsify, SelectionIsIndependentOfThreadCount) {
  const size_t n = 500000;
  for (DType d : {DType::F32, DType::BF16}) {
    const auto x = test_deltas(d, n, 5, true);
    const std::vector<float> base(n, 0.0f);
    alloy::set_thread_count(1);
    const auto one = actual_keep(d, x, base, 1234, 300001);
    alloy::set_thread_count(2);
    const auto two = actual_keep(d, x, base, 1234, 300001);
    alloy::set_thread_count(0);
    EXPECT_EQ(one, two) << dtype_name(d);
    EXPECT_EQ(static_cast<size_t>(std::count(one.begin(), one.end(), true)), 300001u - 1234u);
  }
}

TEST(MethodSparsify, SignedZerosAndInfinitiesRankByMagnitude) {
  const std::vector<float> x = {-0.0f, 0.0f, -INFINITY, 1.0f, -1.0f, INFINITY};
  const std::vector<float> base(x.size(), 0.0f);
  // Order: the infinities (indices 2, 5), the ones (3, 4), the zeros (0, 1).
  EXPECT_EQ(actual_keep(DType::F32, x, base, 0, 2),
            (std::vector<bool>{false, false, true, false, false, true}));
  EXPECT_EQ(actual_keep(DType::F32, x, base, 2, 3),
            (std::vector<bool>{false, false, false, true, false, false}));
  EXPECT_EQ(actual_keep(DType::F32, x, base, 4, 5),
            (std::vector<bool>{true, false, false, false, false, false}));
}

// One magnitude for every entry: the selection is the index range itself, across many chunks
// (the cuts' ties end inside chunks); and NaNs, whose keys rank above the infinities, tie with each
// other (a NaN's sign is cleared as any other's), the lower index first.
TEST(MethodSparsify, AllEqualMagnitudesAndNaNsFollowTheTieRule) {
  const size_t n = 200003;
  for (DType d : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = i % 3 == 0 ? -0.5f : 0.5f;
    const std::vector<float> base(n, 0.0f);
    for (auto [lo, hi] : {std::pair<uint64_t, uint64_t>{0, 77777}, {12345, 150001}, {99999, n}}) {
      const auto keep = actual_keep(d, x, base, lo, hi);
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) wrong += keep[i] != (i >= lo && i < hi);
      EXPECT_EQ(wrong, 0u) << dtype_name(d) << " [" << lo << ", " << hi << ")";
    }
  }
  const std::vector<float> x = {1.0f, NAN, INFINITY, -NAN};
  const std::vector<float> base(x.size(), 0.0f);
  EXPECT_EQ(actual_keep(DType::F32, x, base, 0, 1), (std::vector<bool>{false, true, false, false}));
  EXPECT_EQ(actual_keep(DType::F32, x, base, 1, 2), (std::vector<bool>{false, false, false, true}));
  EXPECT_EQ(actual_keep(DType::F32, x, base, 2, 3), (std::vector<bool>{false, false, true, false}));
}

}  // namespace

// The combine reads a model's mask bits for a block of elements as words (expand_mask_bits);
// every start offset within and across 64-bit words, and every length up to three words.
TEST(MethodSparsify, MaskBitsExpandToWordsAtAnyOffset) {
  std::mt19937_64 gen(7);
  std::vector<uint64_t> bits(5);
  for (auto& w : bits) w = gen();
  std::vector<uint32_t> out(200);
  for (size_t start = 0; start < 130; ++start) {
    for (size_t count = 0; start + count <= 320 && count <= 192; count += 7) {
      std::fill(out.begin(), out.end(), 0x5A5A5A5Au);
      alloy::detail::expand_mask_bits(bits.data(), start, count, out.data());
      for (size_t j = 0; j < count; ++j) {
        const size_t i = start + j;
        const uint32_t expected = ((bits[i / 64] >> (i % 64)) & 1) ? 0xFFFFFFFFu : 0u;
        ASSERT_EQ(out[j], expected) << "start " << start << " element " << j;
      }
      EXPECT_EQ(out[count], 0x5A5A5A5Au) << "wrote past the block at start " << start;
    }
  }
}

// DARE keeps entry i when uniform01(seed, i) < p; the mask compares random53(seed, i) with
// uniform01_below(p) instead, on integers. Both tests must agree for every p: at the boundaries
// (p a multiple of 2^-53, or one ulp either side of one; 0, 1, beyond) the threshold is exact,
// and over many draws at ordinary densities (including bf16-rounded ones) every bit is the same.
TEST(MethodSparsify, RandomMaskIntegerThresholdEqualsTheDoubleCompare) {
  using alloy::detail::random53;
  using alloy::detail::uniform01;
  using alloy::detail::uniform01_below;
  // (Below 1/2 the doubles are finer than 2^-53, so a neighbour of k * 2^-53 is not a multiple.)
  for (uint64_t k : {uint64_t{1}, uint64_t{3}, uint64_t{1} << 20, (uint64_t{1} << 52) - 1}) {
    const double p = std::ldexp(static_cast<double>(k), -53);
    EXPECT_EQ(uniform01_below(p), k);  // random53 < k, exactly as r * 2^-53 < k * 2^-53
    EXPECT_EQ(uniform01_below(std::nextafter(p, 2.0)), k + 1);
    EXPECT_EQ(uniform01_below(std::nextafter(p, 0.0)), k);
  }
  EXPECT_EQ(uniform01_below(0.0), 0u);
  EXPECT_EQ(uniform01_below(-0.5), 0u);
  EXPECT_EQ(uniform01_below(1e-300), 1u);  // only r = 0 is below
  EXPECT_EQ(uniform01_below(1.0 - 0x1p-53), (uint64_t{1} << 53) - 1);  // the largest p below 1
  EXPECT_EQ(uniform01_below(1.0), uint64_t{1} << 53);
  EXPECT_EQ(uniform01_below(2.0), uint64_t{1} << 53);
  for (double p : {0.1, 0.3, 0.5, 0.90625, 0.999, double{alloy::detail::RoundBF16{}.param(0.3)}}) {
    const uint64_t below = uniform01_below(p);
    size_t kept = 0;
    for (uint64_t i = 0; i < 200000; ++i) {
      const bool by_double = uniform01(12345, i) < p;
      ASSERT_EQ(random53(12345, i) < below, by_double) << "p " << p << " entry " << i;
      kept += by_double;
    }
    EXPECT_NEAR(static_cast<double>(kept) / 200000, p, 0.005) << p;  // the draws are uniform
  }
}

// The rescale's L1 sums (l1_sums_of) sum the blocks whose additions are all exact in vector lanes
// and every other block term by term: either way the bits must be those of one double sum per
// fixed chunk in index order, the chunks added in order. Most blocks here are ordinary deltas;
// some hold a term of 2^53 among ones, where the lanes' order would keep the ones that the index
// order rounds away, some hold subnormal deltas next to large ones, and one block of large deltas
// follows a running sum with bits far below them. Every compute dtype, an explicit mask keeping
// about half of the entries.
TEST(MethodSparsify, L1SumsAreThoseOfTheIndexOrderLoop) {
  const size_t n = 3 * alloy::kDefaultGrain + 777;
  for (DType d : {DType::BF16, DType::F16, DType::F32}) {
    std::mt19937 rng(20261205);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> base(n), x0(n), x1(n);
    for (size_t i = 0; i < n; ++i) {
      base[i] = alloy::round_to(d, 0.02f * normal(rng));
      x0[i] = alloy::round_to(d, base[i] + 1e-3f * normal(rng));
      x1[i] = alloy::round_to(d, base[i] + 3e-4f * normal(rng));
    }
    // A block (of 256 entries) with one delta of 2^53 (2^15 in f16) among deltas of 1, and one
    // with subnormal deltas next to a delta of 1000.
    const float huge = d == DType::F16 ? 32768.0f : 9007199254740992.0f;
    for (size_t i = 5 * 256; i < 6 * 256; ++i) base[i] = 0.0f, x0[i] = i == 5 * 256 + 3 ? huge : 1.0f;
    const float tiny = d == DType::F16 ? 6e-8f : d == DType::BF16 ? 1e-39f : 1e-44f;
    for (size_t i = alloy::kDefaultGrain + 512; i < alloy::kDefaultGrain + 768; ++i) {
      base[i] = 0.0f, x1[i] = alloy::round_to(d, i % 7 == 0 ? 1000.0f : tiny * static_cast<float>(1 + i % 5));
    }
    // Model 1's third chunk ends on a block of deltas 2^24 after a running sum of 2^-21 + 2^-29
    // (the chunk's other deltas 0): the index order rounds
    // the sum at each addition, to 2^32; the lanes would round it once, to 2^32 + 2^-20. At the
    // chunk's end, so that no later addition's tie can hide the difference. Not in f16's range.
    if (d != DType::F16) {
      const size_t end = 3 * alloy::kDefaultGrain;
      for (size_t i = end - alloy::kDefaultGrain; i < end; ++i) base[i] = 0.0f, x1[i] = i < end - 256 ? 0.0f : 16777216.0f;
      x1[end - 500] = std::ldexp(1.0f, -21);
      x1[end - 499] = std::ldexp(1.0f, -29);
    }
    std::vector<std::vector<uint64_t>> words(2, std::vector<uint64_t>((n + 63) / 64));
    for (auto& mask_words : words) {
      for (uint64_t& w : mask_words) w = (static_cast<uint64_t>(rng()) << 32) | rng();
    }
    std::vector<alloy::detail::DeltaMask> masks(2);
    for (size_t m = 0; m < 2; ++m) masks[m].active = true, masks[m].bits = words[m].data();
    alloy::detail::TaskVectorSet set{base.data(), {x0.data(), x1.data()}, 2, n, d, {n}, {}, {}};
    const std::vector<double> sums = alloy::detail::l1_sums_of(set, masks);
    ASSERT_EQ(sums.size(), 4u);
    for (size_t m = 0; m < 2; ++m) {
      const std::vector<float>& x = m == 0 ? x0 : x1;
      double all = 0.0, kept = 0.0;
      for (size_t c0 = 0; c0 < n; c0 += alloy::kDefaultGrain) {
        double chunk_all = 0.0, chunk_kept = 0.0;
        for (size_t i = c0; i < std::min(n, c0 + alloy::kDefaultGrain); ++i) {
          const double magnitude = std::fabs(alloy::round_to(d, x[i] - base[i]));
          chunk_all += magnitude;
          if ((words[m][i >> 6] >> (i & 63)) & 1u) chunk_kept += magnitude;
        }
        all += chunk_all;
        kept += chunk_kept;
      }
      EXPECT_EQ(sums[2 * m], all) << alloy::dtype_name(d) << " model " << m;
      EXPECT_EQ(sums[2 * m + 1], kept) << alloy::dtype_name(d) << " model " << m;
    }
  }
}
