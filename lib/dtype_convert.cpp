// Conversions between float32 and the floating dtypes of the safetensors spec.
//
// The rounding rules are PyTorch's (c10/util/BFloat16.h round_to_nearest_even and
// c10/util/Half.h fp16_ieee_from_fp32_value): round to nearest, ties to even; bf16 NaN -> 0x7FC0
// (sign dropped), f16 NaN -> 0x7E00 with the sign kept; overflow -> infinity.
#include <cmath>
#include <cstring>
#include <string>

#include "alloy/dtype.h"
#include "alloy/error.h"
#include "alloy/parallel.h"

namespace alloy {
namespace {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

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

float bf16_to_f32(uint16_t bits) { return bits_float(uint32_t(bits) << 16); }

uint16_t f32_to_bf16(float value) {
  const uint32_t u = float_bits(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return bits_float(sign | float_bits(magnitude));
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t f32_to_f16(float value) {
  const uint32_t u = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00;     // NaN
  if (magnitude >= 0x477FF000u) return sign | 0x7C00;    // >= 65520 rounds to infinity
  if (magnitude < 0x38800000u) {                         // below 2^-14: f16 subnormal or zero
    if (magnitude <= 0x33000000u) return sign;           // <= 2^-25 rounds to zero (tie -> even)
    const uint32_t exponent = magnitude >> 23;
    const uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exponent;              // 14..24
    uint32_t result = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (remainder > half || (remainder == half && (result & 1u))) ++result;
    return sign | static_cast<uint16_t>(result);
  }
  const uint32_t rebased = magnitude - 0x38000000u;      // exponent bias 127 -> 15
  return sign | static_cast<uint16_t>((rebased + 0xFFFu + ((rebased >> 13) & 1u)) >> 13);
}

float f8_e4m3_to_f32(uint8_t bits) {
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::nanf("");
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
}

float f8_e5m2_to_f32(uint8_t bits) { return f16_to_f32(static_cast<uint16_t>(bits) << 8); }

float f8_e8m0_to_f32(uint8_t bits) {
  if (bits == 0xFF) return std::nanf("");
  return std::ldexp(1.0f, static_cast<int>(bits) - 127);
}

float f8_e4m3fnuz_to_f32(uint8_t bits) {
  if (bits == 0x80) return std::nanf("");
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xF;
  const int mantissa = bits & 0x7;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -10);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 8);
}

float f8_e5m2fnuz_to_f32(uint8_t bits) {
  if (bits == 0x80) return std::nanf("");
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 2) & 0x1F;
  const int mantissa = bits & 0x3;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -17);
  return sign * std::ldexp(1.0f + mantissa / 4.0f, exponent - 16);
}

float round_to(DType dtype, float value) {
  switch (dtype) {
    case DType::BF16: return bf16_to_f32(f32_to_bf16(value));
    case DType::F16: return f16_to_f32(f32_to_f16(value));
    default: return value;
  }
}

void round_to(DType dtype, float* values, size_t count) {
  if (dtype == DType::BF16) {
    parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) values[i] = bf16_to_f32(f32_to_bf16(values[i]));
    });
  } else if (dtype == DType::F16) {
    parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) values[i] = f16_to_f32(f32_to_f16(values[i]));
    });
  }
}

namespace {

template <class Convert>
void load_bytes(const uint8_t* src, size_t count, float* dst, Convert convert) {
  parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) dst[i] = convert(src[i]);
  });
}

}  // namespace

void load_as_f32(DType src_dtype, const void* src_ptr, size_t count, float* dst) {
  const auto* src = static_cast<const uint8_t*>(src_ptr);
  switch (src_dtype) {
    case DType::BF16:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) dst[i] = bf16_to_f32(load_unaligned<uint16_t>(src + 2 * i));
      });
      return;
    case DType::F16:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) dst[i] = f16_to_f32(load_unaligned<uint16_t>(src + 2 * i));
      });
      return;
    case DType::F32:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        std::memcpy(dst + b, src + 4 * b, (e - b) * 4);
      });
      return;
    case DType::F64:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) dst[i] = static_cast<float>(load_unaligned<double>(src + 8 * i));
      });
      return;
    case DType::F8_E4M3: return load_bytes(src, count, dst, f8_e4m3_to_f32);
    case DType::F8_E5M2: return load_bytes(src, count, dst, f8_e5m2_to_f32);
    case DType::F8_E8M0: return load_bytes(src, count, dst, f8_e8m0_to_f32);
    case DType::F8_E4M3FNUZ: return load_bytes(src, count, dst, f8_e4m3fnuz_to_f32);
    case DType::F8_E5M2FNUZ: return load_bytes(src, count, dst, f8_e5m2fnuz_to_f32);
    default:
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("cannot load ") + dtype_name(src_dtype) + " tensors as float32");
  }
}

void store_from_f32(const float* src, size_t count, DType dst_dtype, void* dst_ptr) {
  auto* dst = static_cast<uint8_t*>(dst_ptr);
  switch (dst_dtype) {
    case DType::BF16:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) store_unaligned<uint16_t>(dst + 2 * i, f32_to_bf16(src[i]));
      });
      return;
    case DType::F16:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) store_unaligned<uint16_t>(dst + 2 * i, f32_to_f16(src[i]));
      });
      return;
    case DType::F32:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        std::memcpy(dst + 4 * b, src + b, (e - b) * 4);
      });
      return;
    case DType::F64:
      parallel_for(count, kDefaultGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) store_unaligned<double>(dst + 8 * i, static_cast<double>(src[i]));
      });
      return;
    default:
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("cannot store float32 values as ") + dtype_name(dst_dtype));
  }
}

}  // namespace alloy
