// Sparsification of task vectors (mergekit/sparsify.py), deterministic, O(n), and without copies
// of the tensor: each method turns one model's task vector delta = rnd(x - base) into a mask rule
// (which entries are kept: DeltaMask below) and an optional rescale factor; the merge then applies
// rule and factor while it combines the models.
//
//   magnitude          keep the k = int(density * n) largest |delta|.
//   magnitude_outliers drop the int(gamma * n) largest, then the smallest down to the density
//                      (Model Breadcrumbs), including mergekit's n_top == 0 quirk: nothing kept.
//   random             keep each entry with probability density (DARE).
//   della_magprune     keep with a probability that grows with the entry's magnitude rank within
//                      its row, from density - epsilon to density + epsilon (DELLA).
//
// Order and ties: entries are ranked by descending |delta|, and equal |delta| by ascending flat
// index (the lower index counts as larger). mergekit uses torch's unstable sort, whose tie order
// depends on the torch version and CPU; this rule is deterministic everywhere.
//
// Selection (magnitude, magnitude_outliers) is a radix select on the bits of |delta| (their
// integer order is their numeric order): one parallel histogram pass on the high 16 bits, which
// for bf16 deltas is exact; for other dtypes a second pass over only the elements of the boundary
// bin resolves the low 16 bits. On tensors of at least 2^20 entries the histogram counts only a
// bracket of bins around each cut, fixed from a sample of 2048 entries per chunk (the entries
// above the bracket are counted, not binned: the scattered increments were most of the pass),
// unless the bracket would hold over a quarter of the sample; a bracket that misses its cut is
// found out from the counts, and every bin is counted then. Counts are integers, so the result does not depend on the threads.
// Its result is not a bit per element but the cuts at the range's two ranks, each a key T and a
// cutoff index I (RankCut): the entries of key T kept by a cut are the first ones in index order,
// i.e. those below I. The passes count a cut's key per fixed chunk of the tensor, so I is found by
// reading again only the one chunk where the kept ties end. The combine pass applies the rule to
// the delta it computes anyway: no pass over the tensor marks the kept entries.
//
// Random masks draw from uniform01(stream, flat index) (alloy/method_util.h): the same seed gives
// the same mask for any thread count. They cannot reproduce torch's generator; the probabilities,
// the rescale and the rounding follow mergekit, so the statistics match.
//
// Streaming (TaskVectorSet::load set): no whole-tensor float buffer is needed. Every pass reads
// the task vectors in index order as runs of at most stream_grain() elements, loaded into
// per-thread scratch from the inputs' bytes, inside the same fixed partitions as the whole-tensor
// form: the high-bits histogram pass, the boundary-bin pass (not for bf16), the cut's one chunk,
// and the L1 pass of the rescale (double sums over fixed blocks of kDefaultGrain elements, each
// block summed in index order, the blocks added in order: the same bits as the whole-tensor sums,
// for any thread count and any run length). DELLA ranks each fiber along dim 1 whole: a row of a
// matrix is loaded run by run into its keys; for tensors of rank >= 3 one slab of the outer
// dimension at a time (its keys, 4 bytes per element). The selection and L1 passes serve all the
// models of a tensor at once: each run of the base is read and converted once per pass, not once
// per model and pass. Memory: the random and della masks (n / 8 bytes per model; the magnitude
// rules have no per-element state), the selection's per-chunk histograms (at most 16 x 128 KiB
// per model), and per-thread scratch (one run per model and one of the base); the random masks
// need no delta at all.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "method_util.h"

