// The DARE keep mask as bit words: entry i of a tensor is kept when random53(seed, i) < below
// (method_util.h). Its own file because it is versioned by instruction set.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alloy::detail {

// Words [wb, we) of the mask of n entries: bit t of words[w] is entry 64 w + t (0 past n).
// On a CPU with AVX-512 (x86-64-v4) it draws eight entries per vector and takes each comparison's
// mask register as eight bits of the word; elsewhere it runs random_keep_words_loop. Both give the
// reference's words (tests/merge/test_keep_words.cpp).
void random_keep_words(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                       uint64_t* words);

// The branch-free loop that the compiler vectorises (one clone per instruction set).
void random_keep_words_loop(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                            uint64_t* words);

// The plain loop, one entry at a time: the reference the tests check every version against.
void random_keep_words_reference(uint64_t seed, uint64_t below, size_t n, size_t wb, size_t we,
                                 uint64_t* words);

}  // namespace alloy::detail
