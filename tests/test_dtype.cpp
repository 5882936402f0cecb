// dtype table and conversions, checked exhaustively against independent references: the
// compiler's IEEE _Float16 for f16, double-precision arithmetic for bf16, formulas for F8.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "alloy/dtype.h"
#include "alloy/error.h"

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference bf16 rounding in double arithmetic: pick the nearer of the two bf16 neighbours that
// bracket x (found by truncation), ties to the even mantissa. PyTorch's NaN is 0x7FC0.
uint16_t reference_bf16(float x) {
  if (std::isnan(x)) return 0x7FC0;
  const uint32_t u = bits_of(x);
  const uint16_t sign = static_cast<uint16_t>(u >> 16) & 0x8000;
  const uint16_t low = static_cast<uint16_t>((u & 0x7FFFFFFF) >> 16);  // truncated magnitude
  if ((u & 0xFFFF) == 0) return sign | low;
  const double ax = std::fabs(static_cast<double>(x));
  const double below = std::fabs(static_cast<double>(from_bits(uint32_t(low) << 16)));
  const uint16_t high = low + 1;  // may step to infinity, which is the right answer past the max
  const double above = high >= 0x7F80 ? INFINITY : static_cast<double>(from_bits(uint32_t(high) << 16));
  if (high == 0x7F80) {
    // The rounding boundary to infinity sits half a bf16 ulp (2^119) above the largest finite
    // value; its tie goes up because 0x7F7F is odd.
    const double boundary = static_cast<double>(from_bits(0x7F7F0000)) + 0x1p119;
    return sign | (ax >= boundary ? 0x7F80 : low);
  }
  const double up_gap = above - ax;
  const double down_gap = ax - below;
  if (down_gap < up_gap) return sign | low;
  if (up_gap < down_gap) return sign | high;
  return sign | ((low & 1) ? high : low);
}

// The f32 inputs that probe one 16-bit value v (v's upper half): v itself, the midpoint to the
// next value, and one f32 ulp either side of that midpoint.
std::vector<float> probes_above(uint32_t upper_bits) {
  const uint32_t base = upper_bits << 16;
  return {from_bits(base), from_bits(base + 0x8000), from_bits(base + 0x7FFF), from_bits(base + 0x8001),
          from_bits(base + 1), from_bits(base + 0xFFFF)};
}

TEST(DTypeTable, NamesRoundTripAndWidths) {
  std::set<std::string> names;
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto dtype = static_cast<alloy::DType>(i);
    const auto& info = alloy::dtype_info(dtype);
    EXPECT_EQ(info.dtype, dtype);
    EXPECT_EQ(alloy::dtype_from_name(info.name), dtype);
    names.insert(info.name);
  }
  EXPECT_EQ(names.size(), 22u);
  EXPECT_EQ(alloy::dtype_bits(alloy::DType::F4), 4u);
  EXPECT_EQ(alloy::dtype_bits(alloy::DType::F6_E3M2), 6u);
  EXPECT_EQ(alloy::dtype_bits(alloy::DType::C64), 64u);
  EXPECT_EQ(alloy::dtype_bits(alloy::DType::BF16), 16u);
  EXPECT_FALSE(alloy::dtype_from_name("bf16"));
  EXPECT_FALSE(alloy::dtype_from_name("F8_E4M3FN"));
  EXPECT_EQ(alloy::dtype_from_torch_name("bfloat16"), alloy::DType::BF16);
  EXPECT_EQ(alloy::dtype_from_torch_name("torch.float16"), alloy::DType::F16);
  EXPECT_EQ(alloy::dtype_from_torch_name("float32"), alloy::DType::F32);
  EXPECT_FALSE(alloy::dtype_from_torch_name("float8"));
  EXPECT_STREQ(alloy::dtype_torch_name(alloy::DType::BF16), "bfloat16");
}

TEST(DTypeBf16, EveryPatternToF32AndBack) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = alloy::bf16_to_f32(static_cast<uint16_t>(h));
    EXPECT_EQ(bits_of(f), h << 16);
    const uint16_t back = alloy::f32_to_bf16(f);
    if (std::isnan(f)) {
      ASSERT_EQ(back, 0x7FC0) << "NaN pattern " << h;
    } else {
      ASSERT_EQ(back, h) << "pattern " << h;
    }
  }
}

TEST(DTypeBf16, RoundsToNearestEvenAroundEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    for (float x : probes_above(h)) {
      ASSERT_EQ(alloy::f32_to_bf16(x), reference_bf16(x)) << "input bits " << std::hex << bits_of(x);
    }
  }
  EXPECT_EQ(alloy::f32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // tie, even stays
  EXPECT_EQ(alloy::f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(alloy::f32_to_bf16(3.4e38f), 0x7F80);                // overflow to infinity
  EXPECT_EQ(alloy::f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(alloy::f32_to_bf16(-std::nanf("")), 0x7FC0);          // sign dropped, as c10
}

TEST(DTypeF16, EveryPatternAgainstFloat16) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 reference;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&reference, &bits, 2);
    const float f = alloy::f16_to_f32(bits);
    if (std::isnan(static_cast<float>(reference))) {
      ASSERT_TRUE(std::isnan(f));
      ASSERT_EQ(bits_of(f) & 0x80000000u, uint32_t(h & 0x8000) << 16);
      ASSERT_EQ(alloy::f32_to_f16(f), (h & 0x8000) | 0x7E00) << "NaN keeps its sign, quiet 0x7E00";
    } else {
      ASSERT_EQ(bits_of(f), bits_of(static_cast<float>(reference))) << "pattern " << h;
      ASSERT_EQ(alloy::f32_to_f16(f), h);
    }
  }
}

