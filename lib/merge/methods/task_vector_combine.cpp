// The task-arithmetic combine of bf16 rows in AVX-512 registers: see task_vector_combine.h.
//
// Why the roundings in the middle may leave out the NaN test. round_to_bf16 (alloy/core/dtype.h)
// is (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000 on the bits u, except that a NaN becomes
// 0x7FC00000. Without the exception a value that is not a NaN rounds the same, and a NaN whose low
// 16 bits are zero is left as it is (the addition cannot carry past bit 15): still a NaN, only
// perhaps of another sign or payload. Every NaN in this kernel has zero low halves (bf16 inputs
// widened, default NaNs 0xFFC00000, results of the roundings, operands' NaNs passed through), so
// each value is a NaN exactly where the reference's is, and every value that is not a NaN has the
// reference's bits. Comparisons, masks and sums cannot tell NaNs apart, so only two places need
// the reference's NaN: the magnitude key of the task vector rnd(x - base), which the mask rule
// compares (a NaN input's payload would change it: every NaN's key is at least 0x7FC00000, the
// reference's, and no other key is, so the key is clamped to it), and the output.
#include "task_vector_combine.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "alloy/core/cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's _mm512_undefined_* initialise a variable from itself, and every shift or conversion
// that passes one warns "may be used uninitialized" where it is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "bf16_lanes.h"
#define ALLOY_COMBINE_AVX512 1
#endif

