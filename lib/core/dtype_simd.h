// Vectorised bf16/f16 <-> float32 conversions, chosen at run time (internal to lib/core; the bulk
// loops of dtype_convert.cpp call them, the tests call every path).
//
// Each path gives exactly the bits of the scalar conversions in alloy/core/dtype.h, for every input
// (tests/core/test_dtype_simd.cpp checks all 65,536 bf16 and f16 patterns and a large set of f32
// values, ties, subnormals, infinities, NaN payloads and overflows included):
//  - kAvx512 (AVX-512 F/BW/VL with AVX512_BF16 and F16C): 16 lanes; bf16 -> f32 is a zero-extend
//    and shift; f32 -> bf16 is VCVTNEPS2BF16 (round to nearest even), with its two differences
//    from the scalar rule fixed up: a NaN becomes 0x7FC0 (the instruction keeps sign and payload),
//    and a subnormal input is rounded by the scalar integer trick (the instruction flushes it to
//    zero); f16 uses VCVTPH2PS / VCVTPS2PH (round to nearest even), a NaN stored as 0x7E00 | sign.
//  - kAvx2 (AVX2 and F16C): the same in 8 lanes, f32 -> bf16 by the integer trick itself.
//  - kScalar: the inline scalar functions, one element at a time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

enum class SimdPath { kScalar, kAvx2, kAvx512 };

const char* simd_path_name(SimdPath path);
bool simd_path_supported(SimdPath path);  // by this CPU (and OS)
SimdPath best_simd_path();                // the widest supported; what the bulk loops use

// Serial conversions of `count` elements over raw little-endian storage (unaligned allowed), with
// the given path (which must be supported).
void bf16_to_f32_with(SimdPath path, const uint8_t* src, size_t count, float* dst);
void f16_to_f32_with(SimdPath path, const uint8_t* src, size_t count, float* dst);
void f32_to_bf16_with(SimdPath path, const float* src, size_t count, uint8_t* dst);
void f32_to_f16_with(SimdPath path, const float* src, size_t count, uint8_t* dst);

}  // namespace alloy::detail
