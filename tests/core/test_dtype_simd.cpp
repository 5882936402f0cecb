// The vector bf16/f16 conversions (lib/core/dtype_simd.cpp) against the scalar reference of
// alloy/core/dtype.h, bit for bit, on every path this CPU supports: all 65,536 16-bit patterns in,
// and several million float32 values out (random bits, values exactly at the rounding midpoints,
// subnormals, zeros, infinities, NaNs with every kind of payload, values around the overflow
// thresholds), from unaligned pointers and with counts that leave a scalar tail.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "alloy/core/dtype.h"
#include "core/dtype_simd.h"

namespace {

using alloy::detail::SimdPath;

float from_bits(uint32_t u) { return alloy::bits_to_float(u); }
uint32_t bits_of(float f) { return alloy::float_to_bits(f); }

// Random bits, then cases built to hit each rule.
std::vector<float> f32_cases() {
  std::vector<float> v;
  std::mt19937 rng(20261203);
  for (int i = 0; i < 2'000'000; ++i) v.push_back(from_bits(static_cast<uint32_t>(rng())));
  for (int i = 0; i < 400'000; ++i) {
    const uint32_t r = static_cast<uint32_t>(rng());
    const uint32_t sign = r & 0x80000000u;
    // bf16 ties: the low 16 bits exactly 0x8000 (even and odd kept bits), and one off either side.
    v.push_back(from_bits((r & 0xFFFF0000u) | 0x8000u));
    v.push_back(from_bits((r & 0xFFFF0000u) | 0x7FFFu));
    v.push_back(from_bits((r & 0xFFFF0000u) | 0x8001u));
    // f16 ties: 13 dropped bits exactly half, in the normal f16 range (exponents 113..142).
    const uint32_t exponent = 113 + (r >> 8) % 30;
    v.push_back(from_bits(sign | exponent << 23 | (r & 0x7FE000u) | 0x1000u));
    // f16 subnormal range (2^-25 .. 2^-14) and its ties.
    const uint32_t small = 102 + r % 12;
    v.push_back(from_bits(sign | small << 23 | (r >> 9 & 0x7FFFFFu)));
    v.push_back(from_bits(sign | small << 23 | (r >> 9 & 0x7FF000u) | 0x800u));
    // float32 subnormals (which VCVTNEPS2BF16 flushes) and NaNs with random payloads.
    v.push_back(from_bits(sign | (r & 0x7FFFFFu)));
    v.push_back(from_bits(sign | 0x7F800000u | ((r & 0x7FFFFFu) | 1u)));
  }
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x80000001u, 0x007FFFFFu, 0x00800000u, 0x7F800000u,
                     0xFF800000u, 0x7F800001u, 0xFF800001u, 0x7FC00000u, 0xFFC00000u, 0x7FFFFFFFu, 0xFFFFFFFFu,
                     0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F7F7FFFu, 0x7F7F8000u, 0x7F7F8001u, 0x7F7EFFFFu,
                     0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x477FE000u, 0xC77FF000u, 0x33000000u, 0x33000001u,
                     0x387FE000u, 0x387FF000u, 0x38800000u, 0xB3000000u}) {
    v.push_back(from_bits(u));
  }
  v.push_back(65504.0f);
  v.push_back(65519.99f);
  v.push_back(65520.0f);
  v.push_back(-65520.0f);
  return v;
}

std::vector<SimdPath> all_paths() { return {SimdPath::kScalar, SimdPath::kAvx2, SimdPath::kAvx512}; }

#define SKIP_IF_UNSUPPORTED(path)                                                                            \
  if (!alloy::detail::simd_path_supported(path))                                                             \
  GTEST_SKIP() << alloy::detail::simd_path_name(path)                                                        \
               << ": this CPU (or OS) lacks the instructions (avx2+f16c; avx512 also needs avx512f, bw, vl " \
                  "and avx512_bf16), so the dispatcher never runs it here"

class DTypeSimd : public ::testing::TestWithParam<SimdPath> {};

TEST_P(DTypeSimd, EveryBf16AndF16PatternLoadsAsTheScalarCode) {
  SKIP_IF_UNSUPPORTED(GetParam());
  // One byte of offset: the kernels must accept unaligned storage. 65,536 + 5 elements leave a tail.
  std::vector<uint8_t> storage(1 + 2 * (65536 + 5));
  uint8_t* src = storage.data() + 1;
  for (uint32_t i = 0; i < 65536 + 5; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    std::memcpy(src + 2 * i, &h, 2);
  }
  std::vector<float> got(65536 + 5);
  alloy::detail::bf16_to_f32_with(GetParam(), src, got.size(), got.data());
  for (uint32_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(bits_of(got[i]), bits_of(alloy::bf16_to_f32(static_cast<uint16_t>(i)))) << "bf16 " << std::hex << i;
  }
  alloy::detail::f16_to_f32_with(GetParam(), src, got.size(), got.data());
  for (uint32_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(bits_of(got[i]), bits_of(alloy::f16_to_f32(static_cast<uint16_t>(i)))) << "f16 " << std::hex << i;
  }
}

