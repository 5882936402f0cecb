// slerp's sums in AVX-512 registers (lib/merge/methods/slerp_sums_lanes.h) against lane_sum
// (method_util.h), the order the portable kernels keep: the same doubles, bit for bit, for one
// chunk and for two side by side, over lengths that end inside a group of 4, of 8 and of 32, on
// rows of values over many binades (where the order of the additions shows in the last bits) and
// on rows with NaNs, infinities, subnormals and signed zeros.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "alloy/core/dtype.h"
#include "bf16_pattern_rows.h"
#include "merge/methods/method_util.h"
#include "merge/methods/slerp_sums_lanes.h"

namespace alloy::detail {
namespace {

constexpr size_t kLengths[] = {0, 1, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 100, 1000, 4099, 32768};

// {|x|^2, |y|^2, <x, y>} of [0, len), each a lane_sum: the bits the kernels must give.
std::vector<double> reference_sums(const uint16_t* x, const uint16_t* y, size_t len) {
  const auto value = [](const uint16_t* row, size_t j) {
    return static_cast<double>(bf16_to_f32(row[j]));
  };
  return {lane_sum(len, [&](size_t j) { return value(x, j) * value(x, j); }),
          lane_sum(len, [&](size_t j) { return value(y, j) * value(y, j); }),
          lane_sum(len, [&](size_t j) { return value(x, j) * value(y, j); })};
}

// Equal bits, or both NaN (a NaN's payload depends on which operand the adder passes on).
bool same_double(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint64_t ua = 0, ub = 0;
  std::memcpy(&ua, &a, sizeof a);
  std::memcpy(&ub, &b, sizeof b);
  return ua == ub;
}

// Finite values from 2^-20 to 2^20 of both signs, about one in 16 a subnormal or a signed zero:
// sums whose bits depend on the order of their additions.
std::vector<uint16_t> finite_row(size_t n, std::mt19937_64& gen) {
  return test::bf16_binade_row(n, gen, 20, {0x0000, 0x8000, 0x0001, 0x807F, 0x0040});
}

TEST(SlerpSumsLanes, OneChunkAndTwoSideBySideGiveLaneSumsBits) {
  if (!can_slerp_sums_bf16_avx512()) GTEST_SKIP() << "no AVX-512 (x86-64-v4) on this CPU";
  std::mt19937_64 gen(2028);
  const size_t n = 32768 + 5;
  struct Rows {
    const char* kind;
    std::vector<uint16_t> xa, ya, xb, yb;
  };
  std::vector<Rows> sets;
  sets.push_back(
      {"finite", finite_row(n, gen), finite_row(n, gen), finite_row(n, gen), finite_row(n, gen)});
  const std::vector<uint16_t> near = test::bf16_pattern_row(n, gen, {});
  sets.push_back({"special", near, test::bf16_pattern_row(n, gen, near),
                  test::bf16_pattern_row(n, gen, near), test::bf16_pattern_row(n, gen, near)});
  size_t order_shows = 0;  // finite calls where a single lane's order gives other bits
  for (const Rows& rows : sets) {
    for (const size_t len : kLengths) {
      for (const size_t offset : {size_t{0}, size_t{3}}) {  // rows at odd addresses too
        const uint16_t *xa = rows.xa.data() + offset, *ya = rows.ya.data() + offset;
        const uint16_t *xb = rows.xb.data() + offset, *yb = rows.yb.data() + offset;
        const std::vector<double> want_a = reference_sums(xa, ya, len);
        const std::vector<double> want_b = reference_sums(xb, yb, len);
        double alone[3], pair_a[3], pair_b[3];
        slerp_sums_bf16_avx512(xa, ya, len, alone);
        slerp_pair_sums_bf16_avx512(xa, ya, xb, yb, len, pair_a, pair_b);
        for (size_t k = 0; k < 3; ++k) {
          EXPECT_TRUE(same_double(alone[k], want_a[k]))
              << rows.kind << " rows, length " << len << ", offset " << offset << ", sum " << k
              << ": " << alone[k] << " against " << want_a[k];
          EXPECT_TRUE(same_double(pair_a[k], want_a[k]))
              << rows.kind << " rows, pair's first, length " << len << ", sum " << k;
          EXPECT_TRUE(same_double(pair_b[k], want_b[k]))
              << rows.kind << " rows, pair's second, length " << len << ", sum " << k;
        }
        if (rows.kind == std::string("finite")) {
          double sequential = 0;
          for (size_t j = 0; j < len; ++j) {
            sequential += static_cast<double>(bf16_to_f32(xa[j])) * bf16_to_f32(ya[j]);
          }
          order_shows += !same_double(sequential, want_a[2]);
        }
      }
    }
  }
  // The finite rows tell orders apart: a kernel that summed in another order would fail above.
  EXPECT_GT(order_shows, 4u);
}

}  // namespace
}  // namespace alloy::detail
