// Sparsification of task vectors: see sparsify.h for the methods, the tie rule and the algorithm.
#include "sparsify.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "bracket_bins_lanes.h"
#include "keep_words.h"
#include "l1_terms_lanes.h"
#include "method_util.h"

namespace alloy::detail {

// The entries of bins[0, n) in [lo, lo + width], packed in order into out (room for n + 16
// entries); returns how many. Versioned by instruction set on x86 (GCC/clang function
// multiversioning): AVX-512 packs 16 entries per compress; the default is a branch-free filter.
#if defined(__x86_64__) || defined(__i386__)
#define ALLOY_DEFAULT_VERSION __attribute__((target("default")))
#else
#define ALLOY_DEFAULT_VERSION
#endif
ALLOY_DEFAULT_VERSION size_t pack_bins_inside(const uint32_t* bins, size_t n, uint32_t lo,
                                                            uint32_t width, uint32_t* out) {
  size_t k = 0;
  for (size_t j = 0; j < n; ++j) {
    out[k] = bins[j];
    k += bins[j] - lo <= width;
  }
  return k;
}
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) size_t pack_bins_inside(const uint32_t* bins, size_t n, uint32_t lo,
                                                            uint32_t width, uint32_t* out) {
  size_t k = 0, j = 0;
  const __m512i low = _mm512_set1_epi32(static_cast<int>(lo)), span = _mm512_set1_epi32(static_cast<int>(width));
  for (; j + 16 <= n; j += 16) {
    const __m512i v = _mm512_loadu_si512(bins + j);
    const __mmask16 inside = _mm512_cmple_epu32_mask(_mm512_sub_epi32(v, low), span);
    // Compressed in a register, then stored whole: the compress-to-memory form is microcoded and
    // slow on some cores (AMD Zen 4).
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(inside, v));
    k += static_cast<size_t>(__builtin_popcount(inside));
  }
  for (; j < n; ++j) {
    out[k] = bins[j];
    k += bins[j] - lo <= width;
  }
  return k;
}
#endif

namespace {

std::atomic<size_t> g_stream_grain{0};
std::atomic<size_t> g_output_window{0};
std::atomic<uint64_t> g_held_source_bytes{0};  // set_held_source_bytes

thread_local std::vector<float> t_run;  // one run of x, then one of base (streamed views)
thread_local std::vector<uint16_t> t_bits_run;  // the same as bf16 bits (TaskVectorSet::bits)

// Calls fn(first, x, base, len) for consecutive runs covering [begin, end) in index order, x[j] and
// base[j] being elements first + j: one run pointing into the buffers of a whole-tensor view, or
// runs of stream_grain() elements loaded into this thread's scratch.
template <class Fn>
void for_each_run(const TaskVectorView& tv, size_t begin, size_t end, Fn&& fn) {
  if (begin >= end) return;
  if (!tv.load) {
    fn(begin, tv.x + begin, tv.base + begin, end - begin);
    return;
  }
  const size_t grain = stream_grain();
  std::vector<float>& run = t_run;  // a worker's own instance: called inside the parallel loops
  if (run.size() < 2 * grain) run.resize(2 * grain);
  for (size_t first = begin; first < end; first += grain) {
    const size_t len = std::min(grain, end - first);
    tv.load(first, len, run.data(), run.data() + grain);
    fn(first, run.data(), run.data() + grain, len);
  }
}

// The rounding of mergekit's random masks' "work dtype": bf16 stays bf16, everything else is done
// in float32 (torch.bernoulli has no CPU float16 kernel, so mergekit upcasts).
template <class R>
using WorkRounding = std::conditional_t<R::dtype == DType::BF16, RoundBF16, RoundF32>;

// A fixed partition of [0, n) for the selection passes: at most 16 chunks of at least 2^18
// elements (each chunk has its own histograms, zeroed and summed whole: with 64 chunks of 2^16 that
// cost half as much as counting the entries), each a multiple of 64 elements, each below 2^31.
struct Chunks {
  size_t n, size, count;
  explicit Chunks(size_t total) : n(total) {
    size_t target = std::min<size_t>(16, (n + 262143) / 262144);
    target = std::max<size_t>({target, size_t{1}, (n >> 31) + 1});
    size = ((n + target - 1) / target + 63) / 64 * 64;
    count = (n + size - 1) / size;
  }
  size_t begin(size_t c) const { return c * size; }
  size_t end(size_t c) const { return std::min(n, (c + 1) * size); }
};

constexpr size_t kHighBins = size_t{1} << 15;  // key >> 16: the key has 31 significant bits
// The bracketed histogram (RankSelector::choose_brackets): tensors of at least 2^20 entries, a
// sample of the first 2048 entries of each selection chunk (at most 16 chunks of at least 2^18).
constexpr size_t kBracketMinEntries = size_t{1} << 20;
constexpr size_t kSamplePerChunk = 2048;
std::atomic<uint64_t> g_bracketed{0}, g_bracket_misses{0};  // selection_bracket_counts()
constexpr size_t kLowBins = size_t{1} << 16;

// Per-thread scratch of the selection (see method_util.h: reused across tensors).
thread_local std::vector<uint32_t> t_high_hist;
thread_local std::vector<uint32_t> t_sample_hist;  // the bracket's sample, one model at a time
thread_local std::vector<std::vector<uint16_t>> t_candidates;  // per boundary cut

// Calls fn(first, base, xs, len) for consecutive runs covering [begin, end) of the set in index
// order, base[j] and xs[p][j] being element first + j of the base and of model models[p]: one run
// into the whole-tensor buffers, or runs of stream_grain() elements loaded into this thread's
// scratch, the base once for all the models. The rows are float32 values, or (set.bits) bf16
// bits, which fn widens with source_value: fn is called with either pointer type.
template <class Fn>
void for_each_run(const TaskVectorSet& set, const std::vector<size_t>& models, size_t begin,
                  size_t end, Fn&& fn) {
  if (begin >= end) return;
  const size_t count = models.size();
  if (set.bits) {
    const size_t grain = stream_grain();
    std::vector<uint16_t>& run = t_bits_run;  // a worker's own instance
    if (run.size() < (count + 1) * grain) run.resize((count + 1) * grain);
    std::vector<const uint16_t*> xs(count);
    for (size_t first = begin; first < end; first += grain) {
      const size_t len = std::min(grain, end - first);
      const uint16_t* base = set.bits(set.count, first, len, run.data());
      for (size_t p = 0; p < count; ++p)
        xs[p] = set.bits(models[p], first, len, run.data() + (p + 1) * grain);
      fn(first, base, xs.data(), len);
    }
    return;
  }
  std::vector<const float*> xs(count);
  if (!set.load) {
    for (size_t p = 0; p < count; ++p) xs[p] = set.xs[models[p]] + begin;
    fn(begin, set.base + begin, xs.data(), end - begin);
    return;
  }
  const size_t grain = stream_grain();
  std::vector<float>& run = t_run;  // a worker's own instance: called inside the parallel loops
  if (run.size() < (count + 1) * grain) run.resize((count + 1) * grain);
  for (size_t first = begin; first < end; first += grain) {
    const size_t len = std::min(grain, end - first);
    set.load(set.count, first, len, run.data());
    for (size_t p = 0; p < count; ++p) {
      float* x = run.data() + (p + 1) * grain;
      set.load(models[p], first, len, x);
      xs[p] = x;
    }
    fn(first, run.data(), xs.data(), len);
  }
}

// A cut at descending rank r, while it is found: with `key` the key of the element at rank r and
// `need` how many of the elements with that key come before the cut (those first in index order),
// an element is before the cut iff its key is larger, or equal and among the first `need` such
// elements. equal_prefix[c]: the elements with key == `key` in the chunks before chunk c (c up to
// the chunk count). The cut at rank 0 is key 0xFFFFFFFF with need 0; the one at rank n, key 0
// with an unlimited need.
struct Cut {
  uint32_t key = 0xFFFFFFFFu;
  uint64_t need = 0;
  std::vector<uint64_t> equal_prefix;
};

// Radix selection of descending rank ranges, for several models of a set at once: every pass
// reads each run of the base and of the models once (for_each_run above), then works model by
// model on it. The result is each model's implicit rule (DeltaMask: the cuts at lo and hi as
// RankCuts), found without a pass that marks the elements: the histogram pass gives each chunk's
// count of a cut's key, so only the one chunk where the cut's ties end is read again.
template <class R>
class RankSelector {
 public:
  // Model `model` of the set keeps ranks [lo, hi): its rule is set in *mask.
  struct Target {
    size_t model;
    uint64_t lo, hi;
    DeltaMask* mask;
  };