TEST(DTypeF16, RoundsLikeIeeeAroundEveryF32UpperHalf) {
  // Every f32 whose upper 16 bits are h, probed at the boundaries of its lower half, covers all
  // f16 rounding cases: normal ties, subnormals, the overflow boundary, NaN payloads.
  for (uint32_t h = 0; h < 65536; ++h) {
    for (float x : probes_above(h)) {
      if (std::isnan(x)) {
        ASSERT_EQ(alloy::f32_to_f16(x) & 0x7FFF, 0x7E00);
        continue;
      }
      const _Float16 reference = static_cast<_Float16>(x);
      uint16_t expected;
      std::memcpy(&expected, &reference, 2);
      ASSERT_EQ(alloy::f32_to_f16(x), expected) << "input bits " << std::hex << bits_of(x);
    }
  }
}

float e4m3_formula(uint8_t b, int bias, bool fnuz) {
  if (fnuz && b == 0x80) return NAN;
  if (!fnuz && (b & 0x7F) == 0x7F) return NAN;
  const int e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? m / 8.0 * std::pow(2.0, 1 - bias) : (1 + m / 8.0) * std::pow(2.0, e - bias);
  return static_cast<float>((b & 0x80) ? -v : v);
}

float e5m2_formula(uint8_t b, int bias, bool fnuz) {
  if (fnuz && b == 0x80) return NAN;
  const int e = (b >> 2) & 31, m = b & 3;
  if (!fnuz && e == 31) return m == 0 ? ((b & 0x80) ? -INFINITY : INFINITY) : NAN;
  const double v = e == 0 ? m / 4.0 * std::pow(2.0, 1 - bias) : (1 + m / 4.0) * std::pow(2.0, e - bias);
  return static_cast<float>((b & 0x80) ? -v : v);
}

void expect_same(float got, float want, int pattern) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << "pattern " << pattern;
  } else {
    EXPECT_EQ(got, want) << "pattern " << pattern;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << "pattern " << pattern;
  }
}

TEST(DTypeF8, AllPatternsAgainstFormulas) {
  for (int b = 0; b < 256; ++b) {
    const auto u = static_cast<uint8_t>(b);
    expect_same(alloy::f8_e4m3_to_f32(u), e4m3_formula(u, 7, false), b);
    expect_same(alloy::f8_e5m2_to_f32(u), e5m2_formula(u, 15, false), b);
    expect_same(alloy::f8_e4m3fnuz_to_f32(u), e4m3_formula(u, 8, true), b);
    expect_same(alloy::f8_e5m2fnuz_to_f32(u), e5m2_formula(u, 16, true), b);
    expect_same(alloy::f8_e8m0_to_f32(u), b == 255 ? NAN : static_cast<float>(std::pow(2.0, b - 127)), b);
  }
  // Known constants of the formats.
  EXPECT_EQ(alloy::f8_e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(alloy::f8_e4m3_to_f32(0x01), 0x1p-9f);
  EXPECT_EQ(alloy::f8_e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(alloy::f8_e5m2_to_f32(0x7C)));
  EXPECT_EQ(alloy::f8_e4m3fnuz_to_f32(0x7F), 240.0f);
  EXPECT_EQ(alloy::f8_e5m2fnuz_to_f32(0x7F), 57344.0f);
  EXPECT_EQ(alloy::f8_e8m0_to_f32(127), 1.0f);
}

TEST(DTypeBulk, LoadStoreMatchScalarOnUnalignedBuffers) {
  const size_t n = 100003;
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = std::sin(static_cast<float>(i)) * 1e3f / (1 + i % 97);
  std::vector<uint8_t> storage(8 * n + 1);
  std::vector<float> back(n);
  for (auto dtype : {alloy::DType::BF16, alloy::DType::F16, alloy::DType::F32, alloy::DType::F64}) {
    alloy::store_from_f32(values.data(), n, dtype, storage.data() + 1);
    alloy::load_as_f32(dtype, storage.data() + 1, n, back.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(bits_of(back[i]), bits_of(alloy::round_to(dtype, values[i]))) << alloy::dtype_name(dtype);
    }
  }
  std::vector<float> rounded = values;
  alloy::round_to(alloy::DType::BF16, rounded.data(), n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(rounded[i], alloy::bf16_to_f32(alloy::f32_to_bf16(values[i])));
}

TEST(DTypeBulk, UnsupportedDtypesThrow) {
  float x = 0;
  uint8_t b[8] = {};
  EXPECT_THROW(alloy::load_as_f32(alloy::DType::I32, b, 1, &x), alloy::Error);
  EXPECT_THROW(alloy::store_from_f32(&x, 1, alloy::DType::F8_E4M3, b), alloy::Error);
}

}  // namespace