namespace alloy::detail {

#if ALLOY_COMBINE_AVX512
namespace {

using bf16_lanes::round_keeping_nan;  // see the top of the file
// Lanes `live` of a bf16 row, widened to float32 (exact); the others 0. kWhole: all 16.
template <bool kWhole>
ALLOY_V4 __m512 load_bf16(const uint16_t* row, __mmask16 live) {
  const __m256i bits = kWhole ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row))
                              : _mm256_maskz_loadu_epi16(live, row);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// The sign election and the divisor's zero use vfixupimmps, whose table maps each class of its
// operand (QNaN, SNaN, +-0, +1, -inf, +inf, negative, positive: one nibble each, in that order from
// the lowest) to a result (0 the first operand, 8 +0, 9 -1, 10 +1): one instruction where a compare
// into a mask register and a masked move take two. The kernel is bound by its vector instructions
// and by the latency of an element's chain (eight groups side by side ran 10-20% faster than four
// on the AMD Zen 5 it was measured on), not by its loads.
constexpr int kSignTable = static_cast<int>(0xA9A9AA99u);  // >= 0 (-0 too): +1; NaN, < 0: -1
constexpr int kZeroToOneTable = 0x00000A00;                // +-0: +1; else the first operand
ALLOY_V4 __m512 fixup(__m512 first, __m512 classified, int table) {
  return _mm512_fixupimm_ps(first, classified, _mm512_set1_epi32(table), 0);
}

// How a cut's ties compare within one call: the tie index is at or before the call's first entry
// (no tie of the call is before the cut: key > cut key), past its last (every tie is: key >= cut
// key), or inside it (the lane's offset decides). kExact: the cut lies among the NaNs' keys.
enum class TieTest : uint8_t { kNone, kAll, kByLane, kExact };

// A cut's test for one call: DeltaMask::Before's on the key, the bits of |delta|. For kNone and
// kAll it compares the delta's bits shifted left by one (the sign shifted out: key << 1, with no
// mask instruction) with `shifted`, the cut key shifted likewise (0xFFFFFFFF for the cut at rank
// 0, whose key 0xFFFFFFFF no entry reaches). kByLane and kExact compare keys, with a NaN's key
// clamped to the reference's (see before()).
struct CutLanes {
  __m512i shifted, key, limit;
  TieTest ties = TieTest::kNone;
};

// One model's mask rule and factors, as the kernel uses them.
struct ModelLanes {
  const uint64_t* bits = nullptr;  // explicit rule
  bool active = false, has_low = false, rescaled = false;
  // The first product of a kept delta (by the ratio when rescaled, else by the weight) takes the
  // mask in the same instruction: its factor is finite, so an entry the rule drops, +0 times the
  // factor, is a zero, which a zero-masked multiply gives (+0 where the reference may have -0:
  // every sum the value reaches starts from +0 or has its zero's sign made +1 by the sign table,
  // and a zero never agrees with the elected sign).
  bool masked_product = false;
  // The weight is a power of two or zero: the product by it is usually a bf16 value already, and
  // its rounding is left out wherever it would change nothing (round_where_needed).
  bool exact_weight = false;
  CutLanes high, low;  // implicit rule
  __m512 ratio, weight;
};

// Whether +0 * f is a zero (f finite): the drop of a masked entry then needs no instruction of its
// own.
bool masks_in_product(float f) {
  return std::isfinite(f);
}

// Whether f is zero or a normal power of two: products by it are exact but for underflows.
bool power_of_two_or_zero(float f) {
  const uint32_t u = float_to_bits(f) & 0x7FFFFFFFu;
  return u == 0 || ((u & 0x007FFFFFu) == 0 && u >= 0x00800000u && u < 0x7F800000u);
}

// round_keeping_nan(x), left out where every lane's low half is zero already (the rounding would
// then change nothing): one test in place of the rounding's four instructions, for the steps
// whose results are usually exact (a product by a power of two).
ALLOY_V4 __m512 round_where_needed(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  if (_mm512_test_epi32_mask(u, _mm512_set1_epi32(0xFFFF)) == 0) return x;
  return round_keeping_nan(x);
}

// The normalizing divisors of a call. With consensus and at most kTableModels models, the divisor
// of an element depends only on which models agree: table lane s holds it for the models of the
// bits of s (the weights of those models added in model order from +0, rounded, 0 made 1), so that
// one permute replaces the masked sums and their rounding. When every divisor is a normal power of
// two the table holds their reciprocals instead (exact), and the division becomes a
// multiplication, which rounds the same real quotient the same way.
constexpr size_t kTableModels = 4;
struct Divisors {
  bool in_table = false;    // consensus: look up the divisor by the agreeing models
  bool reciprocal = false;  // the values are reciprocals: multiply
  __m512 values;            // the table (in_table), else the plain divisor in every lane
};

// The lanes whose entries are before the cut: key > cut key, or a tie before its index.
ALLOY_V4 __mmask16 before(const CutLanes& cut, __m512 d, __m512i j) {
  const __m512i u = _mm512_castps_si512(d);
  if (cut.ties == TieTest::kNone)
    return _mm512_cmpgt_epu32_mask(_mm512_slli_epi32(u, 1), cut.shifted);
  if (cut.ties == TieTest::kAll)
    return _mm512_cmpge_epu32_mask(_mm512_slli_epi32(u, 1), cut.shifted);
  // Every NaN's key is at least 0x7FC00000, the reference's NaN's, and no other key is: clamped,
  // a NaN's key is the reference's whatever its payload. Only a cut at or above that key tells
  // the two apart (kExact), and only a cut inside the call needs the lanes' offsets.
  const __m512i key = _mm512_min_epu32(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                       _mm512_set1_epi32(0x7FC00000));
  return _mm512_cmpgt_epu32_mask(key, cut.key) |
         _mm512_mask_cmpeq_epu32_mask(_mm512_cmplt_epu32_mask(j, cut.limit), key, cut.key);
}

// The lanes whose entries the rule keeps, of entries first + j0 + t (t < lanes) of task vector
// delta; lane t's offset in the call is j (the tie limits are offsets from the call's first entry,
// as DeltaMask::Before's).
ALLOY_V4 __mmask16 kept_lanes(const ModelLanes& lane, __m512 d, __m512i j, size_t entry,
                              size_t lanes) {
  if (lane.bits != nullptr) {
    // (A full group always lies within the mask's words.)
    return static_cast<__mmask16>(bf16_lanes::mask_bits_at(lane.bits, entry, lanes));
  }
  __mmask16 kept = before(lane.high, d, j);
  if (lane.has_low) kept &= static_cast<__mmask16>(~before(lane.low, d, j));
  return kept;
}

// x * f where the mask keeps a lane, else +0 * f.
ALLOY_V4 __m512 masked_product(bool in_one, __mmask16 kept, __m512 x, __m512 f) {
  return in_one ? _mm512_maskz_mul_ps(kept, x, f) : _mm512_mul_ps(_mm512_maskz_mov_ps(kept, x), f);
}

// A cut's test for the call of entries [first, first + len).
__attribute__((target("arch=x86-64-v4"))) CutLanes cut_lanes(const RankCut& cut, size_t first,
                                                             size_t len) {
  const uint64_t limit = std::min<uint64_t>(cut.index > first ? cut.index - first : 0, len);
  CutLanes lanes;
  lanes.ties = limit == 0 ? TieTest::kNone : limit == len ? TieTest::kAll : TieTest::kByLane;
  if (cut.key >= 0x7FC00000u && cut.key != 0xFFFFFFFFu) lanes.ties = TieTest::kExact;
  lanes.shifted =
      _mm512_set1_epi32(static_cast<int>(cut.key == 0xFFFFFFFFu ? cut.key : cut.key << 1));
  lanes.key = _mm512_set1_epi32(static_cast<int>(cut.key));
  lanes.limit = _mm512_set1_epi32(static_cast<int>(limit));
  return lanes;
}

// Groups of 16 elements side by side (kWays of them, each its own dependency chain: one group's
// chain of roundings and its division are too long for the out-of-order window to overlap
// consecutive groups). Group g holds the elements j0 + 16 g + t, t < lanes[g] (all 16 when
// kWhole); j is the lanes' offsets from the call's first element for group 0. Returns how many
// outputs are NaN or infinite.
template <size_t kModels, size_t kWays, bool kWhole>
ALLOY_V4 size_t combine_groups(const ModelLanes* models, size_t count,
                               const TaskVectorCombine& options, const Divisors& divisors,
                               const uint16_t* base, const uint16_t* const* xs, size_t first,
                               size_t j0, const size_t* lanes, __m512i j, uint16_t* out) {
  const size_t n_models = kModels != 0 ? kModels : count;
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 live[kWays];
  __m512 b[kWays], v[kMaxCombineLanesModels][kWays], mixed[kWays], divisor[kWays];
#pragma GCC unroll 8
  for (size_t w = 0; w < kWays; ++w) {
    live[w] = static_cast<__mmask16>((1u << lanes[w]) - 1u);
    b[w] = load_bf16<kWhole>(base + j0 + 16 * w, live[w]);
  }
  for (size_t m = 0; m < n_models; ++m) {
    const ModelLanes& lane = models[m];
#pragma GCC unroll 8
    for (size_t w = 0; w < kWays; ++w) {
      const size_t at = j0 + 16 * w;
      __m512 d = round_keeping_nan(_mm512_sub_ps(load_bf16<kWhole>(xs[m] + at, live[w]), b[w]));
      __m512 product;
      if (!lane.active) {
        product = _mm512_mul_ps(d, lane.weight);
      } else {
        const __m512i jw = _mm512_add_epi32(j, _mm512_set1_epi32(static_cast<int>(16 * w)));
        const __mmask16 kept = kept_lanes(lane, d, jw, first + at, lanes[w]);
        if (lane.rescaled) {
          d = round_keeping_nan(masked_product(lane.masked_product, kept, d, lane.ratio));
          product = _mm512_mul_ps(d, lane.weight);
        } else {
          product = masked_product(lane.masked_product, kept, d, lane.weight);
        }
      }
      v[m][w] = lane.exact_weight ? round_where_needed(product) : round_keeping_nan(product);
    }
  }
#pragma GCC unroll 8
  for (size_t w = 0; w < kWays; ++w) {
    if (options.consensus) {
      // The reference adds from +0; without it only a zero sum's sign can differ, which the sign
      // table maps to +1 either way.
      __m512 sum = v[0][w];
      for (size_t m = 1; m < n_models; ++m) sum = _mm512_add_ps(sum, v[m][w]);
      const __m512 sign = fixup(zero, round_keeping_nan(sum), kSignTable);
      // An entry takes part where v * sign > 0. The reference adds +0 for the others, from +0: a
      // masked add gives the same bits, as a value that takes part is not zero and the partial
      // sums of values of one sign are never -0.
      __mmask16 agrees[kMaxCombineLanesModels];
      for (size_t m = 0; m < n_models; ++m) {
        agrees[m] = _mm512_cmp_ps_mask(_mm512_mul_ps(v[m][w], sign), zero, _CMP_GT_OQ);
      }
      mixed[w] = _mm512_maskz_mov_ps(agrees[0], v[0][w]);
      for (size_t m = 1; m < n_models; ++m)
        mixed[w] = _mm512_mask_add_ps(mixed[w], agrees[m], mixed[w], v[m][w]);
      if (divisors.in_table) {
        __m512i lane_set = _mm512_maskz_mov_epi32(agrees[0], _mm512_set1_epi32(1));
        for (size_t m = 1; m < n_models; ++m) {
          lane_set = _mm512_mask_or_epi32(lane_set, agrees[m], lane_set,
                                          _mm512_set1_epi32(1 << static_cast<int>(m)));
        }
        divisor[w] = _mm512_permutexvar_ps(lane_set, divisors.values);
      } else {
        // A weight's sign-zero difference from the reference's +0 start is made 1 below too.
        __m512 d = _mm512_maskz_mov_ps(agrees[0], models[0].weight);
        for (size_t m = 1; m < n_models; ++m)
          d = _mm512_mask_add_ps(d, agrees[m], d, models[m].weight);
        d = round_keeping_nan(d);
        divisor[w] = fixup(d, d, kZeroToOneTable);
      }
    } else {
      mixed[w] = _mm512_add_ps(zero, v[0][w]);
      for (size_t m = 1; m < n_models; ++m) mixed[w] = _mm512_add_ps(mixed[w], v[m][w]);
      divisor[w] = divisors.values;
    }
  }
  size_t bad = 0;
#pragma GCC unroll 8
  for (size_t w = 0; w < kWays; ++w) {
    __m512 x = round_keeping_nan(mixed[w]);
    if (options.normalize) {
      x = divisors.reciprocal ? round_where_needed(_mm512_mul_ps(x, divisor[w]))
                              : round_keeping_nan(_mm512_div_ps(x, divisor[w]));
    }
    if (options.scaled) x = round_keeping_nan(_mm512_mul_ps(x, _mm512_set1_ps(options.lambda)));
    __m512 o = round_keeping_nan(_mm512_add_ps(b[w], x));
    // NaN or infinite: QNaN 0x01, +inf 0x08, -inf 0x10, SNaN 0x80. Rare: only then are NaNs
    // made the reference's 0x7FC00000.
    if (const __mmask16 odd = _mm512_mask_fpclass_ps_mask(live[w], o, 0x99); odd != 0) {
      bad += static_cast<size_t>(__builtin_popcount(odd));
      o = _mm512_mask_mov_ps(o, _mm512_cmp_ps_mask(o, o, _CMP_UNORD_Q),
                             _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
    }
    const __m256i high = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(o), 16));
    if constexpr (kWhole) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j0 + 16 * w), high);
    } else {
      _mm256_mask_storeu_epi16(out + j0 + 16 * w, live[w], high);
    }
  }
  return bad;
}