  RankSelector(const TaskVectorSet& set, R rnd) : set_(set), rnd_(rnd), chunks_(set.n) {}

  void select(const std::vector<Target>& targets) {
    const size_t n = set_.n;
    for (const Target& t : targets) {
      DeltaMask& mask = *t.mask;
      mask.bits = nullptr;
      mask.has_low = false;
      mask.high = RankCut{};  // keeps nothing
      if (t.lo >= t.hi || n == 0) continue;
      if (t.lo == 0 && t.hi >= n) {
        mask.high = RankCut{0, UINT64_MAX};  // keeps everything
        continue;
      }
      active_.push_back(t);
      models_.push_back(t.model);
    }
    if (active_.empty()) return;
    // Cuts 2p (at lo) and 2p + 1 (at hi) of active model p. With lo == 0 (magnitude: keep the top
    // k) nothing is before the low cut, and the rule skips it.
    std::vector<uint64_t> ranks;
    for (const Target& t : active_) {
      ranks.push_back(t.lo);
      ranks.push_back(t.hi);
    }
    bracketed_ = choose_brackets(ranks);
    histogram_high();
    if (bracketed_ && !brackets_hold(ranks)) {  // the sample misled: count every bin
      g_bracket_misses.fetch_add(1, std::memory_order_relaxed);
      bracketed_ = false;
      histogram_high();
    }
    if (bracketed_) g_bracketed.fetch_add(1, std::memory_order_relaxed);
    find_cuts(ranks);
    const std::vector<RankCut> found = locate_cuts();
    for (size_t p = 0; p < active_.size(); ++p) {
      DeltaMask& mask = *active_[p].mask;
      mask.high = found[2 * p + 1];
      mask.low = found[2 * p];
      mask.has_low = active_[p].lo > 0;
    }
  }

 private:
  // Each cut as a RankCut: the index of its first tie that is not before it (the need-th element
  // of key `key` in index order). The chunk c that holds it is the one with equal_prefix[c] <=
  // need < equal_prefix[c + 1]; when need == equal_prefix[c], the chunk's first index serves and
  // nothing is read; otherwise only chunk c of that model (and of the base) is read again.
  std::vector<RankCut> locate_cuts() {
    const size_t cut_count = cuts_.size();
    std::vector<RankCut> found(cut_count);
    std::vector<std::pair<size_t, size_t>> scans;  // (cut, chunk) to read
    for (size_t q = 0; q < cut_count; ++q) {
      const Cut& cut = cuts_[q];
      found[q].key = cut.key;
      if (cut.need == 0) continue;  // index 0: no tie is before the cut
      const std::vector<uint64_t>& prefix = cut.equal_prefix;
      if (prefix.empty() || cut.need >= prefix.back()) {  // every tie (the cut at rank n)
        found[q].index = UINT64_MAX;
        continue;
      }
      const size_t c = static_cast<size_t>(
          std::upper_bound(prefix.begin(), prefix.end(), cut.need) - prefix.begin() - 1);
      found[q].index = chunks_.begin(c);
      if (prefix[c] != cut.need) scans.emplace_back(q, c);
    }
    parallel_for(scans.size(), 1, [&](size_t sb, size_t se) {
      for (size_t s = sb; s < se; ++s) {
        const size_t c = scans[s].second;
        const Cut& cut = cuts_[scans[s].first];
        RankCut& result = found[scans[s].first];
        const std::vector<size_t> model = {models_[scans[s].first / 2]};
        uint64_t ahead = cut.need - cut.equal_prefix[c];  // ties of chunk c before the cut
        const size_t end = chunks_.end(c), grain = stream_grain();
        // Run by run, so that the reading stops at the run that holds the index.
        for (size_t first = chunks_.begin(c); first < end && ahead != UINT64_MAX; first += grain) {
          for_each_run(
              set_, model, first, std::min(end, first + grain),
              [&](size_t at, const auto* b, const auto* const* xs, size_t len) {
                const auto* x = xs[0];
                // A run with no more ties than are still ahead is passed over by a
                // count that vectorises; only the run that holds the index is scanned.
                if (const uint64_t ties = count_key(x, b, len, cut.key); ties <= ahead) {
                  ahead -= ties;
                  return;
                }
                for (size_t j = 0; j < len && ahead != UINT64_MAX; ++j) {
                  if (magnitude_key(rnd_(source_value(x, j) - source_value(b, j))) != cut.key)
                    continue;
                  if (ahead == 0) {
                    result.index = at + j;
                    ahead = UINT64_MAX;  // found
                  } else {
                    --ahead;
                  }
                }
              });
        }
      }
    });
    return found;
  }

  // The bins each model's histogram counts (bracketed_): from a sample of every chunk's first
  // kSamplePerChunk entries, the bins around each of its cuts' ranks, wide enough that the cut
  // falls inside unless the sample is far from the whole (then brackets_hold() fails and every bin
  // is counted). Entries above the bracket are only counted, entries below it only compared, so
  // the scattered increments are those of the few entries near the cut. False (count every bin)
  // for tensors too small for the sample to pay.
  bool choose_brackets(const std::vector<uint64_t>& ranks) {
    const size_t n = set_.n, models = active_.size();
    if (n < kBracketMinEntries) return false;
    // The chunks' samples side by side, in parallel: sample[p][c * kSamplePerChunk + j], j < taken[c].
    std::vector<std::vector<uint16_t>> sample(models, std::vector<uint16_t>(chunks_.count * kSamplePerChunk));
    std::vector<size_t> taken(chunks_.count);
    parallel_for(chunks_.count, 1, [&](size_t cb, size_t ce) {
      for (size_t c = cb; c < ce; ++c) {
        const size_t begin = chunks_.begin(c), end = std::min(chunks_.end(c), begin + kSamplePerChunk);
        taken[c] = end - begin;
        for_each_run(set_, models_, begin, end,
                     [&](size_t first, const auto* b, const auto* const* xs, size_t len) {
                       for (size_t p = 0; p < models; ++p) {
                         sample_bins(xs[p], b, len,
                                     sample[p].data() + c * kSamplePerChunk + (first - begin));
                       }
                     });
      }
    });
    size_t sampled = 0;  // per model: the chunks' first kSamplePerChunk entries, or all of a short one
    for (size_t c = 0; c < chunks_.count; ++c) sampled += taken[c];
    // Every active model has a cut to find (select(): 0 < lo, or hi < n), so every bracket below
    // ends up with lo <= hi.
    bracket_lo_.assign(models, kHighBins - 1);
    bracket_hi_.assign(models, 0);
    parallel_for(models, 1, [&](size_t pb, size_t pe) {
      std::vector<uint32_t>& count = t_sample_hist;  // a worker's own instance
      count.resize(kHighBins);
      for (size_t p = pb; p < pe; ++p) {
        std::fill(count.begin(), count.end(), 0u);
        for (size_t c = 0; c < chunks_.count; ++c) {
          const uint16_t* keys = sample[p].data() + c * kSamplePerChunk;
          for (size_t j = 0; j < taken[c]; ++j) ++count[keys[j]];
        }
        // The bin of the sample's entry at descending rank i: where the counts from the top bin
        // down first exceed i.
        const auto bin_at = [&](size_t i) {
          size_t bin = kHighBins, seen = 0;
          while (bin-- > 1 && seen + count[bin] <= i) seen += count[bin];
          return static_cast<uint32_t>(bin);
        };
        const double size = static_cast<double>(sampled);
        for (size_t q = 2 * p; q < 2 * p + 2; ++q) {
          if (ranks[q] == 0 || ranks[q] >= n) continue;  // found without the histogram
          const double share = static_cast<double>(ranks[q]) / static_cast<double>(n);
          // Four standard deviations of a sampled rank, plus 0.5% of the sample for the chunks'
          // first entries not being a random sample.
          const double margin = 4.0 * std::sqrt(size * share * (1.0 - share)) + 0.005 * size + 8.0;
          const double at = share * size;
          const uint32_t hi = bin_at(static_cast<size_t>(std::max(0.0, at - margin)));
          const uint32_t lo = bin_at(static_cast<size_t>(std::min(size - 1.0, at + margin)));
          bracket_lo_[p] = std::min(bracket_lo_[p], lo), bracket_hi_[p] = std::max(bracket_hi_[p], hi);
        }
        // A bracket that holds much of the sample saves nothing (Model Breadcrumbs' two cuts far
        // apart): that model counts every bin.
        uint64_t inside = 0;
        for (uint32_t bin = bracket_lo_[p]; bin <= bracket_hi_[p]; ++bin) inside += count[bin];
        if (4 * inside > sampled) bracket_lo_[p] = 0, bracket_hi_[p] = kHighBins - 1;
      }
    });
    for (size_t p = 0; p < models; ++p) {
      if (!every_bin_bracket(p)) return true;
    }
    return false;  // no model gains: the plain pass
  }

