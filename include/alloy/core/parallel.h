// alloy/core/parallel.h: the one place that owns threading (OpenMP behind a helper).
//
// parallel_for splits [0, count) into chunks whose boundaries depend only on `count` and `grain`,
// never on the number of threads. Combined with per-chunk partial results reduced in chunk order
// (parallel_reduce), this makes every reduction in alloy bit-identical for any thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace alloy {

// Number of threads parallel regions use (defaults to all cores, or OMP_NUM_THREADS).
int thread_count();
// Sets the number of threads for subsequent parallel regions; n <= 0 restores the default.
void set_thread_count(int n);

// Whether the caller runs inside a parallel region. parallel_for and parallel_reduce called there
// run their chunks serially on the calling thread (a region is never split again), so everything
// the caller does stays on its thread.
bool in_parallel_region();

// Fixed chunk size used by default for element-wise work and reductions.
inline constexpr size_t kDefaultGrain = 1 << 15;

// Chunks per task for a pass whose tasks read the inputs of consecutive chunks with one pread per
// input (a 64 KiB read is a system call, and system calls are dear on VMs), `chunk_bytes` being
// one chunk's bytes of all the inputs together: at most 4 chunks and 768 KiB per task, at least 1.
// The chunks are still processed, and their results combined, one by one.
inline size_t chunks_per_read(size_t chunk_bytes) {
  constexpr size_t kMostChunks = 4, kMostBytes = size_t{768} << 10;
  return std::clamp<size_t>(kMostBytes / std::max<size_t>(1, chunk_bytes), 1, kMostChunks);
}

namespace detail {
void parallel_for_impl(size_t chunk_count, void* ctx, void (*call)(void*, size_t));
}

// Calls fn(begin, end) for each chunk [begin, end) of [0, count), chunks of `grain` elements (the
// last may be shorter), possibly concurrently. fn must not throw (exceptions cannot cross OpenMP).
template <class Fn>
void parallel_for(size_t count, size_t grain, Fn&& fn) {
  if (count == 0) return;
  if (grain == 0) grain = 1;
  const size_t chunks = (count + grain - 1) / grain;
  struct Ctx { Fn* fn; size_t count; size_t grain; } ctx{&fn, count, grain};
  detail::parallel_for_impl(chunks, &ctx, [](void* p, size_t chunk) {
    auto* c = static_cast<Ctx*>(p);
    const size_t begin = chunk * c->grain;
    const size_t end = begin + c->grain < c->count ? begin + c->grain : c->count;
    (*c->fn)(begin, end);
  });
}

// Deterministic reduction: partial = fn(begin, end) per fixed chunk, then combined left to right
// with combine(acc, partial) starting from `init`. Identical bits for any thread count.
template <class T, class Fn, class Combine>
T parallel_reduce(size_t count, size_t grain, T init, Fn&& fn, Combine&& combine) {
  if (count == 0) return init;
  if (grain == 0) grain = 1;
  const size_t chunks = (count + grain - 1) / grain;
  std::vector<T> partial(chunks, init);
  parallel_for(chunks, 1, [&](size_t b, size_t e) {
    for (size_t c = b; c < e; ++c) {
      const size_t begin = c * grain;
      const size_t end = begin + grain < count ? begin + grain : count;
      partial[c] = fn(begin, end);
    }
  });
  T acc = init;
  for (const T& p : partial) acc = combine(acc, p);
  return acc;
}

}  // namespace alloy
