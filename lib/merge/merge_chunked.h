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

// The chunked path (alloy/merge/merge_method.h, ChunkedMerge): every fixed chunk of kDefaultGrain
// elements of each source is converted from the mapped bytes into per-thread scratch, merged and
// stored as output bytes, so no whole-tensor float32 buffer is built; the sums pass, when the
// method needs one, converts the chunks once more. Only the output bytes take a pool slot.
// `given`: the sources' bytes already gathered (fused experts), one per source, each of t.shape;
// null to read the planned source tensors.
void merge_chunked(const MergePlan& plan, const PlannedTensor& t, MergeContext& ctx,
                   ChunkedMerge& merge, BufferPool& pool, WriteBehind& behind,
                   const EmitBytes& emit, bool clamp_overflow,
                   const std::vector<SourceBytes>* given);

}  // namespace alloy::detail