  bool every_bin_bracket(size_t p) const { return bracket_lo_[p] == 0 && bracket_hi_[p] == kHighBins - 1; }
  // Whether model p's histogram counts every bin (not bracketed_, or its bracket is every bin).
  bool counts_every_bin(size_t p) const { return !bracketed_ || every_bin_bracket(p); }

  // Whether every cut to find lies in its model's bracket: more entries above or in the bracket
  // than its rank, and no more above it than its rank.
  bool brackets_hold(const std::vector<uint64_t>& ranks) const {
    for (size_t q = 0; q < ranks.size(); ++q) {
      if (ranks[q] == 0 || ranks[q] >= set_.n) continue;
      const size_t p = q / 2;
      uint64_t inside = 0;
      for (uint32_t bin = bracket_lo_[p]; bin <= bracket_hi_[p]; ++bin) inside += total_[p * kHighBins + bin];
      if (above_[p] > ranks[q] || above_[p] + inside <= ranks[q]) return false;
    }
    return true;
  }

  // Per-chunk histograms of key >> 16 of every active model, and their totals: of every bin, or
  // (bracketed_) of the bins of each model's bracket, with above_ the entries above it.
  // (thread_local buffers are bound here, in the calling thread: inside the parallel region the
  // name would denote each worker's own instance.)
  void histogram_high() {
    const size_t models = active_.size(), stride = chunks_.count * kHighBins;
    std::vector<uint32_t>& hist = t_high_hist;
    hist.resize(models * stride);
    hist_ = hist.data();
    std::vector<uint64_t> above(models * chunks_.count, 0);  // per model and chunk
    parallel_for(chunks_.count, 1, [&](size_t cb, size_t ce) {
      for (size_t c = cb; c < ce; ++c) {
        for (size_t p = 0; p < models; ++p) {
          uint32_t* h = hist_ + p * stride + c * kHighBins;
          if (counts_every_bin(p)) {
            std::fill(h, h + kHighBins, 0u);
          } else if (bracket_lo_[p] <= bracket_hi_[p]) {
            std::fill(h + bracket_lo_[p], h + bracket_hi_[p] + 1, 0u);
          }
        }
        for_each_run(set_, models_, chunks_.begin(c), chunks_.end(c),
                     [&](size_t, const auto* b, const auto* const* xs, size_t len) {
                       for (size_t p = 0; p < models; ++p) {
                         uint32_t* h = hist_ + p * stride + c * kHighBins;
                         if (counts_every_bin(p)) {
                           count_high_bins(xs[p], b, len, h);
                         } else {
                           above[p * chunks_.count + c] += count_bracket_bins(xs[p], b, len, bracket_lo_[p], bracket_hi_[p], h);
                         }
                       }
                     });
      }
    });
    total_.assign(models * kHighBins, 0);
    above_.assign(models, 0);
    if (bracketed_) {
      for (size_t p = 0; p < models; ++p) {
        for (size_t c = 0; c < chunks_.count; ++c) {
          above_[p] += above[p * chunks_.count + c];
          const uint32_t* h = hist_ + p * stride + c * kHighBins;
          for (uint32_t bin = bracket_lo_[p]; bin <= bracket_hi_[p]; ++bin) total_[p * kHighBins + bin] += h[bin];
        }
      }
      return;
    }
    // The totals over bin ranges in parallel (integer sums: the same for any split): summed on
    // one thread they were a serial read of every chunk's histograms, 4% of a 1 GB ties merge.
    constexpr size_t kBinGrain = 4096;  // divides kHighBins: a range of bins is one model's
    parallel_for(models * kHighBins, kBinGrain, [&](size_t ib, size_t ie) {
      for (size_t first = ib; first < ie; first += kBinGrain) {
        const size_t p = first / kHighBins, b0 = first % kHighBins, len = std::min(kBinGrain, ie - first);
        uint64_t* total = total_.data() + first;
        for (size_t c = 0; c < chunks_.count; ++c) {
          const uint32_t* h = hist_ + p * stride + c * kHighBins + b0;
          for (size_t b = 0; b < len; ++b) total[b] += h[b];
        }
      }
    });
  }

  // The histogram bin of an entry: the high 15 bits of its key.
  [[gnu::always_inline]] uint32_t high_bin(float x, float b) const { return magnitude_key(rnd_(x - b)) >> 16; }

  // ++h[bin] for every entry's bin (the high 15 bits of its key). The bins of a block are computed
  // first, in a loop that vectorises (one clone per instruction set, ALLOY_ELEMENT_KERNEL), then
  // counted one by one.
  template <class In>
  [[gnu::always_inline]] inline void count_high_bins_rows(const In* x, const In* b, size_t len,
                                                          uint32_t* h) const {
    constexpr size_t kBlock = 256;
    uint32_t bins[kBlock];
    for (size_t j0 = 0; j0 < len; j0 += kBlock) {
      const size_t block = std::min(kBlock, len - j0);
      for (size_t j = 0; j < block; ++j)
        bins[j] = high_bin(source_value(x, j0 + j), source_value(b, j0 + j));
      for (size_t j = 0; j < block; ++j) ++h[bins[j]];
    }
  }

  // out[j] = the bin of entry j, in a loop that vectorises.
  template <class In>
  [[gnu::always_inline]] inline void sample_bins_rows(const In* x, const In* b, size_t len,
                                                      uint16_t* out) const {
    for (size_t j = 0; j < len; ++j)
      out[j] = static_cast<uint16_t>(high_bin(source_value(x, j), source_value(b, j)));
  }

