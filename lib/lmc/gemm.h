// Matrix products of the lmc library (private). Row-major, leading dimensions in elements:
//   C[M, N] = (accumulate ? C : 0) + A[M, K] B[K, N]
// Every element of C is one chain c = fma(A[i, k], B[k, j], c) over k = 0..K-1 in order, whatever
// the tiling, the vector width picked at run time (AVX-512, AVX2 + FMA, or scalar) or the threads:
// the bits are the same on every path. `parallel` spreads fixed tiles over alloy::parallel_for.
#pragma once

#include <cstddef>

namespace alloy::lmc::detail {

void gemm(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b, size_t ldb,
          float* c, size_t ldc, bool accumulate, bool parallel);
void gemm(size_t m, size_t n, size_t k, const double* a, size_t lda, const double* b, size_t ldb,
          double* c, size_t ldc, bool accumulate, bool parallel);

// out[cols, rows] = in[rows, cols]^T
template <class T>
void transpose(size_t rows, size_t cols, const T* in, T* out) {
  constexpr size_t kBlock = 32;
  for (size_t r0 = 0; r0 < rows; r0 += kBlock)
    for (size_t c0 = 0; c0 < cols; c0 += kBlock)
      for (size_t r = r0; r < rows && r < r0 + kBlock; ++r)
        for (size_t c = c0; c < cols && c < c0 + kBlock; ++c) out[c * rows + r] = in[r * cols + c];
}

// Which kernel gemm() uses on this machine: "avx512", "avx2" or "scalar".
const char* gemm_kernel_name();

}  // namespace alloy::lmc::detail