// The whole call: eight groups at a time, then the rest one by one.
template <size_t kModels>
__attribute__((target("arch=x86-64-v4"))) size_t combine_lanes(
    const ModelLanes* models, size_t count, const TaskVectorCombine& options,
    const Divisors& divisors, const uint16_t* base, const uint16_t* const* xs, size_t first,
    size_t len, uint16_t* out) {
  constexpr size_t kWays = 8;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const size_t whole[kWays] = {16, 16, 16, 16, 16, 16, 16, 16};
  size_t bad = 0, j0 = 0;
  for (; j0 + 16 * kWays <= len; j0 += 16 * kWays) {
    const __m512i j = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j0)));
    bad += combine_groups<kModels, kWays, true>(models, count, options, divisors, base, xs, first,
                                                j0, whole, j, out);
  }
  for (; j0 < len; j0 += 16) {
    const size_t lanes = len - j0 < 16 ? len - j0 : 16;
    const __m512i j = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j0)));
    bad += combine_groups<kModels, 1, false>(models, count, options, divisors, base, xs, first, j0,
                                             &lanes, j, out);
  }
  return bad;
}

using CombineFn = size_t (*)(const ModelLanes*, size_t, const TaskVectorCombine&, const Divisors&,
                             const uint16_t*, const uint16_t* const*, size_t, size_t, uint16_t*);