  // ++h[bin] for every entry whose bin lies in [lo, hi] (none when lo > hi); returns how many lie
  // above hi. The bins and the count above come from a loop that vectorises; the bins inside are
  // packed (pack_bins_inside) and only those are counted one by one.
  template <class In>
  [[gnu::always_inline]] inline uint64_t count_bracket_bins_rows(const In* x, const In* b,
                                                                 size_t len, uint32_t lo,
                                                                 uint32_t hi, uint32_t* h) const {
    constexpr size_t kBlock = 256;
    uint32_t bins[kBlock], inside[kBlock + 16];
    uint16_t inside_words[kBlock + 32];  // the register kernel's
    // A narrow bracket holds few bins, so consecutive entries often share one and their increments
    // wait on each other; four interleaved counts per bin, added into h at the end, break the
    // chains. (A wide one has few repeats and counts into h directly.)
    constexpr uint32_t kSplitBins = 512;
    const bool split = lo <= hi && hi - lo < kSplitBins;
    uint32_t counts[4][kSplitBins];
    if (split) {
      for (auto& c : counts) std::fill(c, c + (hi - lo + 1), 0u);
    }
    uint64_t above = 0;
    // bf16 bits on an AVX-512 CPU: the bins inside and the count above from one register kernel.
    bool in_lanes = false;
    if constexpr (std::is_same_v<In, uint16_t> && std::is_same_v<R, RoundBF16>) {
      in_lanes = bracket_lanes_ && lo <= hi;
    }
    // Counts the bins inside of a block, from either kernel.
    const auto count_inside = [&](const auto* inside, size_t count) {
      if (!split) {
        for (size_t k = 0; k < count; ++k) ++h[inside[k]];
        return;
      }
      size_t k = 0;
      for (; k + 4 <= count; k += 4) {
        ++counts[0][inside[k] - lo];
        ++counts[1][inside[k + 1] - lo];
        ++counts[2][inside[k + 2] - lo];
        ++counts[3][inside[k + 3] - lo];
      }
      for (; k < count; ++k) ++counts[0][inside[k] - lo];
    };
    for (size_t j0 = 0; j0 < len; j0 += kBlock) {
      const size_t block = std::min(kBlock, len - j0);
      uint32_t above_block = 0;
      if (in_lanes) {
        if constexpr (std::is_same_v<In, uint16_t>) {
          const size_t count =
              bracket_bins_bf16_avx512(x + j0, b + j0, block, lo, hi, inside_words, &above_block);
          above += above_block;
          count_inside(inside_words, count);
        }
        continue;
      }
      for (size_t j = 0; j < block; ++j) {
        const uint32_t bin = high_bin(source_value(x, j0 + j), source_value(b, j0 + j));
        bins[j] = bin;
        above_block += bin > hi;
      }
      above += above_block;
      if (lo <= hi) count_inside(inside, pack_bins_inside(bins, block, lo, hi - lo, inside));
    }
    if (split) {
      for (uint32_t bin = 0; bin <= hi - lo; ++bin) {
        h[lo + bin] += counts[0][bin] + counts[1][bin] + counts[2][bin] + counts[3][bin];
      }
    }
    return above;
  }

  // The low 16 bits of the keys of the entries in bin `bin`, in index order, into out; returns
  // how many. The keys of a block come from a loop that vectorises; those in the bin are packed
  // (pack_bins_inside, on the keys: bin << 16 up to 0xFFFF more) into a block of the stack, so
  // nothing is written past the entries the histogram counted. A scalar loop with a conditional
  // store per entry took 36% of a float16 TIES merge.
  template <class In>
  [[gnu::always_inline]] inline size_t gather_low_halves_rows(const In* x, const In* b, size_t len,
                                                              uint32_t bin, uint16_t* out) const {
    constexpr size_t kBlock = 256;
    uint32_t keys[kBlock], inside[kBlock + 16];
    size_t total = 0;
    for (size_t j0 = 0; j0 < len; j0 += kBlock) {
      const size_t block = std::min(kBlock, len - j0);
      for (size_t j = 0; j < block; ++j)
        keys[j] = magnitude_key(rnd_(source_value(x, j0 + j) - source_value(b, j0 + j)));
      const size_t count = pack_bins_inside(keys, block, bin << 16, 0xFFFFu, inside);
      for (size_t k = 0; k < count; ++k) out[total + k] = static_cast<uint16_t>(inside[k]);
      total += count;
    }
    return total;
  }

  // How many entries of a run have key `key`.
  template <class In>
  [[gnu::always_inline]] inline uint64_t count_key_rows(const In* x, const In* b, size_t len,
                                                        uint32_t key) const {
    uint32_t count = 0;  // a run lies in one chunk: below 2^31 entries
    for (size_t j = 0; j < len; ++j)
      count += magnitude_key(rnd_(source_value(x, j) - source_value(b, j))) == key;
    return count;
  }

  // The kernels above on float32 rows and on bf16 bits (TaskVectorSet::bits), one clone per
  // instruction set each. (gather_low_halves' bits form is never called: a bf16 bin is one key, so
  // find_cuts has no boundary pass for bf16; it exists because the passes' lambdas take either row.)
  ALLOY_ELEMENT_KERNEL void count_high_bins(const float* x, const float* b, size_t len,
                                            uint32_t* h) const {
    count_high_bins_rows(x, b, len, h);
  }
  ALLOY_BF16_BITS_KERNEL void count_high_bins(const uint16_t* x, const uint16_t* b, size_t len,
                                              uint32_t* h) const {
    count_high_bins_rows(x, b, len, h);
  }
  ALLOY_ELEMENT_KERNEL void sample_bins(const float* x, const float* b, size_t len,
                                        uint16_t* out) const {
    sample_bins_rows(x, b, len, out);
  }
  ALLOY_BF16_BITS_KERNEL void sample_bins(const uint16_t* x, const uint16_t* b, size_t len,
                                          uint16_t* out) const {
    sample_bins_rows(x, b, len, out);
  }
  ALLOY_ELEMENT_KERNEL uint64_t count_bracket_bins(const float* x, const float* b, size_t len,
                                                   uint32_t lo, uint32_t hi, uint32_t* h) const {
    return count_bracket_bins_rows(x, b, len, lo, hi, h);
  }
  ALLOY_BF16_BITS_KERNEL uint64_t count_bracket_bins(const uint16_t* x, const uint16_t* b,
                                                     size_t len, uint32_t lo, uint32_t hi,
                                                     uint32_t* h) const {
    return count_bracket_bins_rows(x, b, len, lo, hi, h);
  }
  ALLOY_ELEMENT_KERNEL size_t gather_low_halves(const float* x, const float* b, size_t len,
                                                uint32_t bin, uint16_t* out) const {
    return gather_low_halves_rows(x, b, len, bin, out);
  }
  ALLOY_BF16_BITS_KERNEL size_t gather_low_halves(const uint16_t* x, const uint16_t* b, size_t len,
                                                  uint32_t bin, uint16_t* out) const {
    return gather_low_halves_rows(x, b, len, bin, out);
  }
  ALLOY_ELEMENT_KERNEL uint64_t count_key(const float* x, const float* b, size_t len,
                                          uint32_t key) const {
    return count_key_rows(x, b, len, key);
  }
  ALLOY_BF16_BITS_KERNEL uint64_t count_key(const uint16_t* x, const uint16_t* b, size_t len,
                                            uint32_t key) const {
    return count_key_rows(x, b, len, key);
  }

  uint32_t chunk_count_in_bin(size_t p, size_t c, size_t bin) const {
    return hist_[(p * chunks_.count + c) * kHighBins + bin];
  }

