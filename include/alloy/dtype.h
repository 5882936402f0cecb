// alloy/dtype.h: the dtypes of the safetensors spec, one table, and conversions to/from float32.
//
// The table (dtype_info) is the single source of truth for names, bit widths and kinds. Everything
// that must branch on a dtype does it through this table or through the conversion functions here.
//
// Conversions follow PyTorch exactly:
//  - float32 -> bfloat16 / float16 round to nearest, ties to even. NaN stays NaN (bf16: the quiet NaN
//    0x7FC0, sign dropped, as torch's c10::BFloat16 does; f16: 0x7E00 | sign, as
//    torch/_cvtss_sh do), overflow goes to +-Inf, f16 subnormals are produced correctly.
//    (bf16 NaN is exactly 0x7FC0, sign dropped: c10::BFloat16 round_to_nearest_even.)
//  - bfloat16 / float16 -> float32 are exact.
//  - F8_E4M3 (e4m3fn: no infinities, S.1111.111 is NaN), F8_E5M2 (IEEE-like), F8_E8M0 (exponent
//    only, 0xFF is NaN), F8_E4M3FNUZ / F8_E5M2FNUZ (0x80 is the only NaN, bias 8 / 16) -> float32
//    are exact.
#pragma once

#include <cstddef>
#include <cstdint>
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

// Scalar conversions (exact semantics in the header comment).
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
float f8_e4m3_to_f32(uint8_t bits);
float f8_e5m2_to_f32(uint8_t bits);
float f8_e8m0_to_f32(uint8_t bits);
float f8_e4m3fnuz_to_f32(uint8_t bits);
float f8_e5m2fnuz_to_f32(uint8_t bits);

// Rounds a float32 value to the nearest value representable in `dtype` (F32: identity; BF16/F16:
// round-to-nearest-even, as a store and reload would). This is the rnd() of docs/methods.md.
float round_to(DType dtype, float value);
// In-place round_to over a buffer, parallel; a no-op for F32.
void round_to(DType dtype, float* values, size_t count);

// Bulk conversions, parallel over the buffer. `src`/`dst` point at raw little-endian storage of
// `count` elements; unaligned pointers are allowed. Throws Error(kInvalidArgument) for a dtype that
// cannot be loaded/stored.
void load_as_f32(DType src_dtype, const void* src, size_t count, float* dst);
void store_from_f32(const float* src, size_t count, DType dst_dtype, void* dst);

}  // namespace alloy
