// slerp: spherical linear interpolation between the base model and one other model (Shoemake 1985,
// "Animating rotation with quaternion curves"; mergekit/merge_methods/slerp.py). On the flattened
// tensors a (base) and b:
//   dot = <a/|a|, b/|b|>      (a vector is normalised only when its norm exceeds 1e-8)
//   |dot| > 0.9995:  out = rnd(f32(1 - t) * a + f32(t) * b)          (nearly colinear: lerp)
//   else:            theta = acos(dot), s0 = f32(sin((1 - t) theta) / sin theta),
//                    s1 = f32(sin(t theta) / sin theta),  out = rnd(s0 * a + s1 * b)
// mergekit computes this in numpy float32 even for bf16 inputs. alloy computes the reductions and
// the trigonometry in double, rounds the two coefficients to float32 and does the element
// arithmetic in float32: within 1 ulp of mergekit (the reduction order and libm differ). t = 0 and
// t = 1 give the endpoints exactly (s0, s1 are exactly 1 and 0).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "alloy/core/parallel.h"
#include "method_util.h"
#include "slerp_sums_lanes.h"
#include "weighted_sum_lanes.h"

namespace alloy::detail {
namespace {

// The element step of slerp: out = rnd(s0 * a + s1 * b), on float32 rows or bf16 rows
// (source_value).
template <class In>
struct Blend {
  const In* a;
  const In* b;
  float s0, s1;
};

// Returns the number of non-finite outputs. bf16 outputs (Out = uint16_t) are blended into a
// float32 block on the stack and stored from it.
template <class R, class In, class Out>
[[gnu::always_inline]] inline size_t blend_elements(const Blend<In>& blend, size_t len, Out* out) {
  constexpr size_t kBlock = 512;
  const float s0 = blend.s0, s1 = blend.s1;
  const R rnd;
  size_t bad = 0;
  float merged[kBlock];
  for (size_t b0 = 0; b0 < len; b0 += kBlock) {
    const size_t block = std::min(kBlock, len - b0);
    const In* a = blend.a + b0;
    const In* b = blend.b + b0;
    float* o = merged;
    if constexpr (std::is_same_v<Out, float>) o = out + b0;
    for (size_t i = 0; i < block; ++i) {
      const float first = s0 * source_value(a, i);
      const float second = s1 * source_value(b, i);
      o[i] = rnd(first + second);
    }
    bad += chunk_non_finite(o, block);
    if constexpr (std::is_same_v<Out, uint16_t>) store_rounded_bf16(o, block, out + b0);
  }
  return bad;
}

// blend_elements per compute dtype, one clone per instruction set (ALLOY_ELEMENT_KERNEL).
ALLOY_ELEMENT_KERNEL size_t blend_f32(const Blend<float>& blend, size_t len, float* out) {
  return blend_elements<RoundF32>(blend, len, out);
}
ALLOY_ELEMENT_KERNEL size_t blend_bf16(const Blend<float>& blend, size_t len, float* out) {
  return blend_elements<RoundBF16>(blend, len, out);
}
ALLOY_ELEMENT_KERNEL size_t blend_f16(const Blend<float>& blend, size_t len, float* out) {
  return blend_elements<RoundF16>(blend, len, out);
}
// bf16 rows in, bf16 bits out (ChunkedMerge::merge_chunk_bf16).
ALLOY_BF16_BITS_KERNEL size_t blend_bf16_bits(const Blend<uint16_t>& blend, size_t len, uint16_t* out) {
  return blend_elements<RoundBF16>(blend, len, out);
}

// The three sums of one chunk, |x|^2, |y|^2 and <x, y>, in one pass over x and y. Each keeps
// lane_sum's four lanes and order (method_util.h: element j into lane j % 4, the tail likewise,
// then (l0 + l1) + (l2 + l3)), so the doubles are those of three separate lane_sums; in one loop
// the three chains of additions run side by side where three passes each waited on their own.
// Written with vector types: GCC pairs the three scalar forms badly (slower than three passes).
typedef float Floats4 __attribute__((vector_size(16)));
typedef double Doubles4 __attribute__((vector_size(32)));
typedef uint32_t Words4 __attribute__((vector_size(16)));

// Elements [j, j + 4) of a row as four float lanes (out-parameter: a vector return value changes
// the ABI between the clones).
[[gnu::always_inline]] inline void four_values(const float* row, size_t j, Floats4& out) {
  std::memcpy(&out, row + j, sizeof out);
}
[[gnu::always_inline]] inline void four_values(const uint16_t* row, size_t j, Floats4& out) {
  const Words4 bits = {row[j], row[j + 1], row[j + 2], row[j + 3]};
  out = Floats4(bits << 16);  // a vector cast keeps the bits
}

template <class In>
[[gnu::always_inline]] inline void slerp_sums_of(const In* x, const In* y, size_t len, double* partial) {
  Doubles4 xx = {0, 0, 0, 0}, yy = {0, 0, 0, 0}, xy = {0, 0, 0, 0};
  size_t j = 0;
  for (; j + 4 <= len; j += 4) {
    Floats4 xf, yf;
    four_values(x, j, xf);
    four_values(y, j, yf);
    const Doubles4 a = __builtin_convertvector(xf, Doubles4);
    const Doubles4 b = __builtin_convertvector(yf, Doubles4);
    xx += a * a;
    yy += b * b;
    xy += a * b;
  }
  for (size_t k = 0; j < len; ++j, ++k) {
    const double a = source_value(x, j), b = source_value(y, j);
    xx[k] += a * a;
    yy[k] += b * b;
    xy[k] += a * b;
  }
  partial[0] = (xx[0] + xx[1]) + (xx[2] + xx[3]);
  partial[1] = (yy[0] + yy[1]) + (yy[2] + yy[3]);
  partial[2] = (xy[0] + xy[1]) + (xy[2] + xy[3]);
}

// The sums of two chunks of len elements at once (len % 4 == 0): chunk a's four lanes in lanes 0-3
// of eight-lane vectors, chunk b's in lanes 4-7. Each lane takes the additions it takes in
// slerp_sums_of, in the same order, so the doubles are the same; but the two chunks' chains of
// additions run side by side in one vector, where one chunk alone left the adder waiting on each
// addition (the sums cost twice a bf16 blend's time).
typedef float Floats8 __attribute__((vector_size(32)));
typedef double Doubles8 __attribute__((vector_size(64)));
typedef uint16_t Halves8 __attribute__((vector_size(16)));
typedef uint16_t Halves16 __attribute__((vector_size(32)));
typedef uint64_t Longs2 __attribute__((vector_size(16)));

// Elements [j, j + 4) of row a, then of row b, as eight double lanes (out-parameter, as
// four_values).
[[gnu::always_inline]] inline void four_and_four(const uint16_t* a, const uint16_t* b, size_t j,
                                                 Doubles8& out) {
  uint64_t low, high;  // four bf16 values each
  std::memcpy(&low, a + j, 8);
  std::memcpy(&high, b + j, 8);
  const Longs2 both = {low, high};
  // A bf16 value is the high half of its float32: each value goes above a zero half. (A cast
  // between GCC vector types of one size keeps the bits; a reference cast would break the aliasing
  // rules, and GCC 12 warned that it read the vector uninitialised.)
  const Halves8 values = (Halves8)both, zeros = {};
  const Halves16 halves =
      __builtin_shufflevector(zeros, values, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  out = __builtin_convertvector((Floats8)halves, Doubles8);
}

ALLOY_BF16_BITS_KERNEL void slerp_pair_sums_bf16_bits(const uint16_t* xa, const uint16_t* ya,
                                                      const uint16_t* xb, const uint16_t* yb,
                                                      size_t len, double* partial_a,
                                                      double* partial_b) {
  Doubles8 xx = {}, yy = {}, xy = {};
  for (size_t j = 0; j + 4 <= len; j += 4) {
    Doubles8 a, b;
    four_and_four(xa, xb, j, a);
    four_and_four(ya, yb, j, b);
    xx += a * a;
    yy += b * b;
    xy += a * b;
  }
  partial_a[0] = (xx[0] + xx[1]) + (xx[2] + xx[3]);
  partial_a[1] = (yy[0] + yy[1]) + (yy[2] + yy[3]);
  partial_a[2] = (xy[0] + xy[1]) + (xy[2] + xy[3]);
  partial_b[0] = (xx[4] + xx[5]) + (xx[6] + xx[7]);
  partial_b[1] = (yy[4] + yy[5]) + (yy[6] + yy[7]);
  partial_b[2] = (xy[4] + xy[5]) + (xy[6] + xy[7]);
}

ALLOY_ELEMENT_KERNEL void slerp_sums(const float* x, const float* y, size_t len, double* partial) {
  slerp_sums_of(x, y, len, partial);
}
ALLOY_BF16_BITS_KERNEL void slerp_sums_bf16_bits(const uint16_t* x, const uint16_t* y, size_t len, double* partial) {
  slerp_sums_of(x, y, len, partial);
}

// The chunked form: the sums |a|^2, |b|^2 and <a, b> per chunk (three interleaved-lane sums in
// double, combined in chunk order: the same bits for any thread count), then the blend.
template <class R>
class SlerpChunk final : public ChunkedMerge {
 public:
  SlerpChunk(size_t base, double t) : base_(base), t_(t) {}
  size_t sum_count() const override { return 3; }
  void chunk_sums(const float* const* sources, size_t len, double* partial) const override {
    slerp_sums(sources[base_], sources[1 - base_], len, partial);
  }
  bool merges_bf16() const override { return std::is_same_v<R, RoundBF16>; }
  void chunk_sums_bf16(const uint16_t* const* sources, size_t len, double* partial) const override {
    if (sums_lanes_)
      return slerp_sums_bf16_avx512(sources[base_], sources[1 - base_], len, partial);
    slerp_sums_bf16_bits(sources[base_], sources[1 - base_], len, partial);
  }
  void chunk_pair_sums_bf16(const uint16_t* const* a, const uint16_t* const* b, size_t len,
                            double* partial_a, double* partial_b) const override {
    if (sums_lanes_) {
      return slerp_pair_sums_bf16_avx512(a[base_], a[1 - base_], b[base_], b[1 - base_], len,
                                         partial_a, partial_b);
    }
    if (len % 4 != 0) return ChunkedMerge::chunk_pair_sums_bf16(a, b, len, partial_a, partial_b);
    slerp_pair_sums_bf16_bits(a[base_], a[1 - base_], b[base_], b[1 - base_], len, partial_a,
                              partial_b);
  }
  void set_sums(const double* sums) override {
    const double norm_a = std::sqrt(sums[0]), norm_b = std::sqrt(sums[1]);
    double dot = sums[2];
    if (norm_a > 1e-8) dot /= norm_a;
    if (norm_b > 1e-8) dot /= norm_b;
    if (std::fabs(dot) > 0.9995) {
      s0_ = static_cast<float>(1.0 - t_);  // nearly colinear: a plain lerp of the raw tensors
      s1_ = static_cast<float>(t_);
    } else {
      const double theta = std::acos(dot);
      const double sin_theta = std::sin(theta);
      const double theta_t = theta * t_;
      s0_ = static_cast<float>(std::sin(theta - theta_t) / sin_theta);
      s1_ = static_cast<float>(std::sin(theta_t) / sin_theta);
    }
  }
  size_t merge_chunk(const float* const* sources, size_t, size_t len, float* out) const override {
    const Blend<float> blend{sources[base_], sources[1 - base_], s0_, s1_};
    if constexpr (std::is_same_v<R, RoundBF16>) return blend_bf16(blend, len, out);
    if constexpr (std::is_same_v<R, RoundF16>) return blend_f16(blend, len, out);
    return blend_f32(blend, len, out);
  }
  size_t merge_chunk_bf16(const uint16_t* const* sources, size_t, size_t len, uint16_t* out) const override {
    if constexpr (std::is_same_v<R, RoundBF16>) {
      if (lanes_)
        return slerp_blend_bf16_avx512(sources[base_], sources[1 - base_], s0_, s1_, len, out);
      return blend_bf16_bits(Blend<uint16_t>{sources[base_], sources[1 - base_], s0_, s1_}, len, out);
    } else {
      return ChunkedMerge::merge_chunk_bf16(sources, 0, len, out);
    }
  }

 private:
  size_t base_;
  double t_;
  float s0_ = 0.0f, s1_ = 0.0f;
  bool lanes_ = can_weighted_sum_bf16_avx512(2);  // bf16 bits through weighted_sum_lanes.h's kernel
  bool sums_lanes_ = can_slerp_sums_bf16_avx512();  // and the sums through slerp_sums_lanes.h's
};

// A lone tensor passes through unchanged, as in mergekit.
class PassChunk final : public ChunkedMerge {
 public:
  size_t merge_chunk(const float* const* sources, size_t, size_t len, float* out) const override {
    if (sources[0] != out) std::memcpy(out, sources[0], len * sizeof(float));
    return chunk_non_finite(out, len);
  }
};

class SlerpMethod final : public MergeMethod {
 public:
  std::string_view name() const override { return "slerp"; }
  std::vector<MethodParameter> parameters() const override {
    // t interpolates between the base (0) and the other model (1); mergekit extrapolates silently.
    return {{"t", false, std::nullopt, true, 0.0, 1.0}};
  }
  bool requires_base_model() const override { return true; }
  // The sums read everything first; the output pass is element-wise.
  bool merges_in_place() const override { return true; }
  void merge(const MergeContext& ctx, float* out) const override {
    if (ctx.sources.size() == 1) {  // mergekit passes a lone tensor through
      copy_source(ctx, 0, out);
      return;
    }
    run_chunked(*chunked(ctx), ctx, "slerp", out);
  }
  std::unique_ptr<ChunkedMerge> chunked(const MergeContext& ctx) const override {
    if (ctx.sources.size() == 1) return std::make_unique<PassChunk>();
    const size_t base = require_base(ctx, "slerp");
    if (ctx.sources.size() != 2) {
      fail_recipe(ctx, "slerp",
                  "merges exactly two models, the base and one other; got " +
                      std::to_string(ctx.sources.size()));
    }
    const auto t_it = ctx.params.find("t");
    if (t_it == ctx.params.end()) fail_recipe(ctx, "slerp", "no value of 't'");
    const double t = t_it->second;
    return with_rounding(ctx.compute_dtype, [&](auto rnd) -> std::unique_ptr<ChunkedMerge> {
      return std::make_unique<SlerpChunk<decltype(rnd)>>(base, t);
    });
  }
};

}  // namespace

const MergeMethod& slerp_method() {
  static const SlerpMethod method;
  return method;
}

}  // namespace alloy::detail
