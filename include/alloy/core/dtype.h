// alloy/core/dtype.h: the dtypes of the safetensors spec, one table, and conversions to/from float32.
//
// The table (dtype_info) is the single source of truth for names, bit widths and kinds. Everything
// that must branch on a dtype does it through this table or through the conversion functions here.
//
// Conversions follow PyTorch (c10/util/BFloat16.h, c10/util/Half.h) bit for bit:
//  - float32 -> bfloat16 (f32_to_bf16): round to nearest, ties to even, by the integer trick
//    (u + 0x7FFF + ((u >> 16) & 1)) >> 16 of c10::detail::round_to_nearest_even. Any NaN, whatever
//    its sign or payload, becomes exactly 0x7FC0 (sign dropped, as c10). Values past the largest
//    finite bf16 round to +-Inf (the carry runs into the exponent); -0 stays 0x8000; subnormals
//    round like normals.
//  - float32 -> float16 (f32_to_f16): IEEE round to nearest, ties to even, as
//    c10::detail::fp16_ieee_from_fp32_value. Any NaN becomes 0x7E00 | sign (sign kept, payload
//    dropped). |x| >= 65520 (the midpoint above 65504, whose tie goes up) -> +-Inf; results below
//    2^-14 are correctly rounded f16 subnormals; |x| <= 2^-25 -> +-0 (sign kept).
//  - bfloat16 -> float32 is exact (bits << 16, NaN payload and sign kept).
//  - float16 -> float32 is exact for every non-NaN; a NaN keeps its sign and payload and gets the
//    quiet bit set (0x7C01 -> 0x7FC02000), as c10::detail::fp16_ieee_to_fp32_value and F16C do.
//  - F8_E4M3 (e4m3fn: bias 7, no infinities, S.1111.111 is NaN, max 448), F8_E5M2 (IEEE-like,
//    bias 15, = the top byte of an f16), F8_E8M0 (2^(b-127), 0xFF is NaN), F8_E4M3FNUZ /
//    F8_E5M2FNUZ (bias 8 / 16, no infinities, no -0: 0x80 is the only NaN) -> float32 are exact.
//    F8_E5M2 NaNs decode as the f16 NaN with that top byte (sign and payload kept, quiet); the
//    NaNs of the other F8 types decode as 0x7FC00000. Storing into F8 types is not supported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace alloy {

enum class DType : uint8_t {
  BOOL, U8, I8, I16, U16, I32, U32, I64, U64,
  F16, BF16, F32, F64, C64,
  F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  F4, F6_E2M3, F6_E3M2,
};

inline constexpr int kDTypeCount = 22;

struct DTypeInfo {
  DType dtype;
  const char* name;       // spelling in safetensors headers, e.g. "BF16"
  unsigned bits;          // storage bits per element (4 for F4, 6 for F6_*, 64 for C64)
  bool is_float;          // floating point (real or complex)
  unsigned alignment;     // natural alignment in bytes used to order tensors when writing (>= 1)
};

const DTypeInfo& dtype_info(DType dtype);
inline const char* dtype_name(DType dtype) { return dtype_info(dtype).name; }
inline unsigned dtype_bits(DType dtype) { return dtype_info(dtype).bits; }
// Parses a safetensors dtype name ("BF16", "F8_E4M3", ...). Case-sensitive, as the spec.
std::optional<DType> dtype_from_name(std::string_view name);
// Parses a torch-style name used in recipes and config.json: "bfloat16", "float16", "float32",
// "float64", also "bf16", "fp16", "f16", "fp32", "f32", "half", "float", "torch.bfloat16".
std::optional<DType> dtype_from_torch_name(std::string_view name);
// The torch name written to config.json: "bfloat16", "float16", "float32", "float64", ...
const char* dtype_torch_name(DType dtype);

// True for the dtypes alloy can load into float32 and store from float32:
// F16, BF16, F32, F64 (load and store), and the F8 types (load only; see can_store_from_f32).
bool can_load_as_f32(DType dtype);
bool can_store_from_f32(DType dtype);

