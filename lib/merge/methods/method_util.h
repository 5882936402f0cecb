// Private helpers shared by the merge methods (lib/method_*.cpp, lib/merge/methods/sparsify.cpp).
//
// Every method reproduces mergekit's torch arithmetic in the compute dtype D: each operation is
// done in float32 and its result rounded to D (rnd), and every scalar parameter is rounded to
// float32 then to D before use (wD). See docs/methods.md, "Rounding chains".
//
// Element loops are written once as templates over a rounding functor (RoundF32, RoundBF16,
// RoundF16) and instantiated through with_rounding(), the one dispatch point on D, so that the
// inner loops have no branch on the dtype and vectorise.
//
// Scratch memory: methods that need whole-tensor temporaries (the sparsification masks, one bit per
// element and model) take them from thread_local pools that grow to the largest tensor seen and are
// reused for every later tensor, so a merge allocates them once, not once per tensor. The executor
// calls merge() from one thread, so there is one pool in practice.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/merge/merge_method.h"
#include "alloy/core/parallel.h"

// Bit-exactness needs every float operation rounded on its own: no fused multiply-add. GCC
// contracts a * b + c by default even in ISO mode wherever the target has FMA, so CMakeLists.txt
// passes -ffp-contract=off; clang is told here as well.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

// An element kernel compiled for AVX-512, AVX2 and the baseline, the clone chosen at load time by
// the CPU (GCC/clang function multiversioning). Every clone does the same float32 operations in
// the same order (no contraction, above), so all give the same bits, in 16, 8 or 4 lanes.
#define ALLOY_ELEMENT_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
// The same for kernels on 64-bit integer lanes: their AVX-512 clone is x86-64-v4 (AVX-512 F, CD,
// BW, DQ, VL), since the 64-bit multiply (vpmullq) is AVX-512DQ; with F alone GCC builds it from
// three 32-bit multiplies (the DARE draws: 2.4x slower).
#define ALLOY_INTEGER_KERNEL __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
// And for kernels that read or write bf16 bits (ChunkedMerge::merge_chunk_bf16): 16-bit lanes in
// 512-bit registers need AVX-512BW; with F alone GCC ran the whole loop in 256-bit vectors.
#define ALLOY_BF16_BITS_KERNEL __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))

namespace alloy::detail {

// rnd() for each compute dtype, and wD(): a double parameter as torch sees it in dtype D
// (double -> float32 -> D; torch 1.13 rounds a Python scalar to the tensor's dtype).
struct RoundF32 {
  static constexpr DType dtype = DType::F32;
  float operator()(float x) const { return x; }
  float param(double v) const { return static_cast<float>(v); }
};
struct RoundBF16 {
  static constexpr DType dtype = DType::BF16;
  // In 32-bit lanes (alloy/core/dtype.h), inlined into the element kernels' clones.
  [[gnu::always_inline]] float operator()(float x) const { return round_to_bf16(x); }
  float param(double v) const { return round_to(DType::BF16, static_cast<float>(v)); }
};
struct RoundF16 {
  static constexpr DType dtype = DType::F16;
  [[gnu::always_inline]] float operator()(float x) const { return round_to_f16(x); }
  float param(double v) const { return round_to(DType::F16, static_cast<float>(v)); }
};

// Calls fn(rounder) with the functor of `dtype`. Compute dtypes other than BF16 and F16 compute in
// float32 (F64 included: alloy's buffers are float32; see docs/methods.md).
template <class Fn>
decltype(auto) with_rounding(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::BF16:
      return fn(RoundBF16{});
    case DType::F16:
      return fn(RoundF16{});
    default:
      return fn(RoundF32{});
  }
}

// A runtime rnd() for scalar code outside the element loops.
struct Rounder {
  DType dtype;
  float operator()(float x) const { return round_to(dtype, x); }
  float param(double value) const { return round_to(dtype, static_cast<float>(value)); }
};

// A resolved per-model parameter, or `fallback` when unset.
inline double source_param(const MergeSource& source, const std::string& name, double fallback) {
  const auto it = source.params.find(name);
  return it == source.params.end() ? fallback : it->second;
}