// Unrolled over the models for the usual counts; the rest loop over them.
constexpr CombineFn kCombineByCount[] = {combine_lanes<0>, combine_lanes<1>, combine_lanes<2>,
                                         combine_lanes<3>, combine_lanes<4>};

// The call's divisors (Divisors): the table of every agreeing set's divisor, each computed as the
// reference does, or the plain divisor; reciprocals where all are normal powers of two.
__attribute__((target("arch=x86-64-v4"))) Divisors divisors_of(const TaskVectorInput* inputs,
                                                               size_t count,
                                                               const TaskVectorCombine& options) {
  Divisors divisors;
  divisors.values = _mm512_set1_ps(1.0f);
  float values[16];
  size_t used = 1;
  values[0] = options.plain_divisor;
  if (options.consensus) {
    if (count > kTableModels) return divisors;  // the kernel sums the agreeing weights itself
    divisors.in_table = true;
    used = size_t{1} << count;
    for (size_t set = 0; set < used; ++set) {
      float sum = 0.0f;
      for (size_t m = 0; m < count; ++m) sum += (set >> m) & 1 ? inputs[m].weight : 0.0f;
      sum = round_to_bf16(sum);
      values[set] = sum == 0.0f ? 1.0f : sum;
    }
  }
  divisors.reciprocal = std::all_of(values, values + used,
                                    [](float v) { return v != 0.0f && power_of_two_or_zero(v); });
  for (size_t k = 0; k < used; ++k) values[k] = divisors.reciprocal ? 1.0f / values[k] : values[k];
  std::fill(values + used, values + 16, values[0]);
  divisors.values = divisors.in_table ? _mm512_loadu_ps(values) : _mm512_set1_ps(values[0]);
  return divisors;
}

}  // namespace

