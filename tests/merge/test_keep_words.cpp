// The DARE keep mask's words (lib/merge/methods/keep_words.h): the version this CPU dispatches to
// (AVX-512 on the benchmark machines) and the vectorised loop give the reference's words for every
// range of words, a partial last word, and densities at and between the edges.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "merge/methods/keep_words.h"
#include "merge/methods/method_util.h"

namespace alloy::detail {
namespace {

TEST(KeepWords, EveryVersionDrawsTheReferenceMask) {
  const uint64_t all = uint64_t{1} << 53;
  for (uint64_t seed : {uint64_t{0}, uint64_t{42}, ~uint64_t{0} - 5}) {
    for (uint64_t below :
         {uint64_t{0}, uint64_t{1}, all / 10, all / 2, uniform01_below(0.7), all - 1, all}) {
      for (size_t n : {size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{1000}, size_t{64 * 37},
                       size_t{64 * 37 + 5}}) {
        const size_t count = (n + 63) / 64;
        std::vector<uint64_t> expected(count, 0xDEADull), got(count, 0xBEEFull);
        random_keep_words_reference(seed, below, n, 0, count, expected.data());
        // Whole, then in ranges that start and end at odd words, as the parallel loop splits it.
        for (auto* version : {&random_keep_words, &random_keep_words_loop}) {
          std::fill(got.begin(), got.end(), 0xBEEFull);
          version(seed, below, n, 0, count, got.data());
          ASSERT_EQ(got, expected) << "seed " << seed << " below " << below << " n " << n;
          std::fill(got.begin(), got.end(), 0xBEEFull);
          for (size_t wb = 0; wb < count; wb += 3) {
            version(seed, below, n, wb, std::min(count, wb + 3), got.data());
          }
          ASSERT_EQ(got, expected) << "in ranges of 3 words: seed " << seed << " n " << n;
        }
      }
    }
  }
}

TEST(KeepWords, KeepsTheDensityAndNothingPastTheEnd) {
  // 0.3 of 64,005 entries (a partial last word): within 5 standard deviations of 0.3 n, and the
  // last word's bits past entry n are 0.
  const size_t n = 64 * 1000 + 5, count = (n + 63) / 64;
  std::vector<uint64_t> words(count);
  random_keep_words(7, uniform01_below(0.3), n, 0, count, words.data());
  size_t kept = 0;
  for (uint64_t w : words) kept += static_cast<size_t>(__builtin_popcountll(w));
  EXPECT_NEAR(static_cast<double>(kept), 0.3 * n, 5 * std::sqrt(0.3 * 0.7 * n));
  EXPECT_EQ(words.back() >> 5, 0u);
  std::vector<uint64_t> every(count);
  random_keep_words(7, uint64_t{1} << 53, n, 0, count, every.data());
  EXPECT_EQ(every.back(), (uint64_t{1} << 5) - 1);
  EXPECT_EQ(every.front(), ~uint64_t{0});
}

}  // namespace
}  // namespace alloy::detail