TEST_P(DTypeSimd, Float32StoresRoundAsTheScalarCode) {
  SKIP_IF_UNSUPPORTED(GetParam());
  const std::vector<float> values = f32_cases();
  std::vector<uint8_t> storage(1 + 2 * values.size());
  uint8_t* dst = storage.data() + 1;
  size_t mismatches = 0;
  const auto check = [&](const char* what, void (*convert)(SimdPath, const float*, size_t, uint8_t*),
                         uint16_t (*scalar)(float)) {
    convert(GetParam(), values.data(), values.size(), dst);
    for (size_t i = 0; i < values.size(); ++i) {
      uint16_t got;
      std::memcpy(&got, dst + 2 * i, 2);
      const uint16_t want = scalar(values[i]);
      if (got != want && ++mismatches <= 10) {
        ADD_FAILURE() << what << " of 0x" << std::hex << bits_of(values[i]) << ": got 0x" << got << ", want 0x" << want;
      }
    }
  };
  check("bf16", alloy::detail::f32_to_bf16_with, alloy::f32_to_bf16);
  check("f16", alloy::detail::f32_to_f16_with, alloy::f32_to_f16);
  EXPECT_EQ(mismatches, 0u);
  // Every count from 0 to 40 (the vector loop and the scalar tail) from the same inputs.
  for (size_t n = 0; n <= 40; ++n) {
    std::vector<uint8_t> a(2 * n + 1, 0xAB), b(2 * n + 1, 0xAB);
    alloy::detail::f32_to_bf16_with(GetParam(), values.data() + 3, n, a.data());
    alloy::detail::f32_to_bf16_with(SimdPath::kScalar, values.data() + 3, n, b.data());
    EXPECT_EQ(a, b) << n;  // and the byte past the end untouched
  }
}

// Values already rounded to bf16 (low 16 bits zero), as a merge's outputs are: stored unchanged,
// except every NaN (whatever its sign and payload) as 0x7FC0. Every bf16 pattern, then runs of
// rounded finite values with one NaN or one unrounded value at every position of 64, so that a
// kernel that takes a shortcut for vectors of rounded values is checked on both sides of it.
TEST_P(DTypeSimd, RoundedFloat32StoresAsTheScalarCode) {
  SKIP_IF_UNSUPPORTED(GetParam());
  std::vector<float> values;
  for (uint32_t h = 0; h < 65536; ++h) values.push_back(alloy::bf16_to_f32(static_cast<uint16_t>(h)));
  std::mt19937 rng(20261205);
  const auto rounded_finite = [&] {
    uint32_t u = static_cast<uint32_t>(rng()) & 0xFFFF0000u;
    if ((u & 0x7F800000u) == 0x7F800000u) u &= 0xBFFF0000u;  // not Inf/NaN
    return from_bits(u);
  };
  for (const uint32_t odd : {0x7FC00000u, 0xFFC00000u, 0x7F810000u, 0xFFFF0000u, 0x3F808000u, 0x00000001u,
                             0x3F800001u}) {
    for (size_t at = 0; at < 64; ++at) {
      for (size_t j = 0; j < 64; ++j) values.push_back(j == at ? from_bits(odd) : rounded_finite());
    }
  }
  for (int i = 0; i < 100'000; ++i) values.push_back(rounded_finite());
  for (const size_t offset : {size_t{0}, size_t{1}, size_t{7}}) {
    const size_t n = values.size() - offset;
    std::vector<uint8_t> got(2 * n + 1, 0xAB), want(2 * n + 1, 0xAB);
    alloy::detail::f32_to_bf16_with(GetParam(), values.data() + offset, n, got.data() + 1);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = alloy::f32_to_bf16(values[offset + i]);
      std::memcpy(want.data() + 1 + 2 * i, &h, 2);
    }
    ASSERT_EQ(got, want) << "offset " << offset;
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, DTypeSimd, ::testing::ValuesIn(all_paths()),
                         [](const auto& info) { return std::string(alloy::detail::simd_path_name(info.param)); });

// The bulk loops use the widest path the CPU has, and agree with the scalar code.
TEST(DTypeSimdDispatch, BulkConversionsUseTheBestPathAndMatchScalar) {
  const SimdPath best = alloy::detail::best_simd_path();
  EXPECT_TRUE(alloy::detail::simd_path_supported(best));
  if (alloy::detail::simd_path_supported(SimdPath::kAvx512)) {
    EXPECT_EQ(best, SimdPath::kAvx512);
  }
  const std::vector<float> values = f32_cases();
  std::vector<uint8_t> bulk(2 * values.size()), scalar(2 * values.size());
  for (const alloy::DType dtype : {alloy::DType::BF16, alloy::DType::F16}) {
    alloy::store_from_f32(values.data(), values.size(), dtype, bulk.data());
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = dtype == alloy::DType::BF16 ? alloy::f32_to_bf16(values[i]) : alloy::f32_to_f16(values[i]);
      std::memcpy(scalar.data() + 2 * i, &h, 2);
    }
    ASSERT_EQ(bulk, scalar) << alloy::dtype_name(dtype);
    std::vector<float> loaded(values.size());
    alloy::load_as_f32(dtype, bulk.data(), values.size(), loaded.data());
    for (size_t i = 0; i < values.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, bulk.data() + 2 * i, 2);
      const float want = dtype == alloy::DType::BF16 ? alloy::bf16_to_f32(h) : alloy::f16_to_f32(h);
      ASSERT_EQ(bits_of(loaded[i]), bits_of(want)) << i;
    }
  }
}

}  // namespace
