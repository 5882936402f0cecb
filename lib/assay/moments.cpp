// The assay's statistics pass: Gram matrices, sums and exact-equality counts of one tensor, in
// one streaming pass over fixed chunks of the files' bytes (read with pread through a per-thread
// buffer, never by faulting the mapping in). Each chunk of kDefaultGrain elements is read into a
// per-thread scratch row per vector, then reduced a sub-block at a time (converted to floats there
// while it is in L1) into double sums over fixed blocks; chunks combine in order, so the result is
// bit-identical for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>

#include "alloy/core/cpu_features.h"
#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

// Per-thread scratch: kMaxVectors chunks of floats plus a mask and three work rows, allocated once
// per thread.
float* chunk_buffers() {
  static thread_local std::vector<float> scratch;
  if (scratch.empty()) scratch.resize(size_t(kMaxVectors + 4) * kDefaultGrain);
  return scratch.data();
}

// Four-lane double dot product (fixed order, so deterministic).
double lane_dot(const float* a, const float* b, size_t n) {
  double lanes[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int l = 0; l < 4; ++l) lanes[l] += double(a[i + l]) * double(b[i + l]);
  }
  for (; i < n; ++i) lanes[0] += double(a[i]) * double(b[i]);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

void add_into(PrefixMoments& acc, const PrefixMoments& part) {
  acc.n += part.n;
  for (int a = 0; a < acc.vectors; ++a) {
    acc.sum[a] += part.sum[a];
    for (int b = 0; b < acc.vectors; ++b) acc.gram[a][b] += part.gram[a][b];
  }
}

// The first read error of a pass (a file that shrank under the assay): load_range may run inside a
// parallel region, which an exception must not leave, so the error is kept here, the elements read
// as zeros, and rethrow_read_error() throws it once the pass is over.
std::mutex g_read_error_mutex;
std::optional<Error> g_read_error;
thread_local std::optional<Error>* t_read_error = nullptr;  // a ReadErrorScope's slot, if any

void note_read_error(const Error& e) {
  if (t_read_error) {
    if (!*t_read_error) t_read_error->emplace(e);
    return;
  }
  std::lock_guard<std::mutex> lock(g_read_error_mutex);
  if (!g_read_error) g_read_error.emplace(e);
}

// Per-thread buffer of raw bytes: every input is read with pread through it, kReadPiece bytes at a
// time, instead of faulting the mapping in. The resident set then holds these few buffers, not the
// mapped pages of every input's tensor (which grew with the candidates and the largest tensor), and
// a read from the page cache costs a fraction of the page faults it replaces.
constexpr size_t kReadPiece = size_t(1) << 17;
uint8_t* read_buffer() {
  static thread_local std::vector<uint8_t> buffer(kReadPiece);
  return buffer.data();
}

}  // namespace

// Inlined into the vectorised chunk functions (so it is compiled for their target too).
inline __attribute__((always_inline)) void convert_inline(DType dtype, const uint8_t* src, size_t count, float* out) {
  // The common dtypes inline and on this thread: this runs inside parallel chunks already.
  if (dtype == DType::BF16) {
    for (size_t i = 0; i < count; ++i) {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      out[i] = bf16_to_f32(b);
    }
  } else if (dtype == DType::F16) {
    for (size_t i = 0; i < count; ++i) {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      out[i] = f16_to_f32(b);
    }
  } else if (dtype == DType::F32) {
    std::memcpy(out, src, count * 4);
  } else {
    load_as_f32(dtype, src, count, out);
  }
}

inline __attribute__((always_inline)) void load_range_inline(const ModelTensor& t, size_t begin, size_t count,
                                                              float* out) {
  const DType dtype = t.info->dtype;
  const size_t bits = dtype_bits(dtype);
  if (bits % 8 != 0) {  // sub-byte dtypes: converted from the mapping
    convert_inline(dtype, t.data() + begin * (bits / 8), count, out);
    return;
  }
  const size_t bytes = bits / 8, per_piece = kReadPiece / bytes;
  try {
    if (dtype == DType::F32) {
      t.shard->read(*t.info, begin * 4, count * 4, out);
      return;
    }
    uint8_t* raw = read_buffer();
    for (size_t done = 0; done < count; done += per_piece) {
      const size_t n = std::min(per_piece, count - done);
      t.shard->read(*t.info, (begin + done) * bytes, n * bytes, raw);
      convert_inline(dtype, raw, n, out + done);
    }
  } catch (const Error& e) {
    note_read_error(e);
    std::fill(out, out + count, 0.0f);
  }
}

void load_range(const ModelTensor& t, size_t begin, size_t count, float* out) { load_range_inline(t, begin, count, out); }