// A required per-model parameter; throws kRecipe naming the tensor and the model when unset.
double require_source_param(const MergeContext& ctx, const MergeSource& source,
                            const std::string& name);

// A method-level parameter, or `fallback` when unset.
inline double method_param(const MergeContext& ctx, const std::string& name, double fallback) {
  const auto it = ctx.params.find(name);
  return it == ctx.params.end() ? fallback : it->second;
}
inline bool method_flag(const MergeContext& ctx, const std::string& name, bool fallback) {
  return method_param(ctx, name, fallback ? 1.0 : 0.0) != 0.0;
}

// Throws Error(kRecipe) "tensor 'NAME': <method>: <what>".
[[noreturn]] void fail_recipe(const MergeContext& ctx, const char* method, const std::string& what);
// Throws Error(kNonFinite) naming the tensor and the method; `why` explains the likely cause.
[[noreturn]] void fail_non_finite(const MergeContext& ctx, const char* method, size_t count,
                                  const std::string& why);

// Runs body(begin, end) over fixed chunks of `grain` items of [0, n) in parallel; body writes the
// outputs of its items and returns how many non-finite values it wrote. Throws kNonFinite naming
// the tensor if any: the check costs no extra pass over the output.
template <class Body>
void parallel_for_checked(const MergeContext& ctx, const char* method, size_t n, Body&& body,
                          size_t grain = kDefaultGrain) {
  const size_t bad =
      parallel_reduce(n, grain, size_t{0}, body, [](size_t a, size_t b) { return a + b; });
  if (bad > 0) fail_non_finite(ctx, method, bad, "check the weights and the inputs");
}
// x with its bits ANDed with `mask` (all ones: x; zero: +0).
inline float and_bits(float x, uint32_t mask) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u &= mask;
  std::memcpy(&x, &u, 4);
  return x;
}
// x where keep is true, else +0, without a branch (random masks defeat branch prediction).
inline float keep_or_zero(float x, bool keep) { return and_bits(x, 0u - static_cast<uint32_t>(keep)); }
// kLaneBit[j] = 1 << j: a table instead of the shift lets loops over 32 lanes that test or set
// lane j's bit vectorise without per-lane shifts (SSE2 has none).
inline constexpr uint32_t kLaneBit[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};
// out[j] = all ones where bit start + j of `bits` is set, else 0, for j < count: the mask of a
// block as words, 32 at a time from one shifted 32-bit piece, tested against kLaneBit.
inline void expand_mask_bits(const uint64_t* bits, size_t start, size_t count, uint32_t* out) {
  for (size_t j = 0; j < count;) {
    const size_t i = start + j;
    const unsigned offset = static_cast<unsigned>(i & 31);
    const uint32_t piece = static_cast<uint32_t>(bits[i >> 6] >> (i & 32)) >> offset;
    const size_t take = std::min<size_t>(32 - offset, count - j);
    for (size_t t = 0; t < take; ++t) out[j + t] = 0u - static_cast<uint32_t>((piece & kLaneBit[t]) != 0);
    j += take;
  }
}
inline size_t is_non_finite(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (u & 0x7F800000u) == 0x7F800000u;
}
// How many of v[0, n) are NaN or infinite, for a chunk inside an element kernel (serial; the
// whole-buffer count is alloy::count_non_finite, alloy/core/kernels.h, in parallel). Counted in
// 32-bit lanes a block at a time, since a size_t count made the vectorised loop widen every lane
// to 64 bits. Always inlined, so that the element kernels' clones (ALLOY_ELEMENT_KERNEL) compile it
// for their instruction set.
[[gnu::always_inline]] inline size_t chunk_non_finite(const float* v, size_t n) {
  constexpr size_t kCountBlock = 4096;
  size_t bad = 0;
  for (size_t b0 = 0; b0 < n; b0 += kCountBlock) {
    const size_t end = std::min(n, b0 + kCountBlock);
    uint32_t block_bad = 0;
    for (size_t i = b0; i < end; ++i) block_bad += static_cast<uint32_t>(is_non_finite(v[i]));
    bad += block_bad;
  }
  return bad;
}