  // cuts_[q] := the cut at descending rank ranks[q] of active model q / 2.
  void find_cuts(const std::vector<uint64_t>& ranks) {
    const size_t n = set_.n, cut_count = ranks.size();
    cuts_.assign(cut_count, Cut{});
    std::vector<size_t> bins(cut_count);
    std::vector<uint64_t> above(cut_count, 0);
    std::vector<size_t> boundary;  // cuts that need the low bits of their bin
    for (size_t q = 0; q < cut_count; ++q) {
      Cut& cut = cuts_[q];
      const uint64_t r = ranks[q];
      if (r == 0) continue;
      if (r >= n) {
        cut.key = 0;
        cut.need = UINT64_MAX;
        continue;
      }
      const uint64_t* total = total_.data() + q / 2 * kHighBins;
      // From the top bin down, or (bracketed_) from the top of the bracket, past the entries above
      // it (brackets_hold: the cut's bin is in the bracket).
      size_t bin = kHighBins;
      if (bracketed_) {
        above[q] = above_[q / 2];
        bin = bracket_hi_[q / 2] + size_t{1};
      }
      while (bin-- > 0) {
        if (above[q] + total[bin] > r) break;
        above[q] += total[bin];
      }
      bins[q] = bin;
      if (set_.dtype == DType::BF16) {
        // bf16 deltas have zero low 16 bits: the bin is one key.
        cut.key = static_cast<uint32_t>(bin << 16);
        cut.need = r - above[q];
        std::vector<uint64_t> equal_per_chunk(chunks_.count);
        for (size_t c = 0; c < chunks_.count; ++c)
          equal_per_chunk[c] = chunk_count_in_bin(q / 2, c, bin);
        set_prefix(cut, equal_per_chunk);
      } else {
        boundary.push_back(q);
      }
    }
    if (boundary.empty()) return;
    // Gather the low 16 bits of the keys in each boundary cut's bin, chunk by chunk in index
    // order, in one pass for all of them.
    const size_t cuts = boundary.size();
    std::vector<std::vector<uint64_t>> offset(cuts, std::vector<uint64_t>(chunks_.count + 1, 0));
    std::vector<std::vector<uint16_t>>& candidates = t_candidates;
    if (candidates.size() < cuts) candidates.resize(cuts);
    for (size_t e = 0; e < cuts; ++e) {
      const size_t q = boundary[e];
      for (size_t c = 0; c < chunks_.count; ++c)
        offset[e][c + 1] = offset[e][c] + chunk_count_in_bin(q / 2, c, bins[q]);
      candidates[e].resize(offset[e].back());
    }
    parallel_for(chunks_.count, 1, [&](size_t cb, size_t ce) {
      std::vector<uint16_t*> out(cuts);
      for (size_t c = cb; c < ce; ++c) {
        for (size_t e = 0; e < cuts; ++e) out[e] = candidates[e].data() + offset[e][c];
        for_each_run(set_, models_, chunks_.begin(c), chunks_.end(c),
                     [&](size_t, const auto* b, const auto* const* xs, size_t len) {
                       for (size_t e = 0; e < cuts; ++e) {
                         const size_t q = boundary[e], bin = bins[q];
                         if (offset[e][c + 1] == offset[e][c]) continue;
                         out[e] += gather_low_halves(xs[q / 2], b, len, static_cast<uint32_t>(bin), out[e]);
                       }
                     });
      }
    });
    for (size_t e = 0; e < cuts; ++e) {
      const size_t q = boundary[e];
      const std::vector<uint16_t>& mine = candidates[e];
      std::vector<uint64_t> low_hist(kLowBins, 0);
      for (uint16_t v : mine) ++low_hist[v];
      size_t low = kLowBins;
      while (low-- > 0) {
        if (above[q] + low_hist[low] > ranks[q]) break;
        above[q] += low_hist[low];
      }
      Cut& cut = cuts_[q];
      cut.key = static_cast<uint32_t>((bins[q] << 16) | low);
      cut.need = ranks[q] - above[q];
      std::vector<uint64_t> equal_per_chunk(chunks_.count);
      for (size_t c = 0; c < chunks_.count; ++c) {
        equal_per_chunk[c] = static_cast<uint64_t>(
            std::count(mine.begin() + static_cast<ptrdiff_t>(offset[e][c]),
                       mine.begin() + static_cast<ptrdiff_t>(offset[e][c + 1]),
                       static_cast<uint16_t>(low)));
      }
      set_prefix(cut, equal_per_chunk);
    }
  }

  void set_prefix(Cut& cut, const std::vector<uint64_t>& equal_per_chunk) const {
    cut.equal_prefix.assign(chunks_.count + 1, 0);
    for (size_t c = 0; c < chunks_.count; ++c)
      cut.equal_prefix[c + 1] = cut.equal_prefix[c] + equal_per_chunk[c];
  }

