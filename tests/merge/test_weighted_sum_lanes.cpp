// linear's and slerp's bf16 weighted sums in AVX-512 registers (lib/merge/methods/
// weighted_sum_lanes.h) against their formulas written out one element at a time: one to four
// models, each normalize step, slerp's coefficients, calls of 1 to 1000 elements at odd offsets
// (whole groups of 32 and masked tails, outputs on and off 64-byte boundaries), and rows full of
// special patterns (NaNs of every sign and payload, infinities, subnormals, signed zeros,
// overflowing sums).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "alloy/core/dtype.h"
#include "bf16_pattern_rows.h"
#include "merge/methods/weighted_sum_lanes.h"

namespace alloy::detail {
namespace {

// Calls [first, first + len) into rows of 1000: whole rows, single elements, groups of 32 and
// masked tails, at odd offsets.
constexpr std::pair<size_t, size_t> kCalls[] = {{0, 1000}, {37, 1},   {64, 31},  {100, 32},
                                                {130, 33}, {203, 64}, {300, 65}, {411, 589}};

// One output element from the formula, with round_to_bf16 after every operation: the bits the
// kernel must give.
uint16_t reference_element(const std::vector<const uint16_t*>& xs, const float* weights,
                           LinearNormalize normalize, float factor, size_t j) {
  const auto rnd = round_to_bf16;
  float sum = 0.0f;
  for (size_t m = 0; m < xs.size(); ++m) sum += rnd(weights[m] * bf16_to_f32(xs[m][j]));
  float o = rnd(sum);
  if (normalize == LinearNormalize::kDivide) o = rnd(o / factor);
  if (normalize == LinearNormalize::kMultiply) o = rnd(o * factor);
  return static_cast<uint16_t>(float_to_bits(o) >> 16);
}

TEST(WeightedSumLanes, LinearGivesTheFormulasBitsForEveryNormalizeStep) {
  if (!can_weighted_sum_bf16_avx512(1)) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  EXPECT_FALSE(can_weighted_sum_bf16_avx512(0));
  EXPECT_FALSE(can_weighted_sum_bf16_avx512(kMaxLinearLanesModels + 1));
  std::mt19937_64 gen(2026);
  const size_t n = 1000;
  const std::vector<uint16_t> first_row = test::bf16_pattern_row(n, gen, {});
  std::vector<std::vector<uint16_t>> rows{first_row};
  for (size_t m = 1; m < kMaxLinearLanesModels; ++m)
    rows.push_back(test::bf16_pattern_row(n, gen, first_row));
  // bf16 weights: the Rio blend's, a negative one, zero, and one that overflows a product.
  const float weights[] = {0.5703125f, 0.4296875f, -0.3125f, 0.0f, 2.5f, round_to_bf16(3e38f)};
  size_t compared = 0, non_finite = 0, negative_zeros = 0;
  for (size_t count = 1; count <= kMaxLinearLanesModels; ++count) {
    for (const auto& [normalize, factor] :
         {std::pair{LinearNormalize::kNone, 1.0f}, std::pair{LinearNormalize::kDivide, 0.8125f},
          std::pair{LinearNormalize::kMultiply, 0.25f}}) {
      for (size_t shift = 0; shift < 3; ++shift) {
        float w[kMaxLinearLanesModels];
        for (size_t m = 0; m < count; ++m) w[m] = weights[(m + shift * count) % std::size(weights)];
        for (const auto& [first, len] : kCalls) {
          std::vector<const uint16_t*> xs;
          for (size_t m = 0; m < count; ++m) xs.push_back(rows[m].data() + first);
          // The output at a 64-byte boundary (streamed stores) for even offsets, one element past
          // it for odd ones.
          std::vector<uint16_t> storage(len + 64, 0xBEEF);
          uint16_t* got = storage.data() +
                          (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) / 2 % 32 +
                          first % 2;
          const size_t bad = linear_bf16_avx512(xs.data(), w, count, normalize, factor, len, got);
          size_t expected_bad = 0;
          for (size_t j = 0; j < len; ++j) {
            const uint16_t expected = reference_element(xs, w, normalize, factor, j);
            expected_bad += (expected & 0x7F80) == 0x7F80;
            negative_zeros += expected == 0x8000;
            ASSERT_EQ(got[j], expected)
                << count << " models, normalize " << static_cast<int>(normalize) << ", weights "
                << shift << ", call [" << first << ", " << first + len << "), element "
                << first + j;
          }
          ASSERT_EQ(bad, expected_bad)
              << count << " models, call [" << first << ", " << first + len << ")";
          ASSERT_EQ(got[len], 0xBEEF) << "written past the call";
          compared += len, non_finite += bad;
        }
      }
    }
  }
  // The data reached the special paths: non-finite outputs and sums of negative zeros.
  EXPECT_GT(non_finite, 0u);
  EXPECT_LT(non_finite, compared / 2);
  EXPECT_GT(negative_zeros, 0u);
}

TEST(WeightedSumLanes, SlerpBlendGivesTheFormulasBits) {
  if (!can_weighted_sum_bf16_avx512(2)) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  std::mt19937_64 gen(2027);
  const size_t n = 1000;
  const std::vector<uint16_t> a = test::bf16_pattern_row(n, gen, {});
  const std::vector<uint16_t> b = test::bf16_pattern_row(n, gen, a);
  // float32 coefficients, as slerp computes them: an interpolation's, the endpoints (0 * inf is a
  // NaN), a lerp's, and ones beyond [0, 1] that overflow.
  const std::pair<float, float> coefficients[] = {
      {0.61803398f, 0.44721359f}, {1.0f, 0.0f}, {0.0f, 1.0f}, {0.6f, 0.4f}, {-1.25f, 3e37f}};
  size_t compared = 0, non_finite = 0;
  for (const auto& [s0, s1] : coefficients) {
    for (const auto& [first, len] : kCalls) {
      std::vector<uint16_t> storage(len + 64, 0xBEEF);
      uint16_t* got = storage.data() +
                      (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) / 2 % 32 + first % 2;
      const size_t bad =
          slerp_blend_bf16_avx512(a.data() + first, b.data() + first, s0, s1, len, got);
      size_t expected_bad = 0;
      for (size_t j = 0; j < len; ++j) {
        const float first_term = s0 * bf16_to_f32(a[first + j]);
        const float second_term = s1 * bf16_to_f32(b[first + j]);
        const uint16_t expected =
            static_cast<uint16_t>(float_to_bits(round_to_bf16(first_term + second_term)) >> 16);
        expected_bad += (expected & 0x7F80) == 0x7F80;
        ASSERT_EQ(got[j], expected) << "s0 " << s0 << ", s1 " << s1 << ", element " << first + j;
      }
      ASSERT_EQ(bad, expected_bad) << "s0 " << s0 << ", s1 " << s1;
      ASSERT_EQ(got[len], 0xBEEF) << "written past the call";
      compared += len, non_finite += bad;
    }
  }
  EXPECT_GT(non_finite, 0u);
  EXPECT_LT(non_finite, compared / 2);
}

}  // namespace
}  // namespace alloy::detail
