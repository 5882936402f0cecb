// Weighted sums of bf16 rows written for AVX-512 (x86-64-v4): linear's merge and slerp's blend,
// each element's whole chain in registers, 32 elements at a time. Its own file because it is
// compiled for one instruction set and chosen at run time.
//
// The portable kernels of linear.cpp and slerp.cpp run separate loops over a block of 512 elements
// on the stack (the sums, the count of non-finite outputs, the store of the high halves), and every
// bf16 rounding carries its NaN test. Here the chain stays in registers, the roundings leave the
// NaN test out (an input NaN's low half is zero, and the rounding leaves such a NaN a NaN:
// task_vector_combine.cpp's argument), and only the output's NaNs are made the reference's. An
// output at a 64-byte boundary (a write-behind window's chunk) is stored past the caches.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

// How normalize divides the sum by the rounded weight sum W (linear.cpp, normalize_step): not at
// all (no normalize, or W == 1), by W, or by multiplying with 1 / W where that is exact.
enum class LinearNormalize { kNone, kDivide, kMultiply };

// The most models the AVX-512 kernel holds in registers.
inline constexpr size_t kMaxLinearLanesModels = 4;

// Whether linear_bf16_avx512 can run here: an x86-64-v4 CPU and 1 to kMaxLinearLanesModels
// models (with 2: slerp_blend_bf16_avx512 too).
bool can_weighted_sum_bf16_avx512(size_t models);

// out[j] = the high half of o, for j in [0, len), where (every step rounded to bf16, rnd)
//   o = rnd(0 + rnd(w_0 * x_0[j]) + ... + rnd(w_{count-1} * x_{count-1}[j]))   (in that order)
//   then o = rnd(o / factor) (kDivide) or rnd(o * factor) (kMultiply),
// bit for bit as linear.cpp's portable kernel (a NaN output is 0x7FC0). xs: the models' bf16 bits;
// weights: wD(w_k), already bf16 values. Returns how many outputs are NaN or infinite. Only where
// can_weighted_sum_bf16_avx512(count).
size_t linear_bf16_avx512(const uint16_t* const* xs, const float* weights, size_t count,
                          LinearNormalize normalize, float factor, size_t len, uint16_t* out);

// out[j] = the high half of rnd(s0 * a[j] + s1 * b[j]) for j in [0, len): slerp's blend (the
// products and their sum in float32, one rounding), bit for bit as slerp.cpp's portable kernel (a
// NaN output is 0x7FC0). Returns how many outputs are NaN or infinite. Only where
// can_weighted_sum_bf16_avx512(2).
size_t slerp_blend_bf16_avx512(const uint16_t* a, const uint16_t* b, float s0, float s1, size_t len,
                               uint16_t* out);

}  // namespace alloy::detail