bool can_combine_task_vectors_avx512(size_t models) {
  return models >= 1 && models <= kMaxCombineLanesModels && cpu_has_x86_64_v4();
}

__attribute__((target("arch=x86-64-v4"))) size_t combine_task_vectors_bf16_avx512(
    const TaskVectorInput* inputs, size_t count, const TaskVectorCombine& options,
    const uint16_t* base, const uint16_t* const* xs, size_t first, size_t len, uint16_t* out) {
  ModelLanes models[kMaxCombineLanesModels];
  for (size_t m = 0; m < count; ++m) {
    const DeltaMask& mask = inputs[m].mask;
    ModelLanes& lane = models[m];
    lane.active = mask.active;
    lane.bits = mask.bits;
    lane.has_low = mask.has_low;
    lane.rescaled = mask.rescaled;
    lane.masked_product = masks_in_product(mask.rescaled ? mask.ratio : inputs[m].weight);
    lane.exact_weight = power_of_two_or_zero(inputs[m].weight);
    lane.high = cut_lanes(mask.high, first, len);
    lane.low = cut_lanes(mask.low, first, len);
    lane.ratio = _mm512_set1_ps(mask.ratio);
    lane.weight = _mm512_set1_ps(inputs[m].weight);
  }
  const Divisors divisors = divisors_of(inputs, count, options);
  const CombineFn fn =
      count < std::size(kCombineByCount) ? kCombineByCount[count] : kCombineByCount[0];
  return fn(models, count, options, divisors, base, xs, first, len, out);
}
#else
bool can_combine_task_vectors_avx512(size_t) {
  return false;
}
size_t combine_task_vectors_bf16_avx512(const TaskVectorInput*, size_t, const TaskVectorCombine&,
                                        const uint16_t*, const uint16_t* const*, size_t, size_t,
                                        uint16_t*) {
  return 0;
}
#endif

}  // namespace alloy::detail