void rethrow_read_error() {
  std::optional<Error> error;
  if (t_read_error) {
    error.swap(*t_read_error);
  } else {
    std::lock_guard<std::mutex> lock(g_read_error_mutex);
    error.swap(g_read_error);
  }
  if (error) throw *error;
}

void discard_read_error() {
  if (t_read_error) {
    t_read_error->reset();
    return;
  }
  std::lock_guard<std::mutex> lock(g_read_error_mutex);
  g_read_error.reset();
}

ReadErrorScope::ReadErrorScope() : previous_(t_read_error) { t_read_error = &slot_; }
ReadErrorScope::~ReadErrorScope() { t_read_error = previous_; }

// Inlined into the vectorised chunk functions, like load_range_inline.
inline __attribute__((always_inline)) void load_view_inline(const TensorViews& views, size_t v, size_t begin,
                                                             size_t count, float* out) {
  if (!views.values.empty()) {
    std::memcpy(out, views.values[v] + begin, count * sizeof(float));
  } else if (v == 0 && views.suspect_values) {
    std::memcpy(out, views.suspect_values + begin, count * sizeof(float));
  } else {
    load_range_inline(*views.inputs[v], begin, count, out);
  }
}

void load_view(const TensorViews& views, size_t v, size_t begin, size_t count, float* out) {
  load_view_inline(views, v, begin, count, out);
}

// Every vector's elements [begin, begin + count) into the scratch rows x[v] (the sampled rows or
// the aligned suspect's values when the views carry them).
inline __attribute__((always_inline)) void load_vectors(const TensorViews& views, size_t begin, size_t count,
                                                         float* base, float** x) {
  for (size_t v = 0; v < views.inputs.size(); ++v) {
    x[v] = base + v * kDefaultGrain;
    load_view_inline(views, v, begin, count, x[v]);
  }
}

// The full pass works on one chunk a sub-block at a time: every step (spread, counts, Y
// coordinates, Gram blocks) runs on kSubBlock elements while their rows sit in L1, instead of
// streaming whole-chunk rows (128 KiB each) through L2 a dozen times. kSubBlock is a multiple of
// kGramBlock, so the Gram blocks, and the order their sums are added in, are the whole chunk's.
constexpr size_t kGramBlock = 256;
constexpr size_t kSubBlock = 512;
static_assert(kSubBlock % kGramBlock == 0 && kDefaultGrain % kSubBlock == 0);

// One vector's elements of a chunk: floats (in memory already, or loaded into the thread's row),
// or the raw bf16/f16 values read into that row, converted a sub-block at a time.
struct ChunkSource {
  const float* values = nullptr;  // when set: the floats
  const uint8_t* raw = nullptr;   // else: 2-byte values of `dtype`
  DType dtype = DType::F32;
};

// Whether vector v of the views is read as raw 2-byte values (chunk_source's pread case).
inline bool reads_raw(const TensorViews& views, size_t v) {
  if (!views.values.empty() || (v == 0 && views.suspect_values)) return false;
  const DType dtype = views.inputs[v]->info->dtype;
  return dtype == DType::BF16 || dtype == DType::F16;
}

// `read`: the chunk's raw bytes when the caller read them already (read_group), else null.
inline __attribute__((always_inline)) ChunkSource chunk_source(const TensorViews& views, size_t v, size_t begin,
                                                               size_t count, float* row, const uint8_t* read) {
  if (!views.values.empty()) return {views.values[v] + begin};
  if (v == 0 && views.suspect_values) return {views.suspect_values + begin};
  const ModelTensor& t = *views.inputs[v];
  if (!reads_raw(views, v)) {  // another dtype: converted as it is read
    load_range_inline(t, begin, count, row);
    return {row};
  }
  const DType dtype = t.info->dtype;
  if (read != nullptr) return {nullptr, read, dtype};
  try {
    t.shard->read(*t.info, begin * 2, count * 2, row);
    return {nullptr, reinterpret_cast<const uint8_t*>(row), dtype};
  } catch (const Error& e) {  // as load_range_inline: noted, read as zeros
    note_read_error(e);
    std::fill(row, row + count, 0.0f);
    return {row};
  }
}

// The floats of elements [at, at + n) of a source: in place, or converted into out.
inline __attribute__((always_inline)) const float* source_floats(const ChunkSource& s, size_t at, size_t n,
                                                                  float* out) {
  if (s.values) return s.values + at;
  convert_inline(s.dtype, s.raw + 2 * at, n, out);
  return out;
}

// Eight float lanes, added lane by lane (GCC vector extension: each clone computes every lane the
// same way, so the bits do not depend on the instruction set).
typedef float Lanes8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));  // a comparison's lanes: -1 true, 0 false

// Per element of one sub-block: whether the members spread (hi > lo) and whether that spread is
// resolved (at least fraction * the largest |member|), as 1.0f / 0.0f in spreads[] and mask[], and
// how many of each. Eight elements at a time with the members' min / max / |max| in registers
// (std::min and std::max written out, NaN cases included), the tail one by one as before.
struct SpreadCounts {
  uint32_t resolved = 0, spread = 0;
};

