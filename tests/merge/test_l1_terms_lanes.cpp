// The L1 terms of a rescaled random mask in AVX-512 registers (lib/merge/methods/l1_terms_lanes.h)
// against the definition, one entry at a time: |rnd(x - b)| and its kept part for calls of 0 to
// 256 entries at offsets that cross the mask's words, on rows whose sums are exact (where the
// kernel's sums must equal the index order's) and on rows of NaNs, infinities, subnormals and
// signed zeros (where its smallest exponent and largest magnitude must be the reference's).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "alloy/core/dtype.h"
#include "bf16_pattern_rows.h"
#include "merge/methods/l1_terms_lanes.h"

namespace alloy::detail {
namespace {

// (first, len) calls into rows of 1200 entries: empty, single, within one mask word, across two,
// whole groups of 32 and masked tails, a whole block of 256.
constexpr std::pair<size_t, size_t> kCalls[] = {{0, 0},     {5, 1},     {64, 16},   {60, 17},
                                                {100, 31},  {128, 32},  {150, 33},  {250, 100},
                                                {333, 255}, {512, 256}, {700, 256}, {1000, 200}};

// The definition, in index order.
L1BlockTerms reference_terms(const uint16_t* x, const uint16_t* b,
                             const std::vector<uint64_t>& bits, size_t first, size_t len) {
  L1BlockTerms want;
  for (size_t j = 0; j < len; ++j) {
    const float delta = round_to_bf16(bf16_to_f32(x[j]) - bf16_to_f32(b[j]));
    const float magnitude = std::fabs(delta);
    const uint32_t u = float_to_bits(magnitude);
    if (u != 0) want.min_exponent = std::min(want.min_exponent, u >> 23);
    want.max_bits = std::max(want.max_bits, u);
    const size_t i = first + j;
    want.all += magnitude;
    if ((bits[i / 64] >> (i % 64)) & 1) want.kept += magnitude;
  }
  return want;
}

// Values from 2^-10 to 2^10 of both signs and zeros: every partial sum of a call is exact.
std::vector<uint16_t> exact_sum_row(size_t n, std::mt19937_64& gen) {
  return test::bf16_binade_row(n, gen, 10, {0x0000, 0x8000});
}

TEST(L1TermsLanes, RangesAndExactSumsAreTheDefinitions) {
  if (!can_l1_terms_bf16_avx512()) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  std::mt19937_64 gen(2029);
  const size_t n = 1200;
  std::vector<uint64_t> bits((n + 63) / 64 + 1);
  for (uint64_t& word : bits) word = gen();
  const std::vector<uint16_t> exact_x = exact_sum_row(n, gen), exact_b = exact_sum_row(n, gen);
  const std::vector<uint16_t> special_b = test::bf16_pattern_row(n, gen, {});
  const std::vector<uint16_t> special_x = test::bf16_pattern_row(n, gen, special_b);
  size_t nan_blocks = 0, subnormal_blocks = 0, kept_differs = 0;
  for (const auto& [first, len] : kCalls) {
    const L1BlockTerms got = l1_terms_bf16_avx512(exact_x.data() + first, exact_b.data() + first,
                                                  bits.data(), first, len);
    const L1BlockTerms want =
        reference_terms(exact_x.data() + first, exact_b.data() + first, bits, first, len);
    EXPECT_EQ(got.min_exponent, want.min_exponent)
        << "exact rows, call at " << first << ", " << len;
    EXPECT_EQ(got.max_bits, want.max_bits) << "exact rows, call at " << first << ", " << len;
    EXPECT_EQ(got.all, want.all) << "exact rows, call at " << first << ", " << len;
    EXPECT_EQ(got.kept, want.kept) << "exact rows, call at " << first << ", " << len;
    kept_differs += want.kept != want.all;

    const L1BlockTerms odd = l1_terms_bf16_avx512(
        special_x.data() + first, special_b.data() + first, bits.data(), first, len);
    const L1BlockTerms odd_want =
        reference_terms(special_x.data() + first, special_b.data() + first, bits, first, len);
    EXPECT_EQ(odd.min_exponent, odd_want.min_exponent) << "special rows, call at " << first;
    EXPECT_EQ(odd.max_bits, odd_want.max_bits) << "special rows, call at " << first;
    nan_blocks += odd_want.max_bits == 0x7FC00000u;
    subnormal_blocks += odd_want.min_exponent == 0;
  }
  // The calls reached the masks' effect, NaN magnitudes and subnormal ones.
  EXPECT_GT(kept_differs, 5u);
  EXPECT_GT(nan_blocks, 3u);
  EXPECT_GT(subnormal_blocks, 3u);
}

}  // namespace
}  // namespace alloy::detail