  const TaskVectorSet& set_;
  R rnd_;
  bool bracket_lanes_ = can_bracket_bins_bf16_avx512();  // bracket_bins_lanes.h's kernel
  Chunks chunks_;
  std::vector<Target> active_;   // the targets that need the passes
  std::vector<size_t> models_;   // their models
  uint32_t* hist_ = nullptr;     // per active model, chunks_.count histograms of kHighBins counts
  std::vector<uint64_t> total_;  // per active model, their sum
  // choose_brackets(): whether the histograms count only each model's bins [lo, hi], and the
  // entries above hi (above_).
  bool bracketed_ = false;
  std::vector<uint32_t> bracket_lo_, bracket_hi_;
  std::vector<uint64_t> above_;
  std::vector<Cut> cuts_;        // per active model, its cuts at lo and hi
};

// The terms of the L1 sums over one block (len <= kL1Block entries, first + j) of one model:
// magnitude[j] = |rnd(x[j] - b[j])|, kept[j] = magnitude[j] where the mask keeps the entry, else
// 0; `delta` is scratch for the block's deltas. Also the block's range (the smallest exponent
// field of a nonzero magnitude, 255 when there is none, and the largest magnitude's bits) and
// both sums added in vector lanes, which are the index order's bits where exact_block_sums holds.
// Branch-free, so that the loops vectorise (one clone per instruction set); on float32 rows or bf16
// bits (TaskVectorSet::bits).
constexpr size_t kL1Block = 256;
// The block's range and sums (l1_terms_lanes.h): the sums in lanes, exact where exact_block_sums
// says so.
using L1Range = L1BlockTerms;
template <class R>
struct L1Terms {
  ALLOY_ELEMENT_KERNEL static L1Range of(const float* x, const float* b, const DeltaMask& mask, size_t first,
                                         size_t len, float* delta, float* magnitude, float* kept) {
    return of_rows(x, b, mask, first, len, delta, magnitude, kept);
  }
  ALLOY_BF16_BITS_KERNEL static L1Range of(const uint16_t* x, const uint16_t* b,
                                           const DeltaMask& mask, size_t first, size_t len,
                                           float* delta, float* magnitude, float* kept) {
    return of_rows(x, b, mask, first, len, delta, magnitude, kept);
  }
  template <class In>
  [[gnu::always_inline]] static inline L1Range of_rows(const In* x, const In* b,
                                                       const DeltaMask& mask, size_t first,
                                                       size_t len, float* delta, float* magnitude,
                                                       float* kept) {
    const R rnd;
    uint32_t keep[kL1Block];
    for (size_t j = 0; j < len; ++j) delta[j] = rnd(source_value(x, j) - source_value(b, j));
    mask.keep_words(delta, first, len, keep);
    uint32_t min_exponent = 255, max_bits = 0;
    for (size_t j = 0; j < len; ++j) {
      const float m = std::fabs(delta[j]);
      magnitude[j] = m;
      kept[j] = and_bits(m, keep[j]);
      uint32_t bits;
      std::memcpy(&bits, &m, 4);
      const uint32_t exponent = bits == 0 ? 255u : bits >> 23;
      min_exponent = exponent < min_exponent ? exponent : min_exponent;
      max_bits = bits > max_bits ? bits : max_bits;
    }
    return {min_exponent, max_bits, lane_sum(magnitude, len), lane_sum(kept, len)};
  }
  // The sum of t[0, len) in double, in four vectors of eight lanes (so that the additions do not
  // wait on each other), reduced pairwise: only called where every partial sum in any order is
  // exact (exact_block_sums), so the order is free.
  [[gnu::always_inline]] static double lane_sum(const float* t, size_t len) {
    typedef float Floats8 __attribute__((vector_size(32)));
    typedef double Doubles8 __attribute__((vector_size(64)));
    Doubles8 lane[4] = {};
    size_t j = 0;
    for (; j + 32 <= len; j += 32) {
      for (size_t k = 0; k < 4; ++k) {
        Floats8 f;
        std::memcpy(&f, t + j + 8 * k, sizeof f);
        lane[k] += __builtin_convertvector(f, Doubles8);
      }
    }
    double tail = 0.0;
    for (; j < len; ++j) tail += static_cast<double>(t[j]);
    const Doubles8 v = (lane[0] + lane[1]) + (lane[2] + lane[3]);
    return (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) + tail;
  }
};

// The exponent of the lowest set bit of a finite nonzero double (its value is a multiple of 2 to
// that power, and of no higher power).
inline int lowest_bit_exponent(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  const int field = static_cast<int>(bits >> 52 & 0x7FF);
  const uint64_t mantissa = (bits & ((uint64_t{1} << 52) - 1)) | (field == 0 ? 0 : uint64_t{1} << 52);
  return std::max(field, 1) - 1075 + __builtin_ctzll(mantissa);
}

// Whether adding a block's terms to the running double sums `all` and `kept` one by one, in index
// order, makes no rounding error at all, so that any order gives the same bits. Every term is a
// value of the compute dtype: a multiple of 2^(its exponent - the dtype's mantissa bits), so of
// 2^L for the block's smallest exponent; the sums are multiples of their lowest set bit. With U the
// smallest of these units, when no partial sum can reach 2^(U + 52) (the sum so far plus len terms
// each at most the largest), every partial sum is a multiple of 2^U below 2^53 units: exact.
// Subnormal exponents count as the smallest normal one; a block with an infinite or NaN term is
// summed in index order.
template <class R>
bool exact_block_sums(const L1Range& range, size_t len, double all, double kept) {
  if (range.min_exponent == 255) return true;  // every term 0: nothing is added
  if (range.max_bits >= 0x7F800000u) return false;
  constexpr int kMantissaBits = R::dtype == DType::BF16 ? 7 : R::dtype == DType::F16 ? 10 : 23;
  int unit = std::max<int>(static_cast<int>(range.min_exponent), 1) - 127 - kMantissaBits;
  if (all != 0.0) unit = std::min(unit, lowest_bit_exponent(all));
  if (kept != 0.0) unit = std::min(unit, lowest_bit_exponent(kept));
  if (unit + 52 < -1022) return false;  // (sums with bits that fine: not worth a subnormal bound)
  float largest;
  std::memcpy(&largest, &range.max_bits, 4);
  const uint64_t limit_bits = static_cast<uint64_t>(unit + 52 + 1023) << 52;  // 2^(unit + 52)
  double limit;
  std::memcpy(&limit, &limit_bits, 8);
  return all + static_cast<double>(len) * static_cast<double>(largest) < limit;
}

// Adds to sums[2p] and sums[2p + 1] the |delta| and the kept |delta| of models p < N over one run
// (entries first + j, j < len), as a plain loop per entry in index order would (the same bits).
// The terms come from L1Terms a block at a time, or, for bf16 bits with a random mask's bits on an
// AVX-512 CPU, from l1_terms_lanes.h's kernel, which keeps no arrays of terms. A block whose
// additions are all exact (exact_block_sums: the usual case) is summed in vector lanes; any other
// block one term at a time in index order, the models' chains interleaved (the kernel's models'
// terms taken again from L1Terms for that).
template <size_t N, class R, class In>
void add_l1_run(size_t first, const In* b, const In* const* xs, const DeltaMask* const* masks,
                size_t len, double* sums) {
  float delta[kL1Block];
  float magnitude[N][kL1Block], kept[N][kL1Block];
  double all_sum[N], kept_sum[N];
  bool in_lanes[N];
  for (size_t p = 0; p < N; ++p) {
    all_sum[p] = sums[2 * p], kept_sum[p] = sums[2 * p + 1];
    in_lanes[p] = false;
    if constexpr (std::is_same_v<In, uint16_t> && std::is_same_v<R, RoundBF16>) {
      in_lanes[p] = masks[p]->bits != nullptr && can_l1_terms_bf16_avx512();
    }
  }
  for (size_t b0 = 0; b0 < len; b0 += kL1Block) {
    const size_t block = std::min(kL1Block, len - b0);
    bool exact = true;
    L1Range ranges[N];
    for (size_t p = 0; p < N; ++p) {
      if (in_lanes[p]) {
        if constexpr (std::is_same_v<In, uint16_t>) {
          ranges[p] = l1_terms_bf16_avx512(xs[p] + b0, b + b0, masks[p]->bits, first + b0, block);
        }
      } else {
        ranges[p] = L1Terms<R>::of(xs[p] + b0, b + b0, *masks[p], first + b0, block, delta,
                                   magnitude[p], kept[p]);
      }
      exact = exact && exact_block_sums<R>(ranges[p], block, all_sum[p], kept_sum[p]);
    }
    if (exact) {
      for (size_t p = 0; p < N; ++p) all_sum[p] += ranges[p].all, kept_sum[p] += ranges[p].kept;
      continue;
    }
    for (size_t p = 0; p < N; ++p) {
      if (in_lanes[p])
        L1Terms<R>::of(xs[p] + b0, b + b0, *masks[p], first + b0, block, delta, magnitude[p],
                       kept[p]);
    }
    for (size_t j = 0; j < block; ++j) {
      for (size_t p = 0; p < N; ++p) {
        all_sum[p] += static_cast<double>(magnitude[p][j]);
        kept_sum[p] += static_cast<double>(kept[p][j]);
      }
    }
  }
  for (size_t p = 0; p < N; ++p) sums[2 * p] = all_sum[p], sums[2 * p + 1] = kept_sum[p];
}

// The L1 sums of mergekit's rescaled_masked_tensor for the models `models` of the set, masks[p]
// being the mask of models[p]: {sum |delta|, sum |kept delta|} per model, from one pass. Each
// fixed block of kDefaultGrain elements summed in index order (run after run when streamed), the
// blocks added in order: the same bits for any thread count and run length.
template <class R>
std::vector<double> l1_sums(const TaskVectorSet& set, R /*rounding: by type*/,
                            const std::vector<size_t>& models,
                            const std::vector<const DeltaMask*>& masks) {
  using Sums = std::vector<double>;  // all, kept: per model
  const size_t count = models.size();
  return parallel_reduce(
      set.n, kDefaultGrain, Sums(2 * count, 0.0),
      [&](size_t begin, size_t end) {
        Sums sums(2 * count, 0.0);
        for_each_run(set, models, begin, end,
                     [&](size_t first, const auto* b, const auto* const* xs, size_t len) {
                       for (size_t p = 0; p < count; p += 4) {
                         const auto* const* x = xs + p;
                         const DeltaMask* const* m = masks.data() + p;
                         double* s = sums.data() + 2 * p;
                         switch (std::min<size_t>(4, count - p)) {
                           case 1: add_l1_run<1, R>(first, b, x, m, len, s); break;
                           case 2: add_l1_run<2, R>(first, b, x, m, len, s); break;
                           case 3: add_l1_run<3, R>(first, b, x, m, len, s); break;
                           default: add_l1_run<4, R>(first, b, x, m, len, s); break;
                         }
                       }
                     });
        return sums;
      },
      [](Sums a, const Sums& b) {
        for (size_t j = 0; j < a.size(); ++j) a[j] += b[j];
        return a;
      });
}

// mergekit's rescaled_masked_tensor with the L1 norm: kept entries are multiplied by
// rnd_W(before / after), before = rnd_W(sum |delta|), after = rnd_W(sum |kept|), unless either
// is below rnd_W(1e-7).
template <class W>
void set_rescale(double all, double kept, W work, DeltaMask& mask) {
  const float before = work(static_cast<float>(all)), after = work(static_cast<float>(kept));
  const float eps = work.param(1e-7);
  if (before < eps || after < eps) return;
  mask.rescaled = true;
  mask.ratio = work(before / after);
}

// DARE: keep with probability p = the density in the work dtype (uniform01(seed, i) < p).
template <class R>
void random_mask(size_t n, const SparsifyOptions& o, std::vector<uint64_t>& words) {
  const uint64_t below = uniform01_below(WorkRounding<R>{}.param(o.density));
  parallel_for(words.size(), kDefaultGrain / 64, [&](size_t wb, size_t we) {
    random_keep_words(o.seed, below, n, wb, we, words.data());
  });
}

// The positions 0..L-1 of one fiber in ascending order of keys[], equal keys by descending position
// (the higher index ranks as smaller), i.e. the reverse of the documented descending order. A
// stable LSD radix sort on 8-bit digits from bit `first_shift` up: O(L) per fiber.
void ascending_rank_order(const std::vector<uint32_t>& keys, unsigned first_shift,
                          std::vector<uint32_t>& order, std::vector<uint32_t>& scratch) {
  const size_t length = keys.size();
  for (size_t t = 0; t < length; ++t) order[t] = static_cast<uint32_t>(length - 1 - t);
  for (unsigned shift = first_shift; shift < 32; shift += 8) {
    size_t count[257] = {};
    for (uint32_t t : order) ++count[((keys[t] >> shift) & 0xFFu) + 1];
    if (*std::max_element(count + 1, count + 257) == length)
      continue;  // one digit value: no change
    for (size_t d = 1; d < 257; ++d) count[d] += count[d - 1];
    for (uint32_t t : order) scratch[count[(keys[t] >> shift) & 0xFFu]++] = t;
    order.swap(scratch);
  }
}

// DELLA's MagPrune: within each fiber along dim 1 (a row of a matrix; the whole of a 1-D tensor),
// the entry of ascending magnitude rank r (0-based, of L) is kept with probability
//   p = (density - epsilon) + clamp((r + 1 - 1) / (L - 1), 0, 1) * 2 * epsilon,
// each operation rounded in the work dtype as mergekit's torch code does. p depends only on r, so
// it is tabulated once per tensor.
template <class R>
void della_mask(const TaskVectorView& tv, R rnd, const SparsifyOptions& o,
                std::vector<uint64_t>& words, const std::string& tensor) {
  using W = WorkRounding<R>;
  const W work;
  const size_t n = tv.n;
  size_t outer = 1, length = n, inner = 1;
  if (tv.shape.size() >= 2) {
    outer = tv.shape[0];
    length = tv.shape[1];
    inner = (outer == 0 || length == 0) ? 0 : n / (outer * length);
  }
  if (length >= (uint64_t{1} << 32)) {
    throw Error(ErrorCode::kInvalidArgument,
                "tensor '" + tensor + "': della ranks rows of fewer than 2^32 entries");
  }
  std::fill(words.begin(), words.end(), 0);
  if (length == 0 || n == 0 || inner == 0) return;
  const float low_p = work.param(o.density - o.epsilon), epsilon = work.param(o.epsilon);
  const float span = work(work(work(static_cast<float>(length - 1)) + 1.0f) - 1.0f);
  std::vector<double> probability(length);
  for (size_t r = 0; r < length; ++r) {
    const float rank = work(work(static_cast<float>(r)) + 1.0f);
    // mergekit divides 0 by 0 for a single-entry row (and torch.bernoulli then refuses the NaN);
    // alloy gives such an entry the lowest probability.
    const float rank_norm =
        length > 1 ? std::clamp(work(work(rank - 1.0f) / span), 0.0f, 1.0f) : 0.0f;
    probability[r] = work(low_p + work(work(rank_norm * 2.0f) * epsilon));
  }
  const size_t fibers = outer * inner;
  // bf16 deltas have zero low 16 bits: two radix passes instead of four.
  const unsigned first_shift = tv.dtype == DType::BF16 ? 16 : 0;
  // inner > 1: the fibers are strided, so the keys of one slab of the outer dimension (length *
  // inner elements) are computed first, read in index order, and its fibers ranked from them.
  std::vector<uint32_t> slab(inner > 1 ? length * inner : 0);
  const size_t slab_elements = length * inner;
  auto rank_fibers = [&](size_t f_begin, size_t f_end) {
  parallel_for(f_end - f_begin, std::max<size_t>(1, kDefaultGrain / length), [&](size_t fb, size_t fe) {
    std::vector<uint32_t> keys(length), order(length), scratch(length);
    std::vector<uint64_t> local;  // contiguous fibers: their bits, then OR-ed into shared words
    for (size_t f = f_begin + fb; f < f_begin + fe; ++f) {
      const size_t start = (f / inner) * slab_elements + f % inner;
      if (inner == 1) {
        for_each_run(tv, start, start + length,
                     [&](size_t first, const float* x, const float* b, size_t len) {
                       for (size_t j = 0; j < len; ++j)
                         keys[first - start + j] = magnitude_key(rnd(x[j] - b[j]));
                     });
      } else {
        for (size_t t = 0; t < length; ++t) keys[t] = slab[t * inner + f % inner];
      }
      ascending_rank_order(keys, first_shift, order, scratch);
      if (inner == 1) {
        const size_t first_word = start >> 6, last_word = (start + length - 1) >> 6;
        local.assign(last_word - first_word + 1, 0);
        for (size_t r = 0; r < length; ++r) {
          const size_t i = start + order[r];
          local[(i >> 6) - first_word] |= uint64_t{uniform01(o.seed, i) < probability[r]}
                                          << (i & 63);
        }
        // Interior words belong to this fiber alone; the two end words may be shared.
        for (size_t w = 0; w < local.size(); ++w) {
          if (w == 0 || w + 1 == local.size()) {
            std::atomic_ref<uint64_t>(words[first_word + w])
                .fetch_or(local[w], std::memory_order_relaxed);
          } else {
            words[first_word + w] = local[w];
          }
        }
      } else {
        for (size_t r = 0; r < length; ++r) {
          const size_t i = start + order[r] * inner;
          if (uniform01(o.seed, i) < probability[r]) {
            std::atomic_ref<uint64_t>(words[i >> 6])
                .fetch_or(uint64_t{1} << (i & 63), std::memory_order_relaxed);
          }
        }
      }
    }
  });
  };
  if (inner == 1) {
    rank_fibers(0, fibers);
    return;
  }
  for (size_t slab_index = 0; slab_index < outer; ++slab_index) {
    const size_t slab_start = slab_index * slab_elements;
    parallel_for(slab_elements, kDefaultGrain, [&](size_t b, size_t e) {
      for_each_run(tv, slab_start + b, slab_start + e,
                   [&](size_t first, const float* x, const float* base, size_t len) {
                     for (size_t j = 0; j < len; ++j)
                       slab[first - slab_start + j] = magnitude_key(rnd(x[j] - base[j]));
                   });
    });
    rank_fibers(slab_index * inner, (slab_index + 1) * inner);
  }
}

}  // namespace

