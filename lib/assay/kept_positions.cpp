// kept_positions (subchunks.h) and compact_resolved (kept_sets.h): compactions of element indices
// and of values, in 16-lane AVX-512 compresses where the CPU has them, else one element at a time
// without a branch.
#include <bit>
#include <cstddef>
#include <cstdint>

#include "alloy/core/cpu_features.h"
#include "kept_sets.h"
#include "subchunks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ALLOY_KEPT_POSITIONS_AVX512 1
#endif

namespace alloy::detail {
namespace {

size_t kept_positions_from(const uint8_t* keep, size_t begin, size_t count, uint32_t* at) {
  size_t m = 0;
  for (size_t i = begin; i < count; ++i) {
    at[m] = uint32_t(i);
    m += keep[i] != 0;
  }
  return m;
}

size_t compact_resolved_from(const uint8_t* keep, size_t begin, size_t count,
                             const float* const* in, size_t vectors, float* const* out, size_t m) {
  for (size_t i = begin; i < count; ++i) {
    for (size_t v = 0; v < vectors; ++v) out[v][m] = in[v][i];
    m += keep[i] != 0;
  }
  return m;
}

#if ALLOY_KEPT_POSITIONS_AVX512
// 16 flags at a time: their nonzero mask compresses the 16 indices into the low lanes, and the
// whole vector is stored (the lanes past the kept ones are overwritten by the next store, or lie
// in the 16 entries of room). A compress straight to memory is microcoded and slow on AMD's cores.
__attribute__((target("arch=x86-64-v4"))) size_t kept_positions_avx512(const uint8_t* keep,
                                                                       size_t count, uint32_t* at) {
  size_t m = 0, i = 0;
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  for (; i + 16 <= count; i += 16) {
    const __m128i flags = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + i));
    const __mmask16 kept = _mm_test_epi8_mask(flags, flags);
    _mm512_storeu_si512(at + m, _mm512_maskz_compress_epi32(kept, index));
    m += size_t(std::popcount(unsigned(kept)));
    index = _mm512_add_epi32(index, sixteen);
  }
  return m + kept_positions_from(keep, i, count, at + m);
}

// The same 16-flag steps, compressing each row's values instead of the indices.
__attribute__((target("arch=x86-64-v4"))) size_t compact_resolved_avx512(
    const uint8_t* keep, size_t count, const float* const* in, size_t vectors, float* const* out) {
  size_t m = 0, i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m128i flags = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + i));
    const __mmask16 kept = _mm_test_epi8_mask(flags, flags);
    for (size_t v = 0; v < vectors; ++v)
      _mm512_storeu_ps(out[v] + m, _mm512_maskz_compress_ps(kept, _mm512_loadu_ps(in[v] + i)));
    m += size_t(std::popcount(unsigned(kept)));
  }
  return compact_resolved_from(keep, i, count, in, vectors, out, m);
}
#endif

}  // namespace

size_t kept_positions(const uint8_t* keep, size_t count, uint32_t* at) {
#if ALLOY_KEPT_POSITIONS_AVX512
  static const bool v4 = cpu_has_x86_64_v4();
  if (v4) return kept_positions_avx512(keep, count, at);
#endif
  return kept_positions_from(keep, 0, count, at);
}

size_t compact_resolved(const uint8_t* keep, size_t count, const float* const* in, size_t vectors,
                        float* const* out) {
#if ALLOY_KEPT_POSITIONS_AVX512
  static const bool v4 = cpu_has_x86_64_v4();
  if (v4) return compact_resolved_avx512(keep, count, in, vectors, out);
#endif
  return compact_resolved_from(keep, 0, count, in, vectors, out, 0);
}

}  // namespace alloy::detail