inline __attribute__((always_inline)) SpreadCounts spread_masks(const float* const* x, const std::vector<int>& members,
                                                                size_t n, float fraction, float* mask, float* spreads) {
  const float* first = x[members.front()];
  Ints8 n_resolved = {}, n_spread = {};
  const Ints8 one = Ints8(Lanes8{} + 1.0f), no_sign = Ints8{} + 0x7FFFFFFF;  // |v| = v & no_sign
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes8 lo, hi, mag;
    std::memcpy(&lo, first + i, sizeof lo);
    hi = lo, mag = Lanes8(Ints8(lo) & no_sign);
    for (int v : members) {
      Lanes8 xv;
      std::memcpy(&xv, x[v] + i, sizeof xv);
      const Lanes8 a = Lanes8(Ints8(xv) & no_sign);
      lo = xv < lo ? xv : lo;   // std::min(lo, xv)
      hi = hi < xv ? xv : hi;   // std::max(hi, xv)
      mag = mag < a ? a : mag;  // std::max(mag, |xv|)
    }
    const Lanes8 spread = hi - lo;
    const Ints8 spreading = spread > 0.0f;
    const Ints8 resolved = spreading & (spread >= fraction * mag);
    const Lanes8 mask8 = Lanes8(resolved & one), spread8 = Lanes8(spreading & one);
    std::memcpy(mask + i, &mask8, sizeof mask8);
    std::memcpy(spreads + i, &spread8, sizeof spread8);
    n_resolved -= resolved;
    n_spread -= spreading;
  }
  SpreadCounts counts;
  for (int l = 0; l < 8; ++l) counts.resolved += uint32_t(n_resolved[l]), counts.spread += uint32_t(n_spread[l]);
  for (; i < n; ++i) {
    float lo = first[i], hi = first[i], mag = std::fabs(first[i]);
    for (int v : members) {
      lo = std::min(lo, x[v][i]);
      hi = std::max(hi, x[v][i]);
      mag = std::max(mag, std::fabs(x[v][i]));
    }
    const float spread = hi - lo;
    const bool spreading = spread > 0.0f;
    const bool resolved = spreading && spread >= fraction * mag;
    mask[i] = resolved ? 1.0f : 0.0f;
    spreads[i] = spreading ? 1.0f : 0.0f;
    counts.resolved += resolved;
    counts.spread += spreading;
  }
  return counts;
}

// One Gram entry's share of a block: rows a and b, added into gram[row][col].
struct GramPair {
  int a, b, row, col;
};

// A pair's eight lanes combined in double, in a fixed order.
inline __attribute__((always_inline)) double lane_sum(const Lanes8& l) {
  return (double(l[0]) + double(l[1])) + (double(l[2]) + double(l[3])) +
         ((double(l[4]) + double(l[5])) + (double(l[6]) + double(l[7])));
}

// The sums of a[i] * b[i] over one block of n elements for Q pairs, side by side: each pair keeps
// eight float lanes (element i in lane i % 8, the tail in lane 0), combined by lane_sum; running
// several pairs at once lets their additions overlap instead of waiting on one chain. The lanes are
// explicit, so every clone gives the same bits.
template <int Q>
inline __attribute__((always_inline)) void block_dots(const GramPair* pairs, const float* const* y, size_t n,
                                                       decltype(ResolvedMoments::gram)& gram) {
  Lanes8 acc[Q];
  const float* a[Q];
  const float* b[Q];
  for (int q = 0; q < Q; ++q) acc[q] = Lanes8{}, a[q] = y[pairs[q].a], b[q] = y[pairs[q].b];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int q = 0; q < Q; ++q) {
      Lanes8 va, vb;
      std::memcpy(&va, a[q] + i, sizeof va);
      std::memcpy(&vb, b[q] + i, sizeof vb);
      acc[q] += va * vb;
    }
  }
  for (int q = 0; q < Q; ++q) {
    for (size_t t = i; t < n; ++t) acc[q][0] += a[q][t] * b[q][t];
    gram[pairs[q].row][pairs[q].col] += lane_sum(acc[q]);
  }
}

