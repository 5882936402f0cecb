// Conversions between float32 and the floating dtypes of the safetensors spec.
//
// The scalar bf16/f16 conversions are inline in alloy/core/dtype.h (so that these loops vectorise); their
// exact rules, PyTorch's, are documented there. This file holds the F8 decoders and the bulk,
// parallel loops over raw (possibly unaligned) little-endian storage; the bf16/f16 loops run the
// vector kernels of dtype_simd.cpp (AVX-512 or AVX2, chosen at run time), which give the same bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "dtype_simd.h"

namespace alloy {
namespace {

template <class T>
inline T load_unaligned(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
inline void store_unaligned(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

float f8_e4m3_to_f32(uint8_t bits) {
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return bits_to_float(0x7FC00000u);
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
}

float f8_e5m2_to_f32(uint8_t bits) { return f16_to_f32(static_cast<uint16_t>(bits) << 8); }

float f8_e8m0_to_f32(uint8_t bits) {
  if (bits == 0xFF) return bits_to_float(0x7FC00000u);
  return std::ldexp(1.0f, static_cast<int>(bits) - 127);
}

float f8_e4m3fnuz_to_f32(uint8_t bits) {
  if (bits == 0x80) return bits_to_float(0x7FC00000u);
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -10);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 8);
}

float f8_e5m2fnuz_to_f32(uint8_t bits) {
  if (bits == 0x80) return bits_to_float(0x7FC00000u);
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 2) & 0x1F;
  const int mantissa = bits & 0x3;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -17);
  return sign * std::ldexp(1.0f + mantissa / 4.0f, exponent - 16);
}

namespace {
// The in-place roundings, one clone per instruction set (the loops vectorise in 32-bit lanes).
__attribute__((target_clones("avx512f", "avx2", "default"))) void round_bf16_range(float* values, size_t count) {
  for (size_t i = 0; i < count; ++i) values[i] = round_to_bf16(values[i]);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void round_f16_range(float* values, size_t count) {
  for (size_t i = 0; i < count; ++i) values[i] = round_to_f16(values[i]);
}
}  // namespace

void round_to(DType dtype, float* values, size_t count) {
  if (dtype != DType::BF16 && dtype != DType::F16) return;
  parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
    if (dtype == DType::BF16) {
      round_bf16_range(values + b, e - b);
    } else {
      round_f16_range(values + b, e - b);
    }
  });
}

namespace {

// A 256-entry decode table per F8 type, built once from the scalar decoder: the bulk load is then
// one gather per element instead of an ldexp.
struct F8Table {
  float values[256];
  explicit F8Table(float (*decode)(uint8_t)) {
    for (int b = 0; b < 256; ++b) values[b] = decode(static_cast<uint8_t>(b));
  }
};

const F8Table& f8_table(DType dtype) {
  static const F8Table e4m3(f8_e4m3_to_f32), e5m2(f8_e5m2_to_f32), e8m0(f8_e8m0_to_f32),
      e4m3fnuz(f8_e4m3fnuz_to_f32), e5m2fnuz(f8_e5m2fnuz_to_f32);
  switch (dtype) {
    case DType::F8_E4M3: return e4m3;
    case DType::F8_E5M2: return e5m2;
    case DType::F8_E8M0: return e8m0;
    case DType::F8_E4M3FNUZ: return e4m3fnuz;
    default: return e5m2fnuz;
  }
}

}  // namespace

// Runs element(src, dst, i) over [0, count) in parallel chunks. The chunk loop works on local copies
// of the pointers: stores through a uint8_t* may alias anything, including the lambda's captures,
// which would otherwise be reloaded every iteration and block vectorisation.
template <class Src, class Dst, class Element>
void convert_loop(Src* src_ptr, Dst* dst_ptr, size_t count, Element element) {
  parallel_for(count, kDefaultGrain, [src_ptr, dst_ptr, element](size_t b, size_t e) {
    Src* const src = src_ptr;
    Dst* const dst = dst_ptr;
    for (size_t i = b; i < e; ++i) element(src, dst, i);
  });
}

