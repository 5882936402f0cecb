// Blocked matrix product with run-time dispatch (see gemm.h). Micro-kernels hold 6 rows x 32
// (AVX-512) or 6 x 16 (AVX2) outputs in registers and stream k; column tails use masks (AVX-512)
// or the scalar loop, which does the same fused multiply-adds in the same order.
#include "gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "alloy/core/parallel.h"

namespace alloy::lmc::detail {
namespace {

struct Args {
  size_t m, n, k;
  const float* a;
  size_t lda;
  const float* b;
  size_t ldb;
  float* c;
  size_t ldc;
  bool accumulate;
};

using BlockFn = void (*)(const Args&, size_t, size_t, size_t, size_t);

void block_scalar(const Args& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  for (size_t i = i0; i < i1; ++i) {
    for (size_t j = j0; j < j1; ++j) {
      float acc = g.accumulate ? g.c[i * g.ldc + j] : 0.0f;
      const float* a = g.a + i * g.lda;
      for (size_t k = 0; k < g.k; ++k) acc = std::fma(a[k], g.b[k * g.ldb + j], acc);
      g.c[i * g.ldc + j] = acc;
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void tail_avx2(const Args& g, size_t i0, size_t i1, size_t j0,
                                                   size_t j1) {
  for (size_t i = i0; i < i1; ++i) {
    for (size_t j = j0; j < j1; ++j) {
      float acc = g.accumulate ? g.c[i * g.ldc + j] : 0.0f;
      const float* a = g.a + i * g.lda;
      for (size_t k = 0; k < g.k; ++k) acc = __builtin_fmaf(a[k], g.b[k * g.ldb + j], acc);
      g.c[i * g.ldc + j] = acc;
    }
  }
}

template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void micro_avx2(const Args& g, size_t i,
                                                                          size_t j) {
  __m256 c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    float* c = g.c + (i + r) * g.ldc + j;
    c0[r] = g.accumulate ? _mm256_loadu_ps(c) : _mm256_setzero_ps();
    c1[r] = g.accumulate ? _mm256_loadu_ps(c + 8) : _mm256_setzero_ps();
  }
  const float* a = g.a + i * g.lda;
  const float* b = g.b + j;
  for (size_t k = 0; k < g.k; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * g.ldb), b1 = _mm256_loadu_ps(b + k * g.ldb + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * g.lda + k);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* c = g.c + (i + r) * g.ldc + j;
    _mm256_storeu_ps(c, c0[r]);
    _mm256_storeu_ps(c + 8, c1[r]);
  }
}

__attribute__((target("avx2,fma"))) void block_avx2(const Args& g, size_t i0, size_t i1, size_t j0,
                                                    size_t j1) {
  size_t j = j0;
  for (; j + 16 <= j1; j += 16) {
    size_t i = i0;
    for (; i + 6 <= i1; i += 6) micro_avx2<6>(g, i, j);
    switch (i1 - i) {
      case 5:
        micro_avx2<5>(g, i, j);
        break;
      case 4:
        micro_avx2<4>(g, i, j);
        break;
      case 3:
        micro_avx2<3>(g, i, j);
        break;
      case 2:
        micro_avx2<2>(g, i, j);
        break;
      case 1:
        micro_avx2<1>(g, i, j);
        break;
      default:
        break;
    }
  }
  if (j < j1) tail_avx2(g, i0, i1, j, j1);
}

template <int R>
__attribute__((target("avx512f,fma"), always_inline)) inline void micro_avx512(const Args& g,
                                                                               size_t i, size_t j,
                                                                               __mmask16 m0,
                                                                               __mmask16 m1) {
  __m512 c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    float* c = g.c + (i + r) * g.ldc + j;
    c0[r] = g.accumulate ? _mm512_maskz_loadu_ps(m0, c) : _mm512_setzero_ps();
    c1[r] = g.accumulate ? _mm512_maskz_loadu_ps(m1, c + 16) : _mm512_setzero_ps();
  }
  const float* a = g.a + i * g.lda;
  const float* b = g.b + j;
  for (size_t k = 0; k < g.k; ++k) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + k * g.ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + k * g.ldb + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * g.lda + k]);
      c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* c = g.c + (i + r) * g.ldc + j;
    _mm512_mask_storeu_ps(c, m0, c0[r]);
    _mm512_mask_storeu_ps(c + 16, m1, c1[r]);
  }
}

__attribute__((target("avx512f,fma"))) void block_avx512(const Args& g, size_t i0, size_t i1,
                                                         size_t j0, size_t j1) {
  for (size_t j = j0; j < j1; j += 32) {
    const size_t w = std::min<size_t>(32, j1 - j);
    const __mmask16 m0 = w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1);
    const __mmask16 m1 = w >= 32 ? __mmask16(0xFFFF) : w > 16 ? __mmask16((1u << (w - 16)) - 1) : 0;
    size_t i = i0;
    for (; i + 6 <= i1; i += 6) micro_avx512<6>(g, i, j, m0, m1);
    switch (i1 - i) {
      case 5:
        micro_avx512<5>(g, i, j, m0, m1);
        break;
      case 4:
        micro_avx512<4>(g, i, j, m0, m1);
        break;
      case 3:
        micro_avx512<3>(g, i, j, m0, m1);
        break;
      case 2:
        micro_avx512<2>(g, i, j, m0, m1);
        break;
      case 1:
        micro_avx512<1>(g, i, j, m0, m1);
        break;
      default:
        break;
    }
  }
}
#endif

struct Kernel {
  BlockFn fn;
  const char* name;
};

Kernel pick_kernel() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {block_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {block_avx2, "avx2"};
#endif
  return {block_scalar, "scalar"};
}

const Kernel& kernel() {
  static const Kernel k = pick_kernel();
  return k;
}

}  // namespace

const char* gemm_kernel_name() {
  return kernel().name;
}

void gemm(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b, size_t ldb,
          float* c, size_t ldc, bool accumulate, bool parallel) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate)
      for (size_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  const Args g{m, n, k, a, lda, b, ldb, c, ldc, accumulate};
  constexpr size_t kRowTile = 48, kColTile = 256;
  const size_t row_tiles = (m + kRowTile - 1) / kRowTile, col_tiles = (n + kColTile - 1) / kColTile;
  const BlockFn fn = kernel().fn;
  auto run = [&](size_t begin, size_t end) {
    for (size_t t = begin; t < end; ++t) {
      const size_t ri = t / col_tiles, ci = t % col_tiles;
      fn(g, ri * kRowTile, std::min(m, (ri + 1) * kRowTile), ci * kColTile,
         std::min(n, (ci + 1) * kColTile));
    }
  };
  const size_t tiles = row_tiles * col_tiles;
  // Below about a million multiply-adds a parallel region costs more than it saves (and, on a
  // machine whose cores are busy, waits for a second core); the bits are the same either way.
  constexpr double kParallelWork = 1 << 20;
  if (parallel && tiles > 1 && double(m) * double(n) * double(k) >= kParallelWork) {
    parallel_for(tiles, 1, [&](size_t b, size_t e) { run(b, e); });
  } else {
    run(0, tiles);
  }
}

void gemm(size_t m, size_t n, size_t k, const double* a, size_t lda, const double* b, size_t ldb,
          double* c, size_t ldc, bool accumulate, bool /*parallel*/) {
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < n; ++j) {
      double acc = accumulate ? c[i * ldc + j] : 0.0;
      for (size_t p = 0; p < k; ++p) acc = std::fma(a[i * lda + p], b[p * ldb + j], acc);
      c[i * ldc + j] = acc;
    }
  }
}

}  // namespace alloy::lmc::detail