// Scalar conversions (exact semantics in the header comment). The half-precision ones are inline
// so that the element loops of conversion and merging vectorise.
inline uint32_t float_to_bits(float value) {
  uint32_t u;
  std::memcpy(&u, &value, 4);
  return u;
}
inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf16_to_f32(uint16_t bits) { return bits_to_float(uint32_t(bits) << 16); }
inline uint16_t f32_to_bf16(float value) {
  const uint32_t u = float_to_bits(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN, as c10::BFloat16
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
// The f16 conversions are written without branches (every case computed, then selected with a
// bit mask) so that the bulk loops vectorise; both are checked against the compiler's _Float16.
inline uint32_t select_bits(bool condition, uint32_t if_true, uint32_t if_false) {
  const uint32_t mask = 0u - static_cast<uint32_t>(condition);
  return (if_true & mask) | (if_false & ~mask);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7FFFu;
  const uint32_t shifted = magnitude << 13;
  // Normal: rebias the exponent 15 -> 127.
  const uint32_t normal = shifted + 0x38000000u;
  // Inf / NaN: exponent 0xFF, payload kept, NaN made quiet.
  const uint32_t inf_nan = (shifted + 0x70000000u) | select_bits(magnitude > 0x7C00u, 0x400000u, 0u);
  // Zero / subnormal: m * 2^-24 = (1 + m/1024) * 2^-14 - 2^-14, exact in float32.
  const uint32_t subnormal = float_to_bits(bits_to_float(shifted + 0x38800000u) - 0x1p-14f);
  const uint32_t exponent = magnitude & 0x7C00u;
  const uint32_t result =
      select_bits(exponent == 0, subnormal, select_bits(exponent == 0x7C00u, inf_nan, normal));
  return bits_to_float(sign | result);
}
inline uint16_t f32_to_f16(float value) {
  const uint32_t u = float_to_bits(value);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  // Normal results (2^-14 <= |x| < 65520): rebias 127 -> 15, then round the 13 dropped bits to
  // nearest even with the integer trick; a carry runs into the exponent, as it should.
  const uint32_t rebased = magnitude - 0x38000000u;
  const uint32_t normal = (rebased + 0xFFFu + ((rebased >> 13) & 1u)) >> 13;
  // Subnormal results (|x| < 2^-14): adding 0.5f puts the f16 subnormal ulp 2^-24 at the last
  // mantissa bit of the sum, so the float addition itself rounds to nearest even; the low bits of
  // the sum are the f16 result (0x400 when it rounds up to the smallest normal).
  const uint32_t subnormal = float_to_bits(bits_to_float(magnitude) + 0.5f) - 0x3F000000u;
  const uint32_t finite = select_bits(magnitude < 0x38800000u, subnormal, normal);
  const uint32_t special = select_bits(magnitude > 0x7F800000u, 0x7E00u, 0x7C00u);  // NaN, or Inf
  return static_cast<uint16_t>(sign | select_bits(magnitude >= 0x477FF000u, special, finite));
}
float f8_e4m3_to_f32(uint8_t bits);
float f8_e5m2_to_f32(uint8_t bits);
float f8_e8m0_to_f32(uint8_t bits);
float f8_e4m3fnuz_to_f32(uint8_t bits);
float f8_e5m2fnuz_to_f32(uint8_t bits);

// bf16_to_f32(f32_to_bf16(x)) and f16_to_f32(f32_to_f16(x)), computed on the float32 bits in 32-bit
// integer lanes. Through the 16-bit values GCC narrows every lane to 16 bits and widens it back,
// in 256-bit vectors where the CPU lacks AVX-512BW: twice the instructions of these forms.
//  - bf16: f32_to_bf16's sum u + 0x7FFF + bit 16 of u with its low half cleared (no non-NaN u
//    carries out of 32 bits), and any NaN 0x7FC0 << 16.
//  - f16, for the magnitude m: from 2^-14 up to 65520 the 13 dropped mantissa bits rounded to
//    nearest even by the integer trick on m itself (f32_to_f16's rebias and f16_to_f32's undoing
//    cancel; a carry runs into the exponent); below 2^-14 the f16 subnormal grid as (m + 0.5) -
//    0.5 (the sum rounds to a multiple of 2^-24, the difference is exact); from 65520 up Inf, and
//    any NaN 0x7FC00000 (f32_to_f16's 0x7E00 widened); the sign kept in every case.
// Both equal the compositions on all 2^32 patterns (checked once; the tests take every high half
// with the low halves around each dtype's ties).
[[gnu::always_inline]] inline float round_to_bf16(float value) {
  const uint32_t u = float_to_bits(value);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  return bits_to_float((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : rounded);
}
[[gnu::always_inline]] inline float round_to_f16(float value) {
  const uint32_t u = float_to_bits(value);
  const uint32_t sign = u & 0x80000000u, m = u & 0x7FFFFFFFu;
  const uint32_t normal = (m + 0xFFFu + ((m >> 13) & 1u)) & 0xFFFFE000u;
  const uint32_t subnormal = float_to_bits((bits_to_float(m) + 0.5f) - 0.5f);
  const uint32_t finite = m < 0x38800000u ? subnormal : normal;
  const uint32_t special = m > 0x7F800000u ? 0x7FC00000u : 0x7F800000u;
  return bits_to_float(sign | (m >= 0x477FF000u ? special : finite));
}

// Rounds a float32 value to the nearest value representable in `dtype` (F32: identity; BF16/F16:
// round-to-nearest-even, as a store and reload would). This is the rnd() of docs/methods.md.
inline float round_to(DType dtype, float value) {
  if (dtype == DType::BF16) return round_to_bf16(value);
  if (dtype == DType::F16) return round_to_f16(value);
  return value;
}
// In-place round_to over a buffer, parallel; a no-op for F32.
void round_to(DType dtype, float* values, size_t count);

// Finite float32 values that storing in `dtype` would turn into an infinity (|x| past the dtype's
// largest finite value by more than half a unit in the last place: 65520 for F16). Without
// `clamp` they are counted; with it they are also replaced by +-the dtype's largest finite value.
// Serial: callers run it per chunk. Returns the count.
size_t overflow_on_store(DType dtype, float* values, size_t count, bool clamp);

// Bulk conversions, parallel over the buffer. `src`/`dst` point at raw little-endian storage of
// `count` elements; unaligned pointers are allowed. Throws Error(kInvalidArgument) for a dtype that
// cannot be loaded/stored.
void load_as_f32(DType src_dtype, const void* src, size_t count, float* dst);
void store_from_f32(const float* src, size_t count, DType dst_dtype, void* dst);

}  // namespace alloy