void set_stream_grain(size_t elements) { g_stream_grain = elements; }

size_t stream_grain() {
  const size_t grain = g_stream_grain.load(std::memory_order_relaxed);
  return grain == 0 ? kDefaultGrain : grain;
}

void set_output_window(size_t elements) { g_output_window = elements; }

size_t output_window() {
  const size_t window = g_output_window.load(std::memory_order_relaxed);
  return window == 0 ? kOutputWindow : window;
}

void set_held_source_bytes(uint64_t bytes) { g_held_source_bytes = bytes; }

uint64_t held_source_bytes() {
  return g_held_source_bytes.load(std::memory_order_relaxed);
}

SelectionBracketCounts selection_bracket_counts() {
  return {g_bracketed.load(std::memory_order_relaxed), g_bracket_misses.load(std::memory_order_relaxed)};
}

std::vector<double> l1_sums_of(const TaskVectorSet& set, const std::vector<DeltaMask>& masks) {
  std::vector<size_t> models;
  std::vector<const DeltaMask*> mask_of;
  for (size_t m = 0; m < set.count; ++m) models.push_back(m), mask_of.push_back(&masks[m]);
  return with_rounding(set.dtype, [&](auto rnd) { return l1_sums(set, rnd, models, mask_of); });
}

void select_rank_range(const TaskVectorView& tv, uint64_t lo, uint64_t hi,
                       std::vector<uint64_t>& words) {
  TaskVectorSet set{tv.base, {tv.x}, 1, tv.n, tv.dtype, tv.shape, {}, {}};
  if (tv.load) {
    set.load = [&tv](size_t source, size_t begin, size_t len, float* dst) {
      std::vector<float> other(len);  // the half of the view's run this call does not want
      if (source == 0) {
        tv.load(begin, len, dst, other.data());
      } else {
        tv.load(begin, len, other.data(), dst);
      }
    };
  }
  DeltaMask mask;
  mask.active = true;
  words.assign((tv.n + 63) / 64, 0);
  with_rounding(tv.dtype, [&](auto rnd) {
    RankSelector<decltype(rnd)>(set, rnd).select({{0, lo, hi, &mask}});
    // The rule as bits (the merge applies the rule itself; the tests read bits).
    parallel_for(words.size(), kDefaultGrain / 64, [&](size_t wb, size_t we) {
      for_each_run(tv, wb * 64, std::min(tv.n, we * 64),
                   [&](size_t first, const float* x, const float* b, size_t len) {
                     for (size_t j = 0; j < len; ++j) {
                       const size_t i = first + j;
                       words[i >> 6] |= uint64_t{mask.keep(i, rnd(x[j] - b[j]))} << (i & 63);
                     }
                   });
    });
  });
}

