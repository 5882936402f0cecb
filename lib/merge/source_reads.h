// Reading a planned tensor's sources for the merge executor (executor.cpp, merge_chunked.cpp):
// the pool of reused buffers, each source's bytes (pread, never the mapping), their conversion to
// the compute dtype, LoRA changes, and the held read of a tensor's sources for the methods that
// read them twice. Internal to lib/merge.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/core/page_buffer.h"
#include "alloy/merge/lora.h"
#include "alloy/merge/merge.h"
#include "methods/sparsify.h"

namespace alloy::detail {

// Float buffers reused across tensors; each grows to the largest tensor it has held. Memory that a
// process touches for the first time costs a page fault per 4 KiB page (about 2.6 s per GiB on
// the benchmark machines, docs/performance.md), so the executor keeps as few slots as it can:
// slot k holds source k, the output goes in place into slot 0 when the method allows it, and the
// output bytes reuse a source slot that the merge no longer needs.
class BufferPool {
 public:
  float* get(size_t slot, size_t count) {
    if (buffers_.size() <= slot) buffers_.resize(slot + 1);
    if (buffers_[slot].size() < count) buffers_[slot].resize(count);
    return buffers_[slot].data();
  }
  uint8_t* bytes(size_t slot, uint64_t count) {
    return reinterpret_cast<uint8_t*>(get(slot, static_cast<size_t>((count + 3) / 4)));
  }
  // The sources held for a merge with a sums pass (hold_sources): grown to the largest held
  // tensor, in huge pages, so that its first touch costs a few faults instead of one per 4 KiB.
  PageBuffer& held_sources() { return held_sources_; }
  // The most bytes held_sources() may hold: detail::held_source_bytes() where a test fixed it,
  // else the merge's own choice (set_held_limit, held_budget.h); kHeldSourceBytes until then.
  uint64_t held_limit() const {
    const uint64_t fixed = detail::held_source_bytes();
    return fixed != 0 ? fixed : held_limit_;
  }
  void set_held_limit(uint64_t bytes) { held_limit_ = bytes; }

 private:
  std::vector<std::vector<float>> buffers_;
  PageBuffer held_sources_;
  uint64_t held_limit_ = detail::kHeldSourceBytes;
};

// A source tensor's bytes come in with pread (SafetensorsFile::read), never through the mapping: a
// file truncated under the merge is then Error(kInputChanged) instead of SIGBUS. A source whose
// shape is the planned one is read chunk by chunk into per-thread scratch; one cropped to a smaller
// shape is read whole into a pool buffer first (`whole`).
struct SourceBytes {
  const ModelTensor* input = nullptr;
  const uint8_t* whole = nullptr;
};

// The first Error thrown inside a parallel region, rethrown after it (an exception may not leave
// an OpenMP region).
class FirstError {
 public:
  template <class F>
  void run(F&& body) {
    if (failed_) return;
    try {
      body();
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_.emplace(e);
      failed_ = true;
    }
  }
  void rethrow() const {
    if (error_) throw *error_;
  }

 private:
  std::mutex mutex_;
  std::optional<Error> error_;
  std::atomic<bool> failed_{false};
};

// The element count of a shape (1 for a scalar []).
uint64_t numel(const std::vector<uint64_t>& shape);

// Copies the top-left `shape` block of a row-major tensor of shape `full` (same rank).
void crop(const float* in, const std::vector<uint64_t>& full, float* out,
          const std::vector<uint64_t>& shape);

// The bytes of elements [begin, begin + len) of a source whose shape is the planned one: in its
// whole buffer when it has one, else read (pread) into `scratch`. Null for a cropped source, whose
// elements are not one run of bytes (load_range gathers them row by row).
const uint8_t* source_range_bytes(const SourceBytes& source, const std::vector<uint64_t>& shape,
                                  uint64_t begin, size_t len, uint8_t* scratch);

// Converts `len` elements of `dtype` at `bytes` to float32 in dst, rounded to the compute dtype.
void convert_range(DType dtype, const uint8_t* bytes, size_t len, DType compute_dtype, float* dst);

// Converts elements [begin, begin + len) of the tensor of shape `shape` cropped from the source
// (its top-left block, see crop()) to float32 in dst, rounded to the compute dtype D.
void load_range(const SourceBytes& source, const std::vector<uint64_t>& shape, DType compute_dtype,
                uint64_t begin, size_t len, float* dst);

// The LoRA adapter applied to model `m`, or null (plans built by hand may have no adapter list).
const LoraAdapter* adapter_of(const MergePlan& plan, size_t m);

// The LoRA change for source `s` (`model: base+adapter`), or null.
const LoraModule* lora_for(const MergePlan& plan, const PlannedSource& s);

// Reads a source tensor's whole bytes into `bytes`, with its LoRA change added (in its own dtype,
// alloy/merge/lora.h) when its model has an adapter that changes it.
void read_whole(const MergePlan& plan, const PlannedSource& s, const ModelTensor& input,
                uint8_t* bytes, BufferPool& pool, size_t scratch_slot);

// Reads the sources of a tensor into `held` (chunks of kDefaultGrain elements in parallel, a few
// per task, every source's bytes of them with one pread each) and points their `whole` there, when
// every source has the planned shape and no whole bytes yet, and all of them fit `limit` together;
// else does nothing and returns false. `on_chunks(cb, ce)`, if given, runs once chunks [cb, ce) of
// every source are held, on the thread that read them, while their bytes are still in that core's
// cache. A read error is recorded in `errors` (on_chunks does not run for a failed read's chunks).
bool hold_sources(const PlannedTensor& t, std::vector<SourceBytes>& inputs, uint64_t limit,
                  PageBuffer& held_buffer, FirstError& errors,
                  const std::function<void(size_t, size_t)>& on_chunks = nullptr);

}  // namespace alloy::detail
