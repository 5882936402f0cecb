// alloy/core/kernels.h: element-wise and reduction kernels on float32 buffers.
//
// All are parallel (alloy/core/parallel.h) and vectorisable. Reductions accumulate in double with a
// fixed chunking and a fixed number of lanes per chunk, then combine chunks in order: the result is
// bit-identical for any thread count (tests/core/test_kernels.cpp checks 1 vs 2 threads).
#pragma once

#include <cstddef>

namespace alloy {

// y[i] = a * x[i] + b * y[i]   (float32 arithmetic, one rounding per operation)
void axpby(size_t n, float a, const float* x, float b, float* y);
// y[i] += a * x[i]
void axpy(size_t n, float a, const float* x, float* y);
// out[i] = sum_k weights[k] * inputs[k][i], accumulated in float32 in input order k = 0..count-1.
void weighted_sum(size_t n, size_t count, const float* const* inputs, const float* weights,
                  float* out);
// out[i] = a[i] - b[i]
void subtract(size_t n, const float* a, const float* b, float* out);
// x[i] *= s
void scale(size_t n, float s, float* x);

// Deterministic double-precision reductions.
double dot(size_t n, const float* a, const float* b);
double sum_squares(size_t n, const float* a);
double norm2(size_t n, const float* a);  // sqrt(sum_squares)
double sum(size_t n, const float* a);
// Dot of differences without materialising them: sum_i (a[i]-c[i]) * (b[i]-c[i]).
double dot_centered(size_t n, const float* a, const float* b, const float* c);
// Count of elements that are NaN or +-Inf.
size_t count_non_finite(size_t n, const float* a);

}  // namespace alloy
