// The chunked path of the merge executor: one planned tensor merged chunk by chunk from its
// sources' bytes into output windows that are written behind. Internal to lib/merge.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "alloy/merge/merge.h"
#include "source_reads.h"
#include "write_behind.h"

namespace alloy::detail {

// Where a merged tensor's bytes go: the writer under the tensor's name, or (fused experts) split
// back into the per-expert tensors. Called with consecutive parts [offset, offset + nbytes) of the
// tensor's bytes, from offset 0 in order (the chunked path emits one output window at a time, on
// the write-behind thread: an EmitBytes is copied into its jobs, so it captures nothing that
// changes or dies before WriteBehind::wait()).
using EmitBytes = std::function<void(uint64_t offset, const uint8_t* bytes, uint64_t nbytes)>;

// Refuses (or, clamping, reports nothing for) merged values that out_dtype cannot hold.
void check_overflow(const PlannedTensor& t, size_t overflows, bool clamped);

// The chunked path (alloy/merge/merge_method.h, ChunkedMerge): each task reads a few chunks of
// every source with one pread each (or finds them held, hold_sources, or in `given`), converts
// them into per-thread scratch (or passes bf16 sources to the method's bf16-bits kernels as they
// were read), merges them and stores the output bytes in a window that is written behind while the
// next is merged: no whole-tensor buffer is built. The tasks of all the windows are one parallel
// loop (no thread waits for the others at a window's end); a window is queued for writing, in
// order, when its last task is done. A method with a sums pass, or a prepare() that
// reads the sources, gets them held across its passes where they fit the pool's held_limit(). A
// tensor with non-finite or overflowing merged values is refused after its last window.
// `given`: the sources' bytes already gathered (fused experts), one per source, each of t.shape;
// null to read the planned source tensors.
void merge_chunked(const MergePlan& plan, const PlannedTensor& t, MergeContext& ctx,
                   ChunkedMerge& merge, BufferPool& pool, WriteBehind& behind,
                   const EmitBytes& emit, bool clamp_overflow,
                   const std::vector<SourceBytes>* given);

}  // namespace alloy::detail