// The same sums for every pair of L rows (few enough that all L * (L + 1) / 2 pairs' lanes fit in
// registers): each row is loaded once per eight elements and feeds all of its pairs. Pair p is
// (a, b), a <= b, in the order of `pairs` (rows a, b are its a-th and b-th live rows).
template <int L>
inline __attribute__((always_inline)) void block_gram(const GramPair* pairs, const float* const* y, size_t n,
                                                       decltype(ResolvedMoments::gram)& gram) {
  constexpr int P = L * (L + 1) / 2;
  const float* row[L];
  for (int r = 0; r < L; ++r) row[r] = y[pairs[r].b];  // pairs 0 .. L-1 are (first, r)
  Lanes8 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = Lanes8{};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes8 v[L];
#pragma GCC unroll 4
    for (int r = 0; r < L; ++r) std::memcpy(&v[r], row[r] + i, sizeof v[r]);
    int p = 0;
#pragma GCC unroll 4
    for (int a = 0; a < L; ++a) {
#pragma GCC unroll 4
      for (int b = a; b < L; ++b, ++p) acc[p] += v[a] * v[b];
    }
  }
  int p = 0;
  for (int a = 0; a < L; ++a) {
    for (int b = a; b < L; ++b, ++p) {
      for (size_t t = i; t < n; ++t) acc[p][0] += row[a][t] * row[b][t];
      gram[pairs[p].row][pairs[p].col] += lane_sum(acc[p]);
    }
  }
}

// What one chunk of the full pass needs to know.
struct ResolvedPass {
  const TensorViews* views;
  double resolve_fraction;
  int pivot, m;
  std::vector<int> members;    // candidates whose spread decides "resolved"
  std::vector<GramPair> pairs;  // the Gram entries (upper triangle of the live Y vectors), in order
};

