// dtype table and conversions, checked exhaustively against independent references: the
// compiler's IEEE _Float16 for f16, double-precision arithmetic for bf16, formulas for F8.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"

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

TEST(DTypeTable, AllSpecDtypesWithWidthsKindsAndAlignment) {
  struct Row {
    const char* name;
    unsigned bits;
    bool is_float;
    unsigned alignment;
  };
  // The safetensors spec's dtypes, in the enum's order.
  const Row expected[] = {
      {"BOOL", 8, false, 1},       {"U8", 8, false, 1},          {"I8", 8, false, 1},
      {"I16", 16, false, 2},       {"U16", 16, false, 2},        {"I32", 32, false, 4},
      {"U32", 32, false, 4},       {"I64", 64, false, 8},        {"U64", 64, false, 8},
      {"F16", 16, true, 2},        {"BF16", 16, true, 2},        {"F32", 32, true, 4},
      {"F64", 64, true, 8},        {"C64", 64, true, 8},         {"F8_E4M3", 8, true, 1},
      {"F8_E5M2", 8, true, 1},     {"F8_E8M0", 8, true, 1},      {"F8_E4M3FNUZ", 8, true, 1},
      {"F8_E5M2FNUZ", 8, true, 1}, {"F4", 4, true, 1},           {"F6_E2M3", 6, true, 1},
      {"F6_E3M2", 6, true, 1},
  };
  ASSERT_EQ(std::size(expected), size_t(alloy::kDTypeCount));
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto dtype = static_cast<alloy::DType>(i);
    const auto& info = alloy::dtype_info(dtype);
    EXPECT_EQ(info.dtype, dtype);
    EXPECT_STREQ(info.name, expected[i].name);
    EXPECT_STREQ(alloy::dtype_name(dtype), expected[i].name);
    EXPECT_EQ(info.bits, expected[i].bits) << info.name;
    EXPECT_EQ(alloy::dtype_bits(dtype), expected[i].bits) << info.name;
    EXPECT_EQ(info.is_float, expected[i].is_float) << info.name;
    EXPECT_EQ(info.alignment, expected[i].alignment) << info.name;
    EXPECT_EQ(alloy::dtype_from_name(info.name), dtype);
  }
}

TEST(DTypeTable, NameParsingIsExactAndCaseSensitive) {
  for (const char* bad : {"bf16", "Bf16", "f32", "F8_E4M3FN", "F8", "", "BF16 ", " BF16", "F8_e4m3",
                          "bool", "c64", "F6"}) {
    EXPECT_FALSE(alloy::dtype_from_name(bad)) << bad;
  }
}

TEST(DTypeTable, TorchNames) {
  using alloy::DType;
  const std::pair<const char*, DType> accepted[] = {
      {"bfloat16", DType::BF16},      {"bf16", DType::BF16},         {"torch.bfloat16", DType::BF16},
      {"float16", DType::F16},        {"fp16", DType::F16},          {"f16", DType::F16},
      {"half", DType::F16},           {"torch.float16", DType::F16}, {"torch.half", DType::F16},
      {"float32", DType::F32},        {"fp32", DType::F32},          {"f32", DType::F32},
      {"float", DType::F32},          {"torch.float32", DType::F32}, {"float64", DType::F64},
      {"torch.float64", DType::F64},
  };
  for (const auto& [name, dtype] : accepted) EXPECT_EQ(alloy::dtype_from_torch_name(name), dtype) << name;
  for (const char* bad : {"float8", "BFloat16", "torch.", "torch.BF16", "", "bfloat", "float 32"}) {
    EXPECT_FALSE(alloy::dtype_from_torch_name(bad)) << bad;
  }
  EXPECT_STREQ(alloy::dtype_torch_name(DType::BF16), "bfloat16");
  EXPECT_STREQ(alloy::dtype_torch_name(DType::F16), "float16");
  EXPECT_STREQ(alloy::dtype_torch_name(DType::F32), "float32");
  EXPECT_STREQ(alloy::dtype_torch_name(DType::F64), "float64");
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    EXPECT_NE(alloy::dtype_torch_name(static_cast<DType>(i)), nullptr);
  }
  // Every torch name written back parses to the same dtype.
  for (DType dtype : {DType::BF16, DType::F16, DType::F32, DType::F64}) {
    EXPECT_EQ(alloy::dtype_from_torch_name(alloy::dtype_torch_name(dtype)), dtype);
  }
}

