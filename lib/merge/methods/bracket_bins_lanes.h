// The TIES family's bracketed histogram pass (sparsify.cpp, RankSelector::count_bracket_bins) on
// bf16 rows, written for AVX-512 (x86-64-v4): the bins of a block of task-vector entries, the
// count of those above the bracket and the bins inside it, in one pass in registers. Its own file
// because it is compiled for one instruction set and chosen at run time.
//
// An entry's bin is the high 15 bits of its magnitude key: magnitude_key(rnd(x - b)) >> 16, with
// rnd the bf16 rounding (a NaN becomes 0x7FC00000, bin 0x7FC0). The portable kernel computes the
// bins into an array, then packs those inside the bracket in a second loop (pack_bins_inside). A
// histogram does not depend on the order of its entries, so here the bins inside are packed in an
// order of the kernel's own.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

// Whether bracket_bins_bf16_avx512 can run here: an x86-64-v4 CPU.
bool can_bracket_bins_bf16_avx512();

// Whether it packs the bins inside with one instruction per 32 (AVX-512 VBMI2), not two.
bool bracket_bins_packs_words();

// For entries j < len of the bf16 rows x (a model) and b (the base): the bins in [lo, hi] go to
// inside (room for len + 32 entries), in some order, and their number is returned; *above is set to
// how many bins exceed hi. lo <= hi <= 0x7FFF. Only where can_bracket_bins_bf16_avx512(). `words`
// false: the packing of CPUs without VBMI2 (for tests; the results are the same).
size_t bracket_bins_bf16_avx512(const uint16_t* x, const uint16_t* b, size_t len, uint32_t lo,
                                uint32_t hi, uint16_t* inside, uint32_t* above, bool words = true);

}  // namespace alloy::detail