namespace {

// Per-sub-block counts of the full pass: resolved and spread elements, and per vector how often it
// equals the suspect anywhere, where the members spread, and where they resolve.
struct SubBlockCounts {
  uint32_t resolved = 0, spread = 0;
  uint32_t equal_all[kMaxVectors] = {}, equal_spread[kMaxVectors] = {}, equal_resolved[kMaxVectors] = {};
};

// The fused steps' lanes: W = 8 (one Gram block at a time) or 16 (two Gram blocks side by side:
// lanes 0-7 work on elements [i, i + 8) of one block, lanes 8-15 on the same elements of the next
// block). Each lane does what it does in the 8-lane form, and the two blocks' sums are added in
// block order, so both widths give the same bits; 16 lanes halve the instructions where the CPU
// runs 512-bit vectors at full width.
template <int W>
struct LaneTypes;
template <>
struct LaneTypes<8> {
  using Floats = Lanes8;
  using Ints = Ints8;
};
template <>
struct LaneTypes<16> {
  typedef float Floats __attribute__((vector_size(64)));
  typedef int32_t Ints __attribute__((vector_size(64)));
};

// Row x's elements [0, 8), and with 16 lanes also [kGramBlock, kGramBlock + 8). (Out-parameters
// rather than vector return values: those change the ABI between the clones, which GCC warns of.)
template <int W>
inline __attribute__((always_inline)) void load_lanes(const float* x, typename LaneTypes<W>::Floats& out) {
  if constexpr (W == 8) {
    std::memcpy(&out, x, sizeof out);
  } else {  // a shuffle of the two halves: stores of them and a wide load would stall on the stack
    Lanes8 first, next;
    std::memcpy(&first, x, sizeof first);
    std::memcpy(&next, x + kGramBlock, sizeof next);
    out = __builtin_shufflevector(first, next, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
}

// lane_sum of the eight lanes of Gram block h (0, or 1 with 16 lanes).
template <int W>
inline __attribute__((always_inline)) double block_sum(const typename LaneTypes<W>::Floats& l, int h) {
  if constexpr (W == 8) {
    return lane_sum(l);
  } else {
    return h == 0 ? lane_sum(__builtin_shufflevector(l, l, 0, 1, 2, 3, 4, 5, 6, 7))
                  : lane_sum(__builtin_shufflevector(l, l, 8, 9, 10, 11, 12, 13, 14, 15));
  }
}

// The steps of one sub-block of n elements fused, for M vectors with the pivot Pivot and every
// candidate a spread member (the usual full pass; m = 2 to 4, block_gram<M>'s case): eight
// elements at a time per Gram block, the spread, the equality counts, the Y coordinates and every
// Gram pair's products are computed in registers instead of being stored to rows and read back by
// the next step. Each value is the separate steps' (the same operations per lane, the members in
// the same order; the Gram lanes and blocks, and the order they are added in, are block_gram's),
// so the sums are the same bits; the counts are integers. M and Pivot are template parameters so
// that every vector index is a constant and the rows stay in registers. n: a multiple of 8 (W = 8)
// or of 2 * kGramBlock (W = 16).
template <int M, int Pivot, int W>
inline __attribute__((always_inline)) void fused_sub_block(const GramPair* pairs, const float* const* x, size_t n,
                                                            float fraction, decltype(ResolvedMoments::gram)& gram,
                                                            SubBlockCounts& counts) {
  using Floats = typename LaneTypes<W>::Floats;
  using Ints = typename LaneTypes<W>::Ints;
  constexpr int P = M * (M + 1) / 2;
  constexpr int kBlocks = W / 8;  // Gram blocks side by side
  // Row r of block_gram<M> (the live Y vectors: the suspect, the other candidates in order, the
  // pivot last) holds the Y of vector row_vector(r).
  constexpr auto row_vector = [](int r) { return r == M - 1 ? Pivot : (r == 0 || r < Pivot ? r : r + 1); };
  const Ints one = Ints(Floats{} + 1.0f), no_sign = Ints{} + 0x7FFFFFFF;
  Ints n_resolved = {}, n_spread = {};
  Ints eq_all[M] = {}, eq_spread[M] = {}, eq_resolved[M] = {};
  for (size_t b0 = 0; b0 < n; b0 += kBlocks * kGramBlock) {
    const size_t end = std::min(n, b0 + kGramBlock);
    Floats acc[P];
    for (int p = 0; p < P; ++p) acc[p] = Floats{};
    for (size_t i = b0; i < end; i += 8) {
      Floats xv[M];
#pragma GCC unroll 4
      for (int v = 0; v < M; ++v) load_lanes<W>(x[v] + i, xv[v]);
      // spread_masks' lanes, the members (vectors 1 .. M-1) in order.
      Floats lo = xv[1];
      Floats hi = lo, mag = Floats(Ints(lo) & no_sign);
#pragma GCC unroll 4
      for (int v = 1; v < M; ++v) {
        const Floats a = Floats(Ints(xv[v]) & no_sign);
        lo = xv[v] < lo ? xv[v] : lo;
        hi = hi < xv[v] ? xv[v] : hi;
        mag = mag < a ? a : mag;
      }
      const Floats spread = hi - lo;
      const Ints spreading = spread > 0.0f;
      const Ints resolved = spreading & (spread >= fraction * mag);
      const Floats mask = Floats(resolved & one);
      n_resolved -= resolved;
      n_spread -= spreading;
#pragma GCC unroll 4
      for (int v = 1; v < M; ++v) {
        const Ints same = xv[0] == xv[v];
        eq_all[v] -= same;
        eq_spread[v] -= same & spreading;
        eq_resolved[v] -= same & resolved;
      }
      // The Y coordinates, unresolved elements zeroed (by the multiply, as the separate step).
      Floats y[M];
#pragma GCC unroll 4
      for (int r = 0; r < M - 1; ++r) y[r] = (xv[row_vector(r)] - xv[Pivot]) * mask;
      y[M - 1] = xv[Pivot] * mask;
      int p = 0;
#pragma GCC unroll 4
      for (int a = 0; a < M; ++a) {
#pragma GCC unroll 4
        for (int b = a; b < M; ++b, ++p) acc[p] += y[a] * y[b];
      }
    }
    for (int h = 0; h < kBlocks; ++h) {
      for (int p = 0; p < P; ++p) gram[pairs[p].row][pairs[p].col] += block_sum<W>(acc[p], h);
    }
  }
  for (int l = 0; l < W; ++l) {
    counts.resolved += uint32_t(n_resolved[l]);
    counts.spread += uint32_t(n_spread[l]);
    for (int v = 1; v < M; ++v) {
      counts.equal_all[v] += uint32_t(eq_all[v][l]);
      counts.equal_spread[v] += uint32_t(eq_spread[v][l]);
      counts.equal_resolved[v] += uint32_t(eq_resolved[v][l]);
    }
  }
}

std::atomic<bool> g_fused_statistics{true};  // set_fused_statistics

// Whether fused_sub_block has an instance for the pass: m from 2 to 4, a candidate as the pivot,
// every candidate a member.
bool has_fused_sub_block(const ResolvedPass& pass) {
  return g_fused_statistics.load(std::memory_order_relaxed) && pass.m >= 2 && pass.m <= 4 && pass.pivot >= 1 &&
         pass.pivot < pass.m && int(pass.members.size()) == pass.m - 1;
}

// fused_sub_block for the pass's m and pivot (has_fused_sub_block), in W lanes.
template <int W>
inline __attribute__((always_inline)) void fused_sub_block(const ResolvedPass& pass, const float* const* x, size_t n,
                                                            float fraction, decltype(ResolvedMoments::gram)& gram,
                                                            SubBlockCounts& counts) {
  const GramPair* pairs = pass.pairs.data();
  switch (pass.m * 8 + pass.pivot) {
    case 2 * 8 + 1: return fused_sub_block<2, 1, W>(pairs, x, n, fraction, gram, counts);
    case 3 * 8 + 1: return fused_sub_block<3, 1, W>(pairs, x, n, fraction, gram, counts);
    case 3 * 8 + 2: return fused_sub_block<3, 2, W>(pairs, x, n, fraction, gram, counts);
    case 4 * 8 + 1: return fused_sub_block<4, 1, W>(pairs, x, n, fraction, gram, counts);
    case 4 * 8 + 2: return fused_sub_block<4, 2, W>(pairs, x, n, fraction, gram, counts);
    case 4 * 8 + 3: return fused_sub_block<4, 3, W>(pairs, x, n, fraction, gram, counts);
  }
}

// Whether the fused steps run in 16 lanes: where the CPU has AVX-512 (the x86-64-v4 clone of
// resolved_chunk then runs). Elsewhere 16 lanes would be split into narrower vectors than the
// registers can hold side by side, and spill.
bool sixteen_lanes() {
  return cpu_has_x86_64_v4();
}

}  // namespace

// Reads elements [begin, begin + count) of every vector that chunk_source would read as raw 2-byte
// values, one pread each, into this thread's group buffer; read[v] points at them, or stays null
// (values in memory, another dtype, or a failed read: chunk_source then reads or reports it).
void read_group(const TensorViews& views, size_t begin, size_t count, const uint8_t** read) {
  static thread_local std::vector<uint8_t> buffer;
  size_t need = 0;
  for (size_t v = 0; v < views.inputs.size(); ++v) need += reads_raw(views, v) ? 2 * count : 0;
  if (buffer.size() < need) buffer.resize(need);
  size_t at = 0;
  for (size_t v = 0; v < views.inputs.size(); ++v) {
    if (!reads_raw(views, v)) continue;
    const ModelTensor& t = *views.inputs[v];
    try {
      t.shard->read(*t.info, begin * 2, count * 2, buffer.data() + at);
      read[v] = buffer.data() + at;
    } catch (const Error&) {  // chunk_source reads the chunk again and notes the error
    }
    at += 2 * count;
  }
}

// One chunk of the full pass. Compiled for AVX-512, AVX2 and the baseline, chosen at load time; the
// float lanes are explicit (and nothing is contracted, CMakeLists.txt), so every clone gives the
// same bits.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
ResolvedMoments resolved_chunk(const ResolvedPass& pass, size_t begin, size_t end, const uint8_t* const* read) {
  const int m = pass.m, pivot = pass.pivot;
  const auto& members = pass.members;
  const TensorViews& views = *pass.views;
  ResolvedMoments part;
  part.vectors = m;
  part.pivot = pivot;
  const size_t count = end - begin;
  float* base = chunk_buffers();
  ChunkSource source[kMaxVectors];
  for (int v = 0; v < m; ++v) {
    source[v] = chunk_source(views, size_t(v), begin, count, base + size_t(v) * kDefaultGrain, read[v]);
  }
  // The sub-block rows, in the scratch's last four chunk rows: the per-element work rows, then
  // every vector's floats (when converted) and its Y coordinates.
  float* mask = base + size_t(kMaxVectors) * kDefaultGrain;
  float* spreads = mask + kSubBlock;
  float* converted = spreads + kSubBlock;
  const float* x[kMaxVectors];
  float* y[kMaxVectors];
  for (int v = 0; v < m; ++v) y[v] = converted + size_t(kMaxVectors + v) * kSubBlock;
  const float fraction = float(pass.resolve_fraction);
  uint32_t n_resolved = 0, n_spread = 0;
  uint32_t equal_all[kMaxVectors] = {}, equal_spread[kMaxVectors] = {}, equal_resolved[kMaxVectors] = {};
  const bool fused = has_fused_sub_block(pass), wide = fused && sixteen_lanes();
  for (size_t at = 0; at < count; at += kSubBlock) {
    const size_t n = std::min(kSubBlock, count - at);
    for (int v = 0; v < m; ++v) x[v] = source_floats(source[v], at, n, converted + size_t(v) * kSubBlock);
    if (fused && n % 8 == 0) {
      SubBlockCounts sub;
      static_assert(kSubBlock == 2 * kGramBlock);
      if (wide && n == kSubBlock) {
        fused_sub_block<16>(pass, x, n, fraction, part.gram, sub);
      } else {
        fused_sub_block<8>(pass, x, n, fraction, part.gram, sub);
      }
      n_resolved += sub.resolved;
      n_spread += sub.spread;
      for (int v = 1; v < m; ++v) {
        equal_all[v] += sub.equal_all[v];
        equal_spread[v] += sub.equal_spread[v];
        equal_resolved[v] += sub.equal_resolved[v];
      }
      continue;
    }
    const SpreadCounts counts = spread_masks(x, members, n, fraction, mask, spreads);
    n_resolved += counts.resolved;
    n_spread += counts.spread;
    for (int v = 1; v < m; ++v) {
      const float* s0 = x[0];
      const float* xv = x[v];
      uint32_t all = 0, spread = 0, resolved = 0;
      for (size_t i = 0; i < n; ++i) {
        const uint32_t same = s0[i] == xv[i];
        all += same;
        spread += same & (spreads[i] != 0);
        resolved += same & (mask[i] != 0);
      }
      equal_all[v] += all;
      equal_spread[v] += spread;
      equal_resolved[v] += resolved;
    }
    // To Y coordinates, unresolved elements zeroed.
    const float* pv = x[pivot];
    for (int v = 0; v < m; ++v) {
      const float* xv = x[v];
      float* yv = y[v];
      if (v == pivot) {
        for (size_t i = 0; i < n; ++i) yv[i] = xv[i] * mask[i];
      } else {
        for (size_t i = 0; i < n; ++i) yv[i] = (xv[i] - pv[i]) * mask[i];
      }
    }
    for (size_t b = 0; b < n; b += kGramBlock) {
      const size_t len = std::min(kGramBlock, n - b);
      const float* yb[kMaxVectors];
      for (int v = 0; v < m; ++v) yb[v] = y[v] + b;
      const GramPair* p = pass.pairs.data();
      if (m == 2) {
        block_gram<2>(p, yb, len, part.gram);
      } else if (m == 3) {
        block_gram<3>(p, yb, len, part.gram);
      } else if (m == 4) {
        block_gram<4>(p, yb, len, part.gram);
      } else {
        size_t left = pass.pairs.size();
        for (; left >= 4; left -= 4, p += 4) block_dots<4>(p, yb, len, part.gram);
        if (left == 3) block_dots<3>(p, yb, len, part.gram);
        if (left == 2) block_dots<2>(p, yb, len, part.gram);
        if (left == 1) block_dots<1>(p, yb, len, part.gram);
      }
    }
  }
  part.n = count;
  part.n_resolved = n_resolved;
  part.n_spread = n_spread;
  for (int v = 1; v < m; ++v) {
    part.equal_all[v] = equal_all[v];
    part.equal[v] = equal_spread[v];
    part.equal_resolved[v] = equal_resolved[v];
  }
  for (const GramPair& p : pass.pairs) part.gram[p.col][p.row] = part.gram[p.row][p.col];
  return part;
}

void set_fused_statistics(bool enabled) { g_fused_statistics = enabled; }

void add_into(ResolvedMoments& acc, const ResolvedMoments& part) {
  const int m = acc.vectors;
  acc.n += part.n;
  acc.n_resolved += part.n_resolved;
  acc.n_spread += part.n_spread;
  for (int v = 0; v < m; ++v) {
    acc.equal[v] += part.equal[v];
    acc.equal_resolved[v] += part.equal_resolved[v];
    acc.equal_all[v] += part.equal_all[v];
  }
  for (int a = 0; a <= m; ++a) {
    for (int b = 0; b <= m; ++b) acc.gram[a][b] += part.gram[a][b];
  }
}

ResolvedMoments accumulate_resolved(const TensorViews& views, double resolve_fraction, int pivot,
                                    const std::vector<bool>& spread_members) {
  const int m = static_cast<int>(views.inputs.size());
  const int p_index = m;  // Y index of P
  std::vector<int> members;
  for (int v = 1; v < m; ++v) {
    if (spread_members.empty() || spread_members[size_t(v - 1)]) members.push_back(v);
  }
  if (members.empty()) {
    for (int v = 1; v < m; ++v) members.push_back(v);
  }
  // The Y vectors that are not identically zero, with their Y index.
  std::vector<std::pair<int, int>> live;  // (x buffer, Y index)
  live.push_back({0, 0});
  for (int v = 1; v < m; ++v) {
    if (v != pivot) live.push_back({v, v});
  }
  live.push_back({pivot, p_index});
  ResolvedMoments init;
  init.vectors = m;
  init.pivot = pivot;
  ResolvedPass pass{&views, resolve_fraction, pivot, m, members, {}};
  for (size_t i = 0; i < live.size(); ++i) {
    for (size_t j = i; j < live.size(); ++j) pass.pairs.push_back({live[i].first, live[j].first, live[i].second, live[j].second});
  }
  // Each task reads the raw bytes of a few consecutive chunks with one pread per vector
  // (chunks_per_read: the scratch does not grow with the vectors); the chunks are still reduced one
  // by one and added in chunk order, so the sums are the same bits.
  const size_t chunks = (views.numel + kDefaultGrain - 1) / kDefaultGrain;
  const size_t group = chunks_per_read(size_t(m) * 2 * kDefaultGrain);
  std::vector<ResolvedMoments> part(chunks, init);
  parallel_for(chunks, group, [&](size_t cb, size_t ce) {
    const size_t begin = cb * kDefaultGrain, end = std::min<size_t>(views.numel, ce * kDefaultGrain);
    const uint8_t* read[kMaxVectors] = {};
    read_group(views, begin, end - begin, read);
    for (size_t c = cb; c < ce; ++c) {
      const size_t first = c * kDefaultGrain, last = std::min<size_t>(views.numel, first + kDefaultGrain);
      const uint8_t* chunk_read[kMaxVectors] = {};
      for (int v = 0; v < m; ++v) chunk_read[v] = read[v] ? read[v] + 2 * (first - begin) : nullptr;
      part[c] = resolved_chunk(pass, first, last, chunk_read);
    }
  });
  ResolvedMoments acc = init;
  for (const ResolvedMoments& p : part) add_into(acc, p);
  return acc;
}

PrefixMoments accumulate_prefix(const TensorViews& views, uint64_t count_limit) {
  const int m = static_cast<int>(views.inputs.size());
  PrefixMoments init;
  init.vectors = m;
  const auto chunk = [&](size_t begin, size_t end) {
    PrefixMoments part;
    part.vectors = m;
    const size_t count = end - begin;
    float* x[kMaxVectors];
    load_vectors(views, begin, count, chunk_buffers(), x);
    part.n = count;
    for (int a = 0; a < m; ++a) {
      double s = 0;
      for (size_t i = 0; i < count; ++i) s += x[a][i];
      part.sum[a] = s;
      for (int b = a; b < m; ++b) part.gram[a][b] = part.gram[b][a] = lane_dot(x[a], x[b], count);
    }
    return part;
  };
  return parallel_reduce(std::min<uint64_t>(views.numel, count_limit), kDefaultGrain, init, chunk,
                         [](PrefixMoments acc, const PrefixMoments& part) {
                           add_into(acc, part);
                           return acc;
                         });
}

namespace {

// Bytes [0, n) mixed eight at a time in four independent lanes, the tail byte by byte (FNV-1a).
uint64_t mix_bytes(const uint8_t* bytes, size_t n) {
  constexpr uint64_t kPrime = 0x9E3779B97F4A7C15ull;
  uint64_t lane[4] = {1469598103934665603ull, 0x632BE59BD9B4E019ull, 0x8CB92BA72F3D8DD7ull,
                      0x2545F4914F6CDD1Dull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int l = 0; l < 4; ++l) {
      uint64_t word;
      std::memcpy(&word, bytes + i + 8 * l, 8);
      lane[l] = (lane[l] ^ word) * kPrime;
      lane[l] ^= lane[l] >> 29;
    }
  }
  uint64_t h = lane[0] ^ (lane[1] * 3) ^ (lane[2] * 5) ^ (lane[3] * 7);
  for (; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

// The hash of bytes [begin, begin + n) of the tensor's data, read with pread into this thread's
// buffer (a read error leaves zeros and is noted for rethrow_read_error).
uint64_t hash_range(const ModelTensor& tensor, uint64_t begin, size_t n) {
  static thread_local std::vector<uint8_t> buffer;
  uint8_t* bytes = at_least(buffer, n);
  try {
    tensor.shard->read(*tensor.info, begin, n, bytes);
  } catch (const Error& e) {
    note_read_error(e);
    std::fill(bytes, bytes + n, uint8_t{0});
  }
  return mix_bytes(bytes, n);
}

}  // namespace

uint64_t tensor_fingerprint(const ModelTensor& tensor, const std::vector<uint64_t>& rows) {
  const uint64_t size = tensor.info->nbytes();
  // Byte-wise FNV-1a over the mapping (one dependent multiply per byte) ran at about 1.3 GB/s per
  // core and was nearly all of a stacked model's assay.
  std::vector<uint64_t> hashes;
  const auto collect = [](std::vector<uint64_t> acc, const std::vector<uint64_t>& p) {
    acc.insert(acc.end(), p.begin(), p.end());
    return acc;
  };
  if (rows.empty()) {
    constexpr size_t kGrain = 1 << 20;
    hashes = parallel_reduce(
        size, kGrain, std::vector<uint64_t>{},
        [&](size_t begin, size_t end) {
          return std::vector<uint64_t>{hash_range(tensor, begin, end - begin)};
        },
        collect);
  } else {
    const std::vector<uint64_t>& shape = tensor.info->shape;
    const uint64_t row_bytes =
        shape.empty() || shape.back() == 0 ? 0 : size / (tensor.info->numel() / shape.back());
    hashes = parallel_reduce(
        rows.size(), 16, std::vector<uint64_t>{},
        [&](size_t begin, size_t end) {
          std::vector<uint64_t> out;
          for (size_t r = begin; r < end; ++r)
            out.push_back(hash_range(tensor, rows[r] * row_bytes, size_t(row_bytes)));
          return out;
        },
        collect);
    hashes.push_back(rows.size());
  }
  uint64_t h = 1469598103934665603ull ^ size;
  for (uint64_t c : hashes) {
    for (int b = 0; b < 8; ++b) h = (h ^ ((c >> (8 * b)) & 0xFF)) * 1099511628211ull;
  }
  return h;
}

}  // namespace alloy::detail
