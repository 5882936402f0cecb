// Sub-chunk iteration shared by the sparse-merge statistics (sparse.cpp, sparse_subsets.cpp): the
// elements of a tensor in fixed super-chunks (at most kMaxParts, set by the element count alone,
// so integer counts and their sums do not depend on the threads), each loaded kDefaultGrain
// elements at a time into one thread-local scratch buffer per thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {

inline constexpr size_t kMaxParts = 16;

inline size_t part_grain(uint64_t n) { return std::max<size_t>(kDefaultGrain, (n + kMaxParts - 1) / kMaxParts); }

// Scratch for one sub-chunk of every vector, reused by every tensor this thread reads.
inline float* subchunk_scratch(size_t vectors) {
  static thread_local std::vector<float> buffer;
  if (buffer.size() < vectors * kDefaultGrain) buffer.resize(vectors * kDefaultGrain);
  return buffer.data();
}

// Calls body(x, count) with x[v] the floats of vector v for each sub-chunk of [begin, end). Only
// the vectors `used` marks are read (all when it is empty); the others' x[v] hold no data.
template <class Body>
void for_each_subchunk(const TensorViews& views, size_t begin, size_t end, Body&& body,
                       const std::vector<bool>& used = {}) {
  const size_t m = views.inputs.size();
  float* base = subchunk_scratch(m);
  std::vector<float*> x(m);
  for (size_t v = 0; v < m; ++v) x[v] = base + v * kDefaultGrain;
  for (size_t b = begin; b < end; b += kDefaultGrain) {
    const size_t count = std::min(end - b, kDefaultGrain);
    for (size_t v = 0; v < m; ++v) {
      if (used.empty() || used[v]) load_view(views, v, b, count, x[v]);
    }
    body(x, count);
  }
}

// The positions i < count with keep[i] != 0, in increasing order, into `at` (room for count + 16
// entries: the AVX-512 form stores 16 at a time); returns how many. Without a branch per element:
// a pass that then visits only those elements (a sixth or half of them) no longer pays a
// mispredicted branch on each element it skips. (kept_positions.cpp)
size_t kept_positions(const uint8_t* keep, size_t count, uint32_t* at);

// The vectors a statistic relative to base b over `others` reads: the suspect, b and the others.
inline std::vector<bool> used_vectors(const TensorViews& views, int base, const std::vector<int>& others) {
  std::vector<bool> used(views.inputs.size(), false);
  used[0] = used[size_t(base)] = true;
  for (int v : others) used[size_t(v)] = true;
  return used;
}

}  // namespace alloy::detail
