// The terms of a rescaled random mask's L1 sums (DARE, DELLA: sparsify.cpp, add_l1_run) over one
// block of bf16 rows, written for AVX-512 (x86-64-v4). Its own file because it is compiled for one
// instruction set and chosen at run time.
//
// For each entry of the block: delta = rnd(x - b) (bf16 rounding), its magnitude |delta|, and
// that magnitude again where the mask's bit keeps the entry (else +0). The block's result is the
// smallest exponent field of a nonzero magnitude, the largest magnitude's bits, and the sums of
// both terms. The portable kernel makes each term an array, then loops over the arrays five times
// (the deltas, the keep words, the ranges, two sums); here every entry's chain stays in registers
// and nothing is stored. The arrays are only needed when a block's sums are not exact (then
// add_l1_run adds the terms one by one, in index order, from the portable kernel's arrays).
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

// A block's terms, as add_l1_run reads them: all and kept are sums in double in an order of their
// own, so they are the index order's bits only where every partial sum is exact
// (exact_block_sums, which reads min_exponent and max_bits).
struct L1BlockTerms {
  uint32_t min_exponent = 255;  // of a nonzero magnitude; 255 when every magnitude is 0
  uint32_t max_bits = 0;        // the largest magnitude's bits (0x7FC00000 where one is a NaN)
  double all = 0.0, kept = 0.0;
};

// Whether l1_terms_bf16_avx512 can run here: an x86-64-v4 CPU.
bool can_l1_terms_bf16_avx512();

// The terms of entries first + j, j < len, of one model: x its bf16 row, b the base's, bit i of
// the mask words (bit i % 64 of bits[i / 64]) set where entry i is kept; words are read only as
// far as the block reaches. The same min_exponent and max_bits as the portable kernel, and sums
// equal to its own wherever they are exact. Only where can_l1_terms_bf16_avx512().
L1BlockTerms l1_terms_bf16_avx512(const uint16_t* x, const uint16_t* b, const uint64_t* bits,
                                  size_t first, size_t len);

}  // namespace alloy::detail