namespace alloy::detail {

enum class Sparsification { kNone, kMagnitude, kMagnitudeOutliers, kRandom, kDellaMagprune };

// Reads elements [begin, begin + len) of the model (x) and of the base (base) as float32 values
// representable in the compute dtype. Called concurrently from the selection's threads; must not
// throw (the caller records a read error and reports it after the mask is built).
using TaskVectorLoader = std::function<void(size_t begin, size_t len, float* x, float* base)>;

// One model's task vector delta[i] = rnd(x[i] - base[i]) in `dtype`, computed on the fly: from the
// whole-tensor buffers x and base, or, when `load` is set, streamed through it (x, base unused).
struct TaskVectorView {
  const float* x = nullptr;
  const float* base = nullptr;
  size_t n = 0;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;  // della ranks along dim 1 (rows of a matrix)
  TaskVectorLoader load;        // set: streamed in runs of stream_grain() elements
};

// The length of the runs a streamed task vector is read in (default kDefaultGrain elements, a few
// hundred KiB of scratch per thread). Changes no bit of any result: tests set odd tiny values so
// that small tensors span many runs with boundaries inside rows. 0 restores the default.
void set_stream_grain(size_t elements);
size_t stream_grain();

// The executor's output window (lib/merge/executor.cpp, merge_chunked): a chunked tensor's output
// bytes are stored and handed to the writer this many elements at a time (default kOutputWindow,
// 32 chunks of kDefaultGrain: 2 MiB of bf16), so its memory does not grow with the tensor. Changes
// no output byte: tests set tiny odd values so that small tensors span many windows. 0 restores
// the default.
inline constexpr size_t kOutputWindow = size_t{32} * kDefaultGrain;
void set_output_window(size_t elements);
size_t output_window();

// The most bytes of source tensors the executor holds in memory for a merge with a sums pass
// (slerp and its kin, ChunkedMerge::sum_count) or a prepare() that reads them (TIES, DARE and the
// other sparsified methods, ChunkedMerge::prepare_reads_sources): when a tensor's sources fit
// together, they are read once, in parallel, and every pass converts from memory instead of
// reading everything again. By default each merge chooses its own limit, at most kHeldSourceBytes
// (256 MiB: a 7B model's attention and smaller tensors), where the reads it saves best outweigh
// the held buffer's page faults (lib/merge/held_budget.h). set_held_source_bytes fixes the limit
// instead, for tests: 1 holds nothing, kHeldSourceBytes every tensor that fits; 0 restores the
// default. Changes no output byte. held_source_bytes() is the fixed limit, or 0 by default.
inline constexpr uint64_t kHeldSourceBytes = uint64_t{256} << 20;
void set_held_source_bytes(uint64_t bytes);
uint64_t held_source_bytes();

// For tests: how many selections so far counted only a bracket of histogram bins around their cuts
// (tensors of at least 2^20 entries), and how many brackets missed a cut, so that every bin was
// counted after all (the results are the same either way; only the time differs).
struct SelectionBracketCounts {
  uint64_t bracketed = 0, misses = 0;
};
SelectionBracketCounts selection_bracket_counts();

// Several models' task vectors against one base, delta_m[i] = rnd(x_m[i] - base[i]): from the
// whole-tensor buffers base and xs, or, when `load` is set, streamed through it. The selection and
// L1 passes of build_masks read each range once for all models, so the base is converted once per
// pass instead of once per model and pass.
// load(source, begin, len, dst): elements [begin, begin + len) of model `source` (< count), or of
// the base (source == count), as in TaskVectorLoader (concurrent, never throws).
using TaskVectorsLoader = std::function<void(size_t source, size_t begin, size_t len, float* dst)>;
// The same elements as bf16 bits (ChunkedMerge's SourceBitsLoader): a pointer to len values, in
// memory the caller holds or in `scratch`.
using TaskVectorsBitsLoader =
    std::function<const uint16_t*(size_t source, size_t begin, size_t len, uint16_t* scratch)>;
struct TaskVectorSet {
  const float* base = nullptr;
  std::vector<const float*> xs;  // one per model (whole-tensor form)
  size_t count = 0;              // models
  size_t n = 0;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
  TaskVectorsLoader load;  // set: streamed in runs of stream_grain() elements
  // Also set (with `load`, dtype BF16, and bf16 sources): the selection and L1 passes stream the
  // bits instead, and widen them as they compute delta (the same values, no float32 rows).
  TaskVectorsBitsLoader bits;
};

struct SparsifyOptions {
  Sparsification method = Sparsification::kNone;
  double density = 1.0;
  double gamma = 0.01;    // magnitude_outliers: share of the largest entries removed
  double epsilon = 0.15;  // della: spread of the keep probabilities around density
  bool rescale = false;   // rescale the kept entries to the L1 norm of the whole task vector
  uint64_t seed = 0;      // random, della: the mask's stream
};

// A cut in the descending order of a task vector's entries (|delta| descending, equal |delta| by
// ascending flat index): entry i, of key k = the bits of |delta_i| (magnitude_key), is before the
// cut iff k > key, or k == key and i < index. The entries of key `key` before the cut are a prefix
// of them in index order, so one index bounds them. The default cut is the one at rank 0 (no key
// reaches 0xFFFFFFFF: keys have 31 bits); {0, UINT64_MAX} is the one at rank n.
struct RankCut {
  uint32_t key = 0xFFFFFFFFu;
  uint64_t index = 0;
  bool before(uint32_t k, uint64_t i) const { return k > key || (k == key && i < index); }
};

// |d| as an integer whose order is the numeric order of |d| (sign bit cleared). NaNs rank above
// the infinities, -0 with +0: the selection compares these integers, never the floats.
inline uint32_t magnitude_key(float d) {
  uint32_t u;
  std::memcpy(&u, &d, 4);
  return u & 0x7FFFFFFFu;
}

// The outcome of sparsifying one task vector: which entries are kept (the mask rule) and an
// optional rescale factor. The rule is one of two forms:
//   explicit  bits != nullptr: bit i set when entry i is kept (random, della).
//   implicit  bits == nullptr: the kept entries are the rank range [lo, hi) of the magnitude
//             selections, i.e. those before the cut `high` (at rank hi) and, when has_low, not
//             before the cut `low` (at rank lo); decided from delta_i itself, so the merge's
//             combine pass, which computes delta anyway, needs no mask pass and no bits.
struct DeltaMask {
  bool active = false;             // false: every entry kept unchanged (density >= 1, no method)
  const uint64_t* bits = nullptr;  // the explicit rule
  RankCut high, low;               // the implicit rule (the default high cut keeps nothing)
  bool has_low = false;
  bool rescaled = false;           // kept entries become rnd(delta * ratio)
  float ratio = 1.0f;              // rnd_W(rnd_W(sum |delta|) / rnd_W(sum |kept delta|))

