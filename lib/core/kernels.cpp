// Element-wise and reduction kernels. Reductions use a fixed chunking (kReduceGrain) and a fixed
// number of double accumulator lanes inside each chunk, then combine chunks in order: the bits of
// every result are independent of the thread count, and the inner loops still vectorise.
#include "alloy/core/kernels.h"

#include <cmath>

#include "alloy/core/parallel.h"

namespace alloy {
namespace {

constexpr size_t kReduceGrain = 1 << 16;
constexpr int kLanes = 8;

// Sums term(i) over [begin, end) with kLanes interleaved accumulators: lane k takes the elements
// i with (i - begin) % kLanes == k, and the lanes are added in order at the end. The lane loop is
// SLP-vectorised (cvtps2pd / mulpd / addpd) without changing any rounding. The term lambdas capture
// their pointers by value: captured by reference, GCC reaches them through the parallel_for context
// and leaves the loop scalar (checked with -fopt-info-vec and objdump).
template <class Term>
double lane_sum(size_t begin, size_t end, Term term) {
  double lanes[kLanes] = {};
  size_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += term(i + k);
  }
  for (int k = 0; i < end; ++i, ++k) lanes[k] += term(i);
  double total = 0;
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

template <class Term>
double deterministic_sum(size_t n, Term term) {
  return parallel_reduce(
      n, kReduceGrain, 0.0, [&](size_t b, size_t e) { return lane_sum(b, e, term); },
      [](double acc, double part) { return acc + part; });
}

}  // namespace

void axpby(size_t n, float a, const float* x, float b, float* y) {
  parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) y[i] = a * x[i] + b * y[i];
  });
}

void axpy(size_t n, float a, const float* x, float* y) {
  parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) y[i] += a * x[i];
  });
}

void weighted_sum(size_t n, size_t count, const float* const* inputs, const float* weights, float* out) {
  parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) out[i] = 0.0f;
    for (size_t k = 0; k < count; ++k) {
      const float w = weights[k];
      const float* in = inputs[k];
      for (size_t i = lo; i < hi; ++i) out[i] += w * in[i];
    }
  });
}

void subtract(size_t n, const float* a, const float* b, float* out) {
  parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) out[i] = a[i] - b[i];
  });
}

void scale(size_t n, float s, float* x) {
  parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) x[i] *= s;
  });
}

double dot(size_t n, const float* a, const float* b) {
  return deterministic_sum(n, [=](size_t i) { return double(a[i]) * double(b[i]); });
}

double sum_squares(size_t n, const float* a) {
  return deterministic_sum(n, [=](size_t i) { return double(a[i]) * double(a[i]); });
}

double norm2(size_t n, const float* a) { return std::sqrt(sum_squares(n, a)); }

double sum(size_t n, const float* a) {
  return deterministic_sum(n, [=](size_t i) { return double(a[i]); });
}

double dot_centered(size_t n, const float* a, const float* b, const float* c) {
  return deterministic_sum(n, [=](size_t i) {
    return (double(a[i]) - double(c[i])) * (double(b[i]) - double(c[i]));
  });
}

size_t count_non_finite(size_t n, const float* a) {
  return parallel_reduce(
      n, kReduceGrain, size_t{0},
      [&](size_t b, size_t e) {
        size_t bad = 0;
        for (size_t i = b; i < e; ++i) bad += !std::isfinite(a[i]);
        return bad;
      },
      [](size_t acc, size_t part) { return acc + part; });
}

}  // namespace alloy