TEST(DTypeTable, LoadStoreCapabilities) {
  using alloy::DType;
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto dtype = static_cast<DType>(i);
    const std::string name = alloy::dtype_name(dtype);
    const bool half_or_wider = dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 ||
                               dtype == DType::F64;
    EXPECT_EQ(alloy::can_store_from_f32(dtype), half_or_wider) << name;
    EXPECT_EQ(alloy::can_load_as_f32(dtype), half_or_wider || name.rfind("F8_", 0) == 0) << name;
  }
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

// The compiler's _Float16 is the reference; clang before 15 has none on x86 (the sanitizer build),
// where these three tests are left out and the Release build (GCC) runs them.
#ifdef __FLT16_MAX__
TEST(DTypeF16, EveryPatternAgainstFloat16) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 reference;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&reference, &bits, 2);
    const float f = alloy::f16_to_f32(bits);
    // Exact, NaNs included: sign and payload kept, quiet bit set (as _Float16 and c10 do).
    ASSERT_EQ(bits_of(f), bits_of(static_cast<float>(reference))) << "pattern " << h;
    if (std::isnan(f)) {
      ASSERT_EQ(alloy::f32_to_f16(f), (h & 0x8000) | 0x7E00) << "NaN keeps its sign, quiet 0x7E00";
    } else {
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

uint16_t float16_bits(float x) {
  const _Float16 reference = static_cast<_Float16>(x);
  uint16_t bits;
  std::memcpy(&bits, &reference, 2);
  return bits;
}

TEST(DTypeF16, RoundsToNearestEvenAtEveryMidpoint) {
  // For every finite f16 value v: v itself, the midpoint to the next value away from zero (exact in
  // f32), and the f32 values one ulp either side of that midpoint. The midpoint below v is the one
  // above v's predecessor, so every midpoint of the format is covered, both signs.
  size_t probes = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;  // Inf and NaN
    const double value = alloy::f16_to_f32(static_cast<uint16_t>(h));
    const double next = (h & 0x7FFF) == 0x7BFF ? std::copysign(65536.0, value)
                                               : alloy::f16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((value + next) / 2);
    ASSERT_EQ(static_cast<double>(mid), (value + next) / 2) << "midpoint not exact, pattern " << h;
    for (float x : {static_cast<float>(value), mid, std::nextafter(mid, 0.0f),
                    std::nextafter(mid, std::copysign(INFINITY, mid))}) {
      ASSERT_EQ(alloy::f32_to_f16(x), float16_bits(x)) << "input bits " << std::hex << bits_of(x);
      ++probes;
    }
  }
  EXPECT_EQ(probes, 4u * (65536 - 2 * 1024));
  // Ties go to even: 1 + 2^-11 is halfway between 1 (0x3C00, even) and 1 + 2^-10 (0x3C01).
  EXPECT_EQ(alloy::f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(alloy::f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(alloy::f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(alloy::f32_to_f16(65519.996f), 0x7BFF);
  EXPECT_EQ(alloy::f32_to_f16(65520.0f), 0x7C00);  // the tie above the max goes to Inf
  EXPECT_EQ(alloy::f32_to_f16(-1e30f), 0xFC00);
  EXPECT_EQ(alloy::f32_to_f16(INFINITY), 0x7C00);
  EXPECT_EQ(alloy::f32_to_f16(0x1p-24f), 0x0001);   // smallest subnormal
  EXPECT_EQ(alloy::f32_to_f16(0x1p-25f), 0x0000);   // tie to even: zero
  EXPECT_EQ(alloy::f32_to_f16(-0x1p-25f), 0x8000);  // sign kept
  EXPECT_EQ(alloy::f32_to_f16(0x3p-25f), 0x0002);   // tie between 1 and 2 subnormal ulps: even
  EXPECT_EQ(alloy::f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(alloy::f32_to_f16(std::nanf("")), 0x7E00);
  EXPECT_EQ(alloy::f32_to_f16(-std::nanf("")), 0xFE00);
  EXPECT_EQ(alloy::f32_to_f16(from_bits(0x7F800001)), 0x7E00);  // signalling NaN, payload dropped
  EXPECT_EQ(alloy::f32_to_f16(from_bits(0xFFFFFFFF)), 0xFE00);
}
#endif  // __FLT16_MAX__

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
  EXPECT_TRUE(std::isnan(alloy::f8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(alloy::f8_e4m3_to_f32(0xFF)));
  EXPECT_EQ(alloy::f8_e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(alloy::f8_e4m3_to_f32(0x78), 256.0f);  // S.1111.000: a number, not Inf
  EXPECT_EQ(alloy::f8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(alloy::f8_e5m2_to_f32(0x3C), 1.0f);
  EXPECT_EQ(alloy::f8_e5m2_to_f32(0xFC), -INFINITY);
  EXPECT_TRUE(std::isnan(alloy::f8_e5m2_to_f32(0x7D)));
  EXPECT_EQ(alloy::f8_e5m2_to_f32(0x01), 0x1p-16f);
  EXPECT_EQ(alloy::f8_e4m3fnuz_to_f32(0x40), 1.0f);
  EXPECT_EQ(alloy::f8_e4m3fnuz_to_f32(0xFF), -240.0f);
  EXPECT_TRUE(std::isnan(alloy::f8_e4m3fnuz_to_f32(0x80)));
  EXPECT_EQ(alloy::f8_e5m2fnuz_to_f32(0x40), 1.0f);
  EXPECT_TRUE(std::isnan(alloy::f8_e5m2fnuz_to_f32(0x80)));
  EXPECT_EQ(bits_of(alloy::f8_e4m3fnuz_to_f32(0x00)), 0u);
  EXPECT_EQ(alloy::f8_e8m0_to_f32(0), 0x1p-127f);
  EXPECT_EQ(alloy::f8_e8m0_to_f32(254), 0x1p127f);
  EXPECT_TRUE(std::isnan(alloy::f8_e8m0_to_f32(255)));
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

// round_to_bf16 and round_to_f16 (the kernels' rnd(), in 32-bit lanes) against the compositions
// through the 16-bit values: every one of the 2^16 high halves, with low halves at and around
// each dtype's rounding boundaries (bf16: the tie 0x8000; f16 normals: the tie 0x1000 below an
// even and an odd last bit; subnormals and the largest values fall in the high halves) and a
// random one; every NaN and infinity included. In scalar calls, in a loop that vectorises, and
// through the bulk round_to.
TEST(DTypeBulk, RoundingInLanesIsTheStoreAndLoad) {
  std::vector<uint32_t> patterns;
  uint32_t state = 12345;
  for (uint32_t high = 0; high <= 0xFFFFu; ++high) {
    state = state * 1664525u + 1013904223u;
    for (uint32_t low : {0x0u, 0x1u, 0x0FFFu, 0x1000u, 0x1001u, 0x2FFFu, 0x3000u, 0x3001u, 0x7FFFu, 0x8000u,
                         0x8001u, 0xFFFFu, state >> 16}) {
      patterns.push_back(high << 16 | low);
    }
  }
  const size_t n = patterns.size();
  std::vector<float> in(n);
  for (size_t i = 0; i < n; ++i) in[i] = from_bits(patterns[i]);
  for (auto dtype : {alloy::DType::BF16, alloy::DType::F16}) {
    const bool bf16 = dtype == alloy::DType::BF16;
    std::vector<float> lanes(n), bulk = in;
    for (size_t i = 0; i < n; ++i) lanes[i] = bf16 ? alloy::round_to_bf16(in[i]) : alloy::round_to_f16(in[i]);
    alloy::round_to(dtype, bulk.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const float want = bf16 ? alloy::bf16_to_f32(alloy::f32_to_bf16(in[i])) : alloy::f16_to_f32(alloy::f32_to_f16(in[i]));
      ASSERT_EQ(bits_of(lanes[i]), bits_of(want)) << alloy::dtype_name(dtype) << std::hex << " 0x" << patterns[i];
      ASSERT_EQ(bits_of(bulk[i]), bits_of(want)) << alloy::dtype_name(dtype) << std::hex << " 0x" << patterns[i];
      ASSERT_EQ(bits_of(alloy::round_to(dtype, in[i])), bits_of(want)) << alloy::dtype_name(dtype) << std::hex << " 0x" << patterns[i];
    }
  }
}

TEST(DTypeBulk, RoundToBuffer) {
  const size_t n = 70001;
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = from_bits(static_cast<uint32_t>(i * 2654435761u));
  for (auto dtype : {alloy::DType::BF16, alloy::DType::F16, alloy::DType::F32}) {
    std::vector<float> rounded = values;
    alloy::round_to(dtype, rounded.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const float want = dtype == alloy::DType::BF16  ? alloy::bf16_to_f32(alloy::f32_to_bf16(values[i]))
                         : dtype == alloy::DType::F16 ? alloy::f16_to_f32(alloy::f32_to_f16(values[i]))
                                                      : values[i];
      ASSERT_EQ(bits_of(rounded[i]), bits_of(want)) << alloy::dtype_name(dtype) << " " << i;
      ASSERT_EQ(bits_of(alloy::round_to(dtype, values[i])), bits_of(want));
    }
  }
  alloy::round_to(alloy::DType::BF16, nullptr, 0);
}

// overflow_on_store counts (and, clamping, replaces by the dtype's largest finite value with the
// sign kept) exactly the finite values that round_to turns into an infinity: every pattern within
// 300 ulps of each dtype's threshold (the bf16 tie 0x7F7F8000, f16 65520) and of the largest
// finite float, both signs, infinities and NaNs (left alone), and random values, over several
// of the function's 4096-element blocks, some with no overflow at all.
TEST(DTypeBulk, OverflowOnStoreIsWhatRoundsToInfinity) {
  std::vector<float> values;
  for (uint32_t centre : {0x7F7F8000u, 0x477FF000u, 0x7F7FFFFFu, 0x7F800000u, 0x7FC00000u}) {
    for (uint32_t d = 0; d < 600; ++d) {
      const uint32_t bits = centre - 300 + d;
      values.push_back(from_bits(bits));
      values.push_back(from_bits(bits | 0x80000000u));
    }
  }
  for (uint32_t i = 0; i < 9000; ++i) values.push_back(from_bits(i * 2654435761u));  // blocks with none, mostly
  for (auto dtype : {alloy::DType::BF16, alloy::DType::F16}) {
    const float largest = dtype == alloy::DType::F16 ? 65504.0f : from_bits(0x7F7F0000u);
    size_t expected = 0;
    for (float x : values) expected += std::isfinite(x) && !std::isfinite(alloy::round_to(dtype, x));
    ASSERT_GT(expected, 100u);
    std::vector<float> counted = values;
    EXPECT_EQ(alloy::overflow_on_store(dtype, counted.data(), counted.size(), false), expected);
    for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(bits_of(counted[i]), bits_of(values[i]));
    std::vector<float> clamped = values;
    EXPECT_EQ(alloy::overflow_on_store(dtype, clamped.data(), clamped.size(), true), expected);
    for (size_t i = 0; i < values.size(); ++i) {
      const float x = values[i];
      const bool overflows = std::isfinite(x) && !std::isfinite(alloy::round_to(dtype, x));
      ASSERT_EQ(bits_of(clamped[i]), bits_of(overflows ? std::copysign(largest, x) : x))
          << alloy::dtype_name(dtype) << " " << std::hex << bits_of(x);
    }
  }
  for (auto dtype : {alloy::DType::F32, alloy::DType::F64}) {
    std::vector<float> copy = values;
    EXPECT_EQ(alloy::overflow_on_store(dtype, copy.data(), copy.size(), true), 0u);
  }
}

TEST(DTypeBulk, F64StoreWidensAndLoadRounds) {
  const float values[] = {1.0f, -0.0f, 0x1p-149f, 3.4028235e38f, -INFINITY, 0.1f};
  uint8_t storage[8 * 6 + 3];
  alloy::store_from_f32(values, 6, alloy::DType::F64, storage + 3);
  for (int i = 0; i < 6; ++i) {
    double d;
    std::memcpy(&d, storage + 3 + 8 * i, 8);
    EXPECT_EQ(d, static_cast<double>(values[i]));
    EXPECT_EQ(std::signbit(d), std::signbit(values[i]));
  }
  const double wide[] = {1.0 + 0x1p-24, 1.0 + 0x1p-24 + 0x1p-40, 1e300, -1e-300};
  uint8_t raw[sizeof(wide) + 1];
  std::memcpy(raw + 1, wide, sizeof(wide));
  float narrow[4];
  alloy::load_as_f32(alloy::DType::F64, raw + 1, 4, narrow);
  EXPECT_EQ(narrow[0], 1.0f);            // tie to even
  EXPECT_EQ(narrow[1], 1.0f + 0x1p-23f);  // above the tie
  EXPECT_EQ(narrow[2], INFINITY);
  EXPECT_EQ(bits_of(narrow[3]), 0x80000000u);
}

TEST(DTypeBulk, F8LoadMatchesScalarOnAllPatterns) {
  std::vector<uint8_t> raw(3 * 256 + 1);
  for (size_t i = 0; i < 3 * 256; ++i) raw[i + 1] = static_cast<uint8_t>(i * 7);
  std::vector<float> out(3 * 256);
  const std::pair<alloy::DType, float (*)(uint8_t)> types[] = {
      {alloy::DType::F8_E4M3, alloy::f8_e4m3_to_f32},
      {alloy::DType::F8_E5M2, alloy::f8_e5m2_to_f32},
      {alloy::DType::F8_E8M0, alloy::f8_e8m0_to_f32},
      {alloy::DType::F8_E4M3FNUZ, alloy::f8_e4m3fnuz_to_f32},
      {alloy::DType::F8_E5M2FNUZ, alloy::f8_e5m2fnuz_to_f32},
  };
  for (const auto& [dtype, decode] : types) {
    alloy::load_as_f32(dtype, raw.data() + 1, out.size(), out.data());
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(bits_of(out[i]), bits_of(decode(raw[i + 1]))) << alloy::dtype_name(dtype) << " " << i;
    }
  }
}

TEST(DTypeBulk, UnsupportedDtypesThrowInvalidArgument) {
  float x = 0;
  uint8_t b[16] = {};
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto dtype = static_cast<alloy::DType>(i);
    if (!alloy::can_load_as_f32(dtype)) {
      try {
        alloy::load_as_f32(dtype, b, 1, &x);
        ADD_FAILURE() << "load " << alloy::dtype_name(dtype);
      } catch (const alloy::Error& e) {
        EXPECT_EQ(e.code(), alloy::ErrorCode::kInvalidArgument);
        EXPECT_NE(std::string(e.what()).find(alloy::dtype_name(dtype)), std::string::npos) << e.what();
      }
    }
    if (!alloy::can_store_from_f32(dtype)) {
      try {
        alloy::store_from_f32(&x, 1, dtype, b);
        ADD_FAILURE() << "store " << alloy::dtype_name(dtype);
      } catch (const alloy::Error& e) {
        EXPECT_EQ(e.code(), alloy::ErrorCode::kInvalidArgument);
      }
    }
  }
}

}  // namespace