// Element j of a source row for the element kernels, as float32: a float32 row's value, or a bf16
// row's bits widened (exact; ChunkedMerge::merge_chunk_bf16).
[[gnu::always_inline]] inline float source_value(const float* row, size_t j) { return row[j]; }
[[gnu::always_inline]] inline float source_value(const uint16_t* row, size_t j) {
  return bits_to_float(uint32_t(row[j]) << 16);
}

// Stores n merged values, each already rounded by RoundBF16, as bf16 bits: the high halves, since
// the low halves are zero (a NaN is 0x7FC00000, whose high half is f32_to_bf16's NaN).
[[gnu::always_inline]] inline void store_rounded_bf16(const float* v, size_t n, uint16_t* out) {
  for (size_t j = 0; j < n; ++j) out[j] = static_cast<uint16_t>(float_to_bits(v[j]) >> 16);
}

// sum of term(j) for j in [0, len) in double, with four interleaved accumulators (a fixed order,
// so the result is deterministic; the lanes hide the latency of the additions).
template <class Term>
double lane_sum(size_t len, Term term) {
  double lane[4] = {0, 0, 0, 0};
  size_t j = 0;
  for (; j + 4 <= len; j += 4) {
    for (size_t k = 0; k < 4; ++k) lane[k] += term(j + k);
  }
  for (size_t k = 0; j < len; ++j, ++k) lane[k] += term(j);
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

// Index of the base source; throws kRecipe when there is none.
size_t require_base(const MergeContext& ctx, const char* method);

// The sources other than the base, in source order.
std::vector<size_t> non_base_sources(const MergeContext& ctx);

// Copies source `index` to out (methods that return one input unchanged, as mergekit does when a
// tensor has a single source).
void copy_source(const MergeContext& ctx, size_t index, float* out);

// Counter-based random numbers for the random masks (DARE, DELLA): splitmix64's finaliser applied
// to stream + index * golden-ratio constant. A value depends only on (stream, index), never on the
// thread that draws it or the order of the draws.
// The finaliser, in place, on a uint64_t or lane by lane on a GCC vector of them (the DARE draws
// eight at a time, keep_words.cpp; by reference, so that no 512-bit vector crosses a call's ABI).
template <class U>
[[gnu::always_inline]] inline void mix_in_place(U& z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
}
inline uint64_t mix_bits(uint64_t z) {
  mix_in_place(z);
  return z;
}
// The step between consecutive indices' arguments to the finaliser (2^64 / the golden ratio).
constexpr uint64_t kDrawStep = 0x9E3779B97F4A7C15ull;
// 53 random bits for element `index` of stream `stream`.
inline uint64_t random53(uint64_t stream, uint64_t index) {
  return mix_bits(stream + (index + 1) * kDrawStep) >> 11;
}
// Uniform in [0, 1) with 53 random bits, for element `index` of stream `stream`.
inline double uniform01(uint64_t stream, uint64_t index) {
  return static_cast<double>(random53(stream, index)) * 0x1p-53;
}
// uniform01(stream, i) < p exactly when random53(stream, i) < uniform01_below(p): the scaling by
// 2^-53 is exact, so the test is random53 < p * 2^53 on the reals, i.e. < ceil(p * 2^53) on
// integers. An integer compare vectorises where the 64-bit integer-to-double conversion has no
// instruction (AVX2, AVX-512F without DQ).
inline uint64_t uniform01_below(double p) {
  if (!(p > 0)) return 0;
  return p >= 1 ? uint64_t{1} << 53 : static_cast<uint64_t>(std::ceil(std::ldexp(p, 53)));
}

// The method objects; the registry lists them.
const MergeMethod& linear_method();
const MergeMethod& slerp_method();
const MergeMethod& nuslerp_method();
const MergeMethod& passthrough_method();
const MergeMethod& model_stock_method();
const MergeMethod& sce_method();
const MergeMethod& karcher_method();
const MergeMethod& multislerp_method();
const MergeMethod& arcee_fusion_method();
const MergeMethod& nearswap_method();
const MergeMethod& ram_method();
std::vector<const MergeMethod*> task_arithmetic_family();

}  // namespace alloy::detail
