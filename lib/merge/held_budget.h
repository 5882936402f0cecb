// How many bytes of source tensors the merge executor holds in memory at once (internal to
// lib/merge; the holding itself is executor.cpp's hold_sources).
//
// Holding a tensor's sources saves the second read of their bytes out of the page cache (a method
// with a sums or selection pass reads them twice or more). But the held buffer is fresh memory for
// every run, and fresh memory costs page faults whose price swings on these virtual machines:
// measured here, the first touch of a 192 MiB huge-page buffer in a fresh process took 0.017 s when
// the host still backed recently freed memory and 0.12-0.34 s when it did not (up to 1.8 s per
// GiB; 2.8 s per GiB with 4 KiB pages). A read out of the page cache costs about 0.17 s per GiB
// (pread's copy and its page-cache lookups). So a held byte pays for itself for certain only when
// about 16 bytes pass through it. Merges held their embedding matrices for a second read of two or
// three tensors: a 0.5 GB ties merge's held buffer was 188 MiB, and one run of it took 2.94 s,
// 3.1 s of it system time, against 1.2 s without holding them; peak RSS 210 MiB against 55 MiB.
#pragma once

#include <cstdint>
#include <vector>

#include "alloy/merge/recipe.h"

namespace alloy::detail {

// A held byte costs about this many reads of a byte out of the page cache (see above).
inline constexpr uint64_t kHeldByteCostInReads = 16;

// The capacity that saves the most: among 0 and the `totals` (each tensor's source bytes
// together) no larger than `limit`, the capacity c with the largest
//   (sum of the totals <= c) - kHeldByteCostInReads * c,
// the bytes whose second read is saved less the faults of the buffer in read-equivalent bytes;
// the smallest such c on ties. Deterministic: depends on the totals, not their order.
uint64_t held_budget_for(std::vector<uint64_t> totals, uint64_t limit);

// held_budget_for over the plan's tensors: each one's source bytes where every source has the
// tensor's planned shape (others are never held). Whether the method reads its sources twice does
// not matter: a method that does not never holds anything.
uint64_t held_budget(const MergePlan& plan, uint64_t limit);

}  // namespace alloy::detail
