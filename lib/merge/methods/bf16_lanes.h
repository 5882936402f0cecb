// Helpers shared by the merge's AVX-512 kernels on bf16 rows (weighted_sum_lanes.cpp,
// task_vector_combine.cpp). Include only where <immintrin.h> is available (x86-64 with GCC or
// clang); the functions are compiled for x86-64-v4 and inlined into the kernels.
#pragma once

#include <immintrin.h>

namespace alloy::detail::bf16_lanes {

// The kernels' helpers: compiled for x86-64-v4 and always inlined.
#define ALLOY_V4 __attribute__((target("arch=x86-64-v4"), always_inline)) inline

// round_to_bf16 (alloy/core/dtype.h) without its NaN exception: (u + 0x7FFF + bit 16) with the
// low half cleared. A NaN whose low half is zero (a bf16 input widened, the default NaN
// 0xFFC00000, or one of those passed through an operation) stays a NaN, perhaps of another sign
// or payload, so on such values this gives the reference's bits wherever they are not NaNs and
// NaNs where the reference's are. The kernels make only the NaNs that reach an output (or a
// comparison of bits) the reference's 0x7FC00000.
ALLOY_V4 __m512 round_keeping_nan(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));
  const __m512i half_up = _mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF));
  const __m512i even = _mm512_mask_add_epi32(half_up, odd, half_up, _mm512_set1_epi32(1));
  return _mm512_castsi512_ps(
      _mm512_and_si512(even, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

}  // namespace alloy::detail::bf16_lanes
