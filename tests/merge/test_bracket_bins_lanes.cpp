// The TIES family's bracketed histogram pass in AVX-512 registers
// (lib/merge/methods/bracket_bins_lanes.h) against the definition, entry by entry: the bin
// magnitude_key(rnd(x - b)) >> 16 with the bf16 rounding, the count above the bracket and the
// multiset of bins inside it, for brackets at zero, around the task vectors' usual magnitudes, at
// the infinities and NaNs, and over every bin, on calls of 0 to 256 entries of rows with NaNs of
// every payload, infinities, subnormals and signed zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "alloy/core/dtype.h"
#include "bf16_pattern_rows.h"
#include "merge/methods/bracket_bins_lanes.h"

namespace alloy::detail {
namespace {

constexpr std::pair<size_t, size_t> kCalls[] = {{0, 0},     {3, 1},     {10, 15},  {40, 16},
                                                {77, 31},   {128, 32},  {190, 33}, {300, 100},
                                                {401, 255}, {700, 256}, {960, 256}};

TEST(BracketBinsLanes, CountAboveAndBinsInsideAreTheDefinitions) {
  if (!can_bracket_bins_bf16_avx512()) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  std::mt19937_64 gen(2030);
  const size_t n = 1216;
  const std::vector<uint16_t> b = test::bf16_pattern_row(n, gen, {});
  const std::vector<uint16_t> x = test::bf16_pattern_row(n, gen, b);
  // lo, hi: one bin at zero, the subnormals, around the rows' usual magnitudes (ties of the
  // near-equal entries), one bin there, the infinities and NaNs (the NaN bin is 0x7FC0), all bins.
  const std::pair<uint32_t, uint32_t> brackets[] = {
      {0, 0},           {0, 0x7F},        {0x3B00, 0x3C80}, {0x3C00, 0x3C00},
      {0x7F80, 0x7FFF}, {0x7FC0, 0x7FC0}, {0, 0x7FFF}};
  std::vector<uint16_t> inside(256 + 32);
  size_t nan_bins = 0, inside_total = 0, above_total = 0;
  // Both packings of the bins inside: one instruction per 32 (VBMI2, where the CPU has it) and two.
  std::vector<bool> packings = {false};
  if (bracket_bins_packs_words()) packings.push_back(true);
  for (const bool words : packings) {
    for (const auto& [lo, hi] : brackets) {
      for (const auto& [first, len] : kCalls) {
        std::vector<uint32_t> want;
        uint32_t want_above = 0;
        for (size_t j = first; j < first + len; ++j) {
          const float delta = round_to_bf16(bf16_to_f32(x[j]) - bf16_to_f32(b[j]));
          const uint32_t bin = (float_to_bits(delta) & 0x7FFFFFFFu) >> 16;
          if (bin > hi) ++want_above;
          if (bin >= lo && bin <= hi) want.push_back(bin);
          nan_bins += bin == 0x7FC0;
        }
        uint32_t above = 0xDEAD;
        const size_t count = bracket_bins_bf16_avx512(x.data() + first, b.data() + first, len, lo,
                                                      hi, inside.data(), &above, words);
        const std::string call = "bracket [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                 "], call at " + std::to_string(first) + ", " +
                                 std::to_string(len) + (words ? ", words" : ", double words");
        ASSERT_EQ(above, want_above) << call;
        ASSERT_EQ(count, want.size()) << call;
        std::vector<uint32_t> got(inside.begin(), inside.begin() + static_cast<ptrdiff_t>(count));
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
        EXPECT_EQ(got, want) << call;
        inside_total += count, above_total += above;
      }
    }
  }
  EXPECT_GT(nan_bins, 0u);
  EXPECT_GT(inside_total, 1000u);
  EXPECT_GT(above_total, 1000u);
}

}  // namespace
}  // namespace alloy::detail
