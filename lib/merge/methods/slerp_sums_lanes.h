// slerp's sums on bf16 rows written for AVX-512 (x86-64-v4): |x|^2, |y|^2 and <x, y> in double,
// with the portable kernel's lanes and order, so the doubles are the same bits. Its own file
// because it is compiled for one instruction set and chosen at run time.
//
// The order (slerp.cpp, slerp_sums_of; method_util.h, lane_sum): element j goes into lane j % 4,
// each lane adds its elements in index order starting from +0 (a tail of len % 4 elements into
// lanes 0, 1, 2), and a sum is (l0 + l1) + (l2 + l3). A product of two bf16 values is exact in
// double, so the only roundings are the additions, and doing the same additions in the same order
// gives the same bits. The portable kernels spent most of their time widening four bf16 values at a
// time into doubles; here one permute widens sixteen, and the lanes' adds run as wide as the order
// allows (eight lanes when two chunks are summed side by side).
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

// Whether the kernels below can run here: an x86-64-v4 CPU.
bool can_slerp_sums_bf16_avx512();

// partial = {|x|^2, |y|^2, <x, y>} over elements [0, len) of the bf16 rows x and y, in the order
// above. Only where can_slerp_sums_bf16_avx512().
void slerp_sums_bf16_avx512(const uint16_t* x, const uint16_t* y, size_t len, double* partial);

// The same for two chunks of len elements at once: partial_a from xa and ya, partial_b from xb
// and yb, each the bits slerp_sums_bf16_avx512 gives it alone. Only where
// can_slerp_sums_bf16_avx512().
void slerp_pair_sums_bf16_avx512(const uint16_t* xa, const uint16_t* ya, const uint16_t* xb,
                                 const uint16_t* yb, size_t len, double* partial_a,
                                 double* partial_b);

}  // namespace alloy::detail