bool masks_read_sources(const std::vector<SparsifyOptions>& options) {
  return std::any_of(options.begin(), options.end(), [](const SparsifyOptions& o) {
    if (o.method == Sparsification::kNone || o.density >= 1.0) return false;
    return o.method != Sparsification::kRandom || o.rescale;
  });
}

std::vector<DeltaMask> build_masks(const TaskVectorSet& set,
                                   const std::vector<SparsifyOptions>& options,
                                   std::vector<std::vector<uint64_t>>& words,
                                   const std::string& tensor,
                                   const std::vector<std::string>& models) {
  const size_t n = set.n;
  std::vector<DeltaMask> masks(set.count);
  if (words.size() < set.count) words.resize(set.count);
  with_rounding(set.dtype, [&](auto rnd) {
    using R = decltype(rnd);
    // Random and della masks are built model by model (they need no pass shared with another
    // model); the rank selections, then the L1 sums, run once for all the models that need them.
    std::vector<typename RankSelector<R>::Target> selections;
    std::vector<size_t> rescaled;
    for (size_t m = 0; m < set.count; ++m) {
      const SparsifyOptions& o = options[m];
      DeltaMask& mask = masks[m];
      if (o.method == Sparsification::kNone || o.density >= 1.0 || n == 0) continue;
      auto refuse = [&](const std::string& what) {
        throw Error(ErrorCode::kRecipe, "tensor '" + tensor + "': model " + models[m] + ": " + what);
      };
      if (std::isnan(o.density)) refuse("density is NaN");
      mask.active = true;
      // Random and della masks are explicit bits in words[m]; the magnitude selections set the
      // implicit rule (RankSelector).
      auto explicit_bits = [&]() -> std::vector<uint64_t>& {
        words[m].resize((n + 63) / 64);
        mask.bits = words[m].data();
        return words[m];
      };
      switch (o.method) {
        case Sparsification::kMagnitude: {
          const double k = o.density * static_cast<double>(n);
          if (!(k >= 1.0)) {
            refuse("density " + std::to_string(o.density) + " keeps no entry of " +
                   std::to_string(n) + " (int(density * numel) is 0)");
          }
          selections.push_back({m, 0, static_cast<uint64_t>(k), &mask});
          break;
        }
        case Sparsification::kMagnitudeOutliers: {
          if (o.density < 0 || !(o.gamma >= 0)) refuse("density and gamma must not be negative");
          const int64_t total = static_cast<int64_t>(n);
          const int64_t target = static_cast<int64_t>(o.density * static_cast<double>(n));
          int64_t n_top = static_cast<int64_t>(o.gamma * static_cast<double>(n));
          int64_t n_bot = total - target - n_top;
          if (n_bot < 0) {
            n_top += n_bot;
            n_bot = 0;
          }
          // mergekit keeps ascending positions [n_bot, n - n_top), i.e. descending ranks
          // [n_top, n - n_bot); with n_top == 0 its slice [n_bot:-0] is empty: nothing is kept.
          if (n_top <= 0) n_top = n_bot = total;  // the empty range [n, 0)
          selections.push_back(
              {m, static_cast<uint64_t>(n_top), static_cast<uint64_t>(total - n_bot), &mask});
          break;
        }
        case Sparsification::kRandom: {
          if (o.density < 0) refuse("density must not be negative");
          random_mask<R>(n, o, explicit_bits());
          break;
        }
        case Sparsification::kDellaMagprune: {
          if (o.density <= 0) {  // mergekit returns zeros, without rescaling
            std::vector<uint64_t>& bits = explicit_bits();
            std::fill(bits.begin(), bits.end(), 0);
            continue;
          }
          if (o.density + o.epsilon >= 1 || o.density - o.epsilon <= 0) {
            refuse("della needs density - epsilon > 0 and density + epsilon < 1 (density " +
                   std::to_string(o.density) + ", epsilon " + std::to_string(o.epsilon) + ")");
          }
          TaskVectorView tv{set.load ? nullptr : set.xs[m], set.base, n, set.dtype, set.shape, {}};
          if (set.load) {
            tv.load = [&set, m](size_t begin, size_t len, float* x, float* base) {
              set.load(m, begin, len, x);
              set.load(set.count, begin, len, base);
            };
          }
          della_mask(tv, rnd, o, explicit_bits(), tensor);
          break;
        }
        case Sparsification::kNone:
          break;
      }
      if (o.rescale) rescaled.push_back(m);
    }
    RankSelector<R>(set, rnd).select(selections);
    if (rescaled.empty()) return;
    std::vector<const DeltaMask*> kept;
    for (size_t m : rescaled) kept.push_back(&masks[m]);
    const std::vector<double> sums = l1_sums(set, rnd, rescaled, kept);
    for (size_t p = 0; p < rescaled.size(); ++p) {
      DeltaMask& mask = masks[rescaled[p]];
      // The magnitude selections rescale in the compute dtype, the random ones (DARE, DELLA) in
      // their work dtype, as mergekit does.
      const Sparsification method = options[rescaled[p]].method;
      if (method == Sparsification::kMagnitude || method == Sparsification::kMagnitudeOutliers) {
        set_rescale(sums[2 * p], sums[2 * p + 1], rnd, mask);
      } else {
        set_rescale(sums[2 * p], sums[2 * p + 1], WorkRounding<R>{}, mask);
      }
    }
  });
  return masks;
}

}  // namespace alloy::detail
