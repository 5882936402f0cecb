// kept_positions (subchunks.h): a compaction of element indices, in 16-lane AVX-512 compresses
// where the CPU has them, else one element at a time without a branch.
#include <bit>
#include <cstddef>
#include <cstdint>

#include "alloy/core/cpu_features.h"
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
#endif

}  // namespace

size_t kept_positions(const uint8_t* keep, size_t count, uint32_t* at) {
#if ALLOY_KEPT_POSITIONS_AVX512
  static const bool v4 = cpu_has_x86_64_v4();
  if (v4) return kept_positions_avx512(keep, count, at);
#endif
  return kept_positions_from(keep, 0, count, at);
}

}  // namespace alloy::detail
