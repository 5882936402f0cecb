// The DARE keep mask's words, versioned by instruction set: see keep_words.h.
#include "keep_words.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "alloy/core/cpu_features.h"
#include "method_util.h"

namespace alloy::detail {

// Bits of words [wb, we): the comparison of each entry's draw shifted into place. Branch-free, so
// the compiler vectorises it, in each of its clones.
ALLOY_INTEGER_KERNEL void random_keep_words_loop(uint64_t seed, uint64_t below, size_t n, size_t wb,
                                                 size_t we, uint64_t* words) {
  for (size_t w = wb; w < we; ++w) {
    const size_t first = w * 64, len = std::min<size_t>(64, n - first);
    uint64_t bits = 0;
    for (size_t t = 0; t < len; ++t) bits |= uint64_t{random53(seed, first + t) < below} << t;
    words[w] = bits;
  }
}

void random_keep_words_reference(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                                 uint64_t* words) {
  for (size_t w = wb; w < we; ++w) {
    words[w] = 0;
    for (size_t i = w * 64; i < std::min<size_t>(n, w * 64 + 64); ++i) {
      if (random53(seed, i) < below) words[w] |= uint64_t{1} << (i - w * 64);
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace {

// x86-64-v4 (AVX-512 F, BW, DQ, VL): the 64-bit multiply is vpmullq (DQ). The loop's vectorised
// clone turns each comparison into a 0/1 lane, shifts it to its bit and ORs the lanes together;
// here the comparison's mask register is the eight bits: 1.5x faster on AMD Zen 5.
__attribute__((target("arch=x86-64-v4"))) void keep_words_avx512(uint64_t seed, uint64_t below,
                                                                 size_t n, size_t wb, size_t we,
                                                                 uint64_t* words) {
  // The arithmetic in GCC vector types (vpmullq, vpsrlq); only the comparison needs its intrinsic,
  // for the mask register.
  typedef uint64_t Lanes __attribute__((vector_size(64)));
  const Lanes lane_steps = Lanes{0, 1, 2, 3, 4, 5, 6, 7} * kDrawStep;
  // random53 < below is (bits >> 11) < below, i.e. bits < below << 11 (no shift per draw), which
  // fits 64 bits for below < 2^53; below = 2^53 (every entry kept) takes the loop.
  const __m512i limit = _mm512_set1_epi64(static_cast<long long>(below << 11));
  const size_t whole_end = below < (uint64_t{1} << 53) ? std::min(we, n / 64) : wb;
  size_t w = wb;
  for (; w < whole_end; ++w) {
    // random53's argument for entries 64 w + t: seed + (64 w + t + 1) * kDrawStep, modulo 2^64.
    Lanes z = (seed + (w * 64 + 1) * kDrawStep) + lane_steps;
    uint64_t bits = 0;
    for (unsigned group = 0; group < 8; ++group) {
      Lanes x = z;  // the eight entries' bits, random53's before its shift
      mix_in_place(x);
      bits |= uint64_t{_mm512_cmplt_epu64_mask(reinterpret_cast<__m512i>(x), limit)} << (8 * group);
      z += 8 * kDrawStep;
    }
    words[w] = bits;
  }
  random_keep_words_loop(seed, below, n, w, we, words);  // the last, partial word (or all)
}

}  // namespace

void random_keep_words(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                       uint64_t* words) {
  if (cpu_has_x86_64_v4()) return keep_words_avx512(seed, below, n, wb, we, words);
  random_keep_words_loop(seed, below, n, wb, we, words);
}
#else
void random_keep_words(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                       uint64_t* words) {
  random_keep_words_loop(seed, below, n, wb, we, words);
}
#endif

}  // namespace alloy::detail