void load_as_f32(DType src_dtype, const void* src_ptr, size_t count, float* dst) {
  const auto* src = static_cast<const uint8_t*>(src_ptr);
  switch (src_dtype) {
    case DType::BF16:
    case DType::F16: {
      const detail::SimdPath path = detail::best_simd_path();
      const auto kernel = src_dtype == DType::BF16 ? detail::bf16_to_f32_with : detail::f16_to_f32_with;
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) { kernel(path, src + 2 * b, e - b, dst + b); });
      return;
    }
    case DType::F32:
      parallel_for(count, kDefaultGrain,
                   [&](size_t b, size_t e) { std::memcpy(dst + b, src + 4 * b, (e - b) * 4); });
      return;
    case DType::F64:
      return convert_loop(src, dst, count, [](const uint8_t* s, float* d, size_t i) {
        d[i] = static_cast<float>(load_unaligned<double>(s + 8 * i));  // round to nearest even
      });
    case DType::F8_E4M3:
    case DType::F8_E5M2:
    case DType::F8_E8M0:
    case DType::F8_E4M3FNUZ:
    case DType::F8_E5M2FNUZ: {
      const float* table = f8_table(src_dtype).values;
      return convert_loop(src, dst, count,
                          [table](const uint8_t* s, float* d, size_t i) { d[i] = table[s[i]]; });
    }
    default:
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("cannot load ") + dtype_name(src_dtype) + " tensors as float32");
  }
}

void store_from_f32(const float* src, size_t count, DType dst_dtype, void* dst_ptr) {
  auto* dst = static_cast<uint8_t*>(dst_ptr);
  switch (dst_dtype) {
    case DType::BF16:
    case DType::F16: {
      const detail::SimdPath path = detail::best_simd_path();
      const auto kernel = dst_dtype == DType::BF16 ? detail::f32_to_bf16_with : detail::f32_to_f16_with;
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) { kernel(path, src + b, e - b, dst + 2 * b); });
      return;
    }
    case DType::F32:
      parallel_for(count, kDefaultGrain,
                   [&](size_t b, size_t e) { std::memcpy(dst + 4 * b, src + b, (e - b) * 4); });
      return;
    case DType::F64:
      return convert_loop(src, dst, count, [](const float* s, uint8_t* d, size_t i) {
        store_unaligned<double>(d + 8 * i, static_cast<double>(s[i]));  // exact
      });
    default:
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("cannot store float32 values as ") + dtype_name(dst_dtype));
  }
}

// A finite x overflows on the store exactly when its magnitude's bits m lie in [threshold,
// 0x7F800000): bf16 0x7F7F8000, the tie above the largest finite 0x7F7F, whose odd last bit sends it
// up to Inf; f16 0x477FF000 = 65520. One unsigned compare per lane, counted a block at a time in
// 32-bit lanes (one clone per instruction set); only a block with an overflow is clamped, element by
// element. The loop through round_to with a branch per element was 16% of a float32 TIES merge
// stored as bf16.
__attribute__((target_clones("avx512f", "avx2", "default"))) size_t overflow_on_store(DType dtype, float* values,
                                                                                       size_t count, bool clamp) {
  if (dtype != DType::BF16 && dtype != DType::F16) return 0;  // F32/F64 hold every finite float
  const float largest = dtype == DType::F16 ? 65504.0f : bits_to_float(0x7F7F0000u);  // bf16 max
  const uint32_t threshold = dtype == DType::F16 ? 0x477FF000u : 0x7F7F8000u;
  const uint32_t span = 0x7F800000u - threshold;
  constexpr size_t kBlock = 4096;
  size_t overflows = 0;
  for (size_t b0 = 0; b0 < count; b0 += kBlock) {
    const size_t end = std::min(count, b0 + kBlock);
    uint32_t block_overflows = 0;
    for (size_t i = b0; i < end; ++i) block_overflows += (float_to_bits(values[i]) & 0x7FFFFFFFu) - threshold < span;
    overflows += block_overflows;
    if (block_overflows == 0 || !clamp) continue;
    for (size_t i = b0; i < end; ++i) {
      if ((float_to_bits(values[i]) & 0x7FFFFFFFu) - threshold < span) values[i] = std::copysign(largest, values[i]);
    }
  }
  return overflows;
}

}  // namespace alloy