  // Whether entry i, of task-vector value delta, is kept (active masks).
  bool keep(size_t i, float delta) const {
    if (bits != nullptr) return (bits[i >> 6] >> (i & 63)) & 1u;
    const uint32_t k = magnitude_key(delta);
    return high.before(k, i) && !(has_low && low.before(k, i));
  }

  // out[j] = all ones where entry first + j, of value delta[j], is kept, else 0, for j < len <
  // 2^32 (active masks). Branch-free compares on the keys: the loops vectorise.
  void keep_words(const float* delta, size_t first, size_t len, uint32_t* out) const {
    if (bits != nullptr) {
      expand_mask_bits(bits, first, len, out);
      return;
    }
    const Before high_rule(high, first, len);
    for (uint32_t j = 0; j < static_cast<uint32_t>(len); ++j) out[j] = high_rule(delta[j], j);
    if (!has_low) return;
    const Before low_rule(low, first, len);
    for (uint32_t j = 0; j < static_cast<uint32_t>(len); ++j) out[j] &= ~low_rule(delta[j], j);
  }

 private:
  // A cut's test on the entries first + j of a run of len: the tie test i < cut.index becomes
  // j < limit on 32-bit lanes.
  struct Before {
    uint32_t key, limit;
    Before(const RankCut& cut, size_t first, size_t len)
        : key(cut.key),
          limit(static_cast<uint32_t>(
              std::min<uint64_t>(cut.index > first ? cut.index - first : 0, len))) {}
    // All ones when the entry is before the cut, else 0.
    uint32_t operator()(float delta, uint32_t j) const {
      const uint32_t k = magnitude_key(delta);
      return (0u - static_cast<uint32_t>(k > key)) |
             ((0u - static_cast<uint32_t>(k == key)) & (0u - static_cast<uint32_t>(j < limit)));
    }
  };
};

// Builds the mask rule of each model's task vector: for model m of `set`, with options[m]; the
// explicit rules (random, della) in words[m] (`words` grown to at least set.count masks, those
// resized to (n + 63) / 64 words). The passes that read the task vectors (histogram, boundary,
// L1) serve all models at once. Throws Error(kRecipe) naming
// `tensor` and models[m] for parameters mergekit refuses (a density that keeps no entry, della's
// density +- epsilon outside (0, 1), a negative density or gamma), the first in model order.
std::vector<DeltaMask> build_masks(const TaskVectorSet& set,
                                   const std::vector<SparsifyOptions>& options,
                                   std::vector<std::vector<uint64_t>>& words,
                                   const std::string& tensor,
                                   const std::vector<std::string>& models);

// Whether build_masks with these options reads the task vectors (a magnitude, outlier or della
// selection, or a rescaled random mask, that keeps less than everything); a random mask without
// rescale is drawn without reading them.
bool masks_read_sources(const std::vector<SparsifyOptions>& options);

// For tests: the L1 sums of the rescale, {sum |delta_m|, sum |kept delta_m|} for every model m of
// `set` with masks[m], from the pass build_masks runs (each fixed chunk of kDefaultGrain entries
// summed in index order, the chunks added in order).
std::vector<double> l1_sums_of(const TaskVectorSet& set, const std::vector<DeltaMask>& masks);

// Keeps the entries whose rank (descending |delta|, ties to the lower index) is in [lo, hi):
// sets bit i of `words` exactly for those (the implicit rule, turned into bits). The selection
// primitive behind magnitude and magnitude_outliers, exposed for tests.
void select_rank_range(const TaskVectorView& tv, uint64_t lo, uint64_t hi,
                       std::vector<uint64_t>& words);

}  // namespace alloy::detail
