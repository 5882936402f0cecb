// Sparse-merge statistics (TIES, DARE and the rest of the task-arithmetic family) of one tensor
// relative to a base candidate, over fixed super-chunks (at most 16, set by the element count
// alone) of integer histograms, so the counts are exact and thread-count independent:
//  1. per other candidate i, histograms over the float bits of |delta_i| = |C_i - C_b| (1/32
//     octave per bin) of all elements, of those with S == C_b (nothing kept) and of those with
//     S == C_i (i kept alone, TIES with normalize); and a histogram of the ratio
//     (S - C_b) / delta_i over well-resolved elements (its mode is i's scale when kept alone);
//  2. with the thresholds known, the kept sets and the weight ratios over the elements that
//     these decide: subset_statistics (sparse_subsets.cpp), a second pass over the elements.
// docs/assay.md derives the estimators.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "alloy/core/dtype.h"
#include "alloy/core/parallel.h"
#include "internal.h"
#include "subchunks.h"

namespace alloy::detail {
namespace {

constexpr int kMagnitudeShift = 18;                  // keep exponent + 5 mantissa bits
constexpr size_t kMagnitudeBins = size_t(1) << (31 - kMagnitudeShift);
constexpr double kRatioLow = -1.0, kRatioStep = 0.02;
constexpr size_t kRatioBins = 400;                   // ratios in [-1, 7)

size_t magnitude_bin(float delta) { return (float_to_bits(delta) & 0x7FFFFFFFu) >> kMagnitudeShift; }

struct Histograms {
  size_t others = 0;
  std::vector<uint64_t> all, none, self, ratio;  // [other * bins + bin]
  void resize(size_t k) {
    others = k;
    all.assign(k * kMagnitudeBins, 0);
    none.assign(k * kMagnitudeBins, 0);
    self.assign(k * kMagnitudeBins, 0);
    ratio.assign(k * kRatioBins, 0);
  }
  void add(const Histograms& o) {
    for (size_t i = 0; i < all.size(); ++i) all[i] += o.all[i], none[i] += o.none[i], self[i] += o.self[i];
    for (size_t i = 0; i < ratio.size(); ++i) ratio[i] += o.ratio[i];
  }
};

// One other's events at elements [0, count) of a sub-chunk, as indices and counts: the magnitude
// bin of delta = C - C_b; the bin's three counts as one word, 1 + [S == C_b] << 16 + [delta != 0
// and S == C] << 32 (all, "nothing kept", "kept alone": one increment instead of three, each field
// below 2^16 over a sub-chunk); and the ratio bin of (S - C_b) / delta, or one of kRatioSpares
// spare bins after the histogram where the element is not well resolved or the ratio falls
// outside it (the element's index picks the spare: most elements go there, and increments of one
// counter would wait on each other). Computed in vectors, with the float and double operations of
// the counting before (so the same bins); the counting itself then has no branches: the
// well-resolved test and the division inside the counting loop were mispredicted on about a
// quarter of a fine-tune's elements. `low` and `high` bound the block's magnitude bins.
constexpr size_t kRatioSpares = 8;
struct EventBlock {
  static constexpr size_t kSize = 2048;
  uint16_t magnitude[kSize], ratio[kSize];
  uint64_t counts[kSize];
  uint16_t low, high;
};
static_assert(kMagnitudeBins <= 65536 && kRatioBins + kRatioSpares <= 65536, "bins fit 16 bits");
static_assert(kDefaultGrain < 65536, "a sub-chunk's counts fit their 16-bit fields");

__attribute__((target_clones("arch=x86-64-v4", "avx2", "default"))) void block_events(
    const float* s, const float* b, const float* c, size_t count, EventBlock& e) {
  uint16_t low = UINT16_MAX, high = 0;
  for (size_t i = 0; i < count; ++i) {
    const float delta = c[i] - b[i];
    const uint16_t bin = uint16_t(magnitude_bin(delta));
    e.magnitude[i] = bin;
    low = std::min(low, bin), high = std::max(high, bin);
    const uint64_t none = s[i] == b[i], self = (delta != 0) & (s[i] == c[i]);
    e.counts[i] = 1 | none << 16 | self << 32;
    const bool resolved = (std::fabs(delta) >= 0.125f * std::fabs(b[i])) & (delta != 0);
    const double r = (double(s[i]) - double(b[i])) / double(delta);  // inf or NaN where delta == 0
    const double pos = (r - kRatioLow) / kRatioStep;
    const bool inside = resolved & (pos >= 0) & (pos < double(kRatioBins));
    // pos is converted only where inside (elsewhere it may be NaN or out of range: undefined).
    e.ratio[i] = inside ? uint16_t(inside ? pos : 0.0) : uint16_t(kRatioBins + i % kRatioSpares);
  }
  e.low = low, e.high = high;
}

// "Nothing kept" at an element needs every candidate dropped there. Relative to the rate among
// candidate j's smallest 10% of |delta_j| (j dropped there under TIES and breadcrumbs, so the rate
// is the chance that the others are dropped, which does not depend on j's magnitude when their
// masks do not), the rate in a band of j's magnitudes is the share of j's entries dropped there.
// Bands are whole bins from the top (resp. bottom) until they hold the target count.
void drop_profile(const uint64_t* all, const uint64_t* none, uint64_t n, size_t j, SparseStats& out) {
  const auto band_from_bottom = [&](uint64_t target, size_t& end) {
    uint64_t a = 0, e = 0;
    for (end = 0; end < kMagnitudeBins && a < target; ++end) a += all[end], e += none[end];
    return std::pair<uint64_t, uint64_t>(a, e);
  };
  const auto band_from_top = [&](uint64_t target, size_t& begin) {
    uint64_t a = 0, e = 0;
    for (begin = kMagnitudeBins; begin > 0 && a < target;) --begin, a += all[begin], e += none[begin];
    return std::pair<uint64_t, uint64_t>(a, e);
  };
  size_t low_end = 0, top_begin = 0, upper_begin = 0;
  const auto low = band_from_bottom(n / 10, low_end);
  const auto top = band_from_top(std::max<uint64_t>(n / 200, 1), top_begin);
  const auto upper = band_from_top(n / 10, upper_begin);
  if (low.first == 0 || low.second == 0) return;
  const double base_rate = double(low.second) / double(low.first);
  const auto relative = [&](std::pair<uint64_t, uint64_t> band) {
    return band.first ? double(band.second) / double(band.first) / base_rate : 0.0;
  };
  out.top_drop[j] = relative(top);
  out.upper_drop[j] = relative(upper);
  uint64_t none_total = 0;
  for (size_t bin = 0; bin < kMagnitudeBins; ++bin) none_total += none[bin];
  out.profile_density[j] = std::clamp(1 - double(none_total) / base_rate / double(n), 0.0, 1.0);
  // Breadcrumbs' gamma: the dropped entries above the kept ones. Walk down from the top while the
  // bins' drop rate stays above one half (the kept band below has ~0; TIES stops at once).
  double dropped_top = 0;
  for (size_t bin = kMagnitudeBins; bin > 0;) {
    --bin;
    if (all[bin] == 0) continue;
    const double rate = double(none[bin]) / double(all[bin]) / base_rate;
    if (rate < 0.5 && all[bin] >= 32) break;  // a bin of a few elements decides nothing
    dropped_top += std::min(rate, 1.0) * double(all[bin]);
  }
  out.outlier_share[j] = dropped_top / double(n);
}

}  // namespace

SparseStats sparse_statistics(const TensorViews& views, int base, const std::vector<int>& others) {
  const size_t k = others.size();
  const uint64_t n = views.numel;
  SparseStats out;
  out.density.assign(k, std::numeric_limits<double>::quiet_NaN());
  out.threshold = out.magnitude_step = out.solo_density = out.kept_scale = out.density;
  out.top_drop = out.upper_drop = out.outlier_share = out.profile_density = out.density;
  if (k == 0 || n == 0) return out;
  // Well resolved for the ratio: |delta| at least 1/8 of |C_b| (16 bf16 ulps), so rounding moves
  // the ratio by at most about 3%.
  // The histograms of every part: integer counts, so their sum does not depend on the order or the
  // threads. Parts run in waves of one per thread, each into a set of histograms that the waves
  // reuse (zeroed), added into `h` in place: a set is 3 x k x 64 KiB, and copying it per part and
  // per combine step (parallel_reduce) cost more than the counting and grew the resident set with
  // the candidates.
  const std::vector<bool> used = used_vectors(views, base, others);
  Histograms h;
  h.resize(k);
  const size_t grain = part_grain(n), parts = (n + grain - 1) / grain;
  const size_t wave = std::max<size_t>(1, std::min<size_t>(parts, size_t(thread_count())));
  std::vector<Histograms> sets(wave);
  for (size_t first = 0; first < parts; first += wave) {
    const size_t count_parts = std::min(wave, parts - first);
    parallel_for(count_parts, 1, [&](size_t lo, size_t hi) {
      for (size_t w = lo; w < hi; ++w) {
        Histograms& part = sets[w];
        part.resize(k);
        const size_t begin = (first + w) * grain, end = std::min<size_t>(n, begin + grain);
        EventBlock events;
        // A sub-chunk's packed counts per magnitude bin (EventBlock::counts), unpacked into the
        // part's histograms after it; zero between sub-chunks.
        static thread_local std::vector<uint64_t> packed(kMagnitudeBins, 0);
        // And its ratio counts, the spare bins after them (EventBlock::ratio).
        static thread_local std::vector<uint32_t> ratio_counts(kRatioBins + kRatioSpares, 0);
        for_each_subchunk(views, begin, end, [&](const std::vector<float*>& x, size_t count) {
          const float* s = x[0];
          const float* b = x[base];
          for (size_t j = 0; j < k; ++j) {
            const float* c = x[others[j]];
            uint64_t* ratio = part.ratio.data() + j * kRatioBins;
            size_t low = kMagnitudeBins, high = 0;
            for (size_t i0 = 0; i0 < count; i0 += EventBlock::kSize) {
              const size_t len = std::min(EventBlock::kSize, count - i0);
              block_events(s + i0, b + i0, c + i0, len, events);
              low = std::min<size_t>(low, events.low), high = std::max<size_t>(high, events.high);
              for (size_t i = 0; i < len; ++i) {
                packed[events.magnitude[i]] += events.counts[i];
                ++ratio_counts[events.ratio[i]];
              }
            }
            for (size_t bin = 0; bin < kRatioBins; ++bin) ratio[bin] += ratio_counts[bin];
            std::fill(ratio_counts.begin(), ratio_counts.end(), 0u);
            uint64_t* all = part.all.data() + j * kMagnitudeBins;
            uint64_t* none = part.none.data() + j * kMagnitudeBins;
            uint64_t* self = part.self.data() + j * kMagnitudeBins;
            for (size_t bin = low; bin <= high && bin < kMagnitudeBins; ++bin) {
              all[bin] += packed[bin] & 0xFFFF;
              none[bin] += packed[bin] >> 16 & 0xFFFF;
              self[bin] += packed[bin] >> 32;
              packed[bin] = 0;
            }
          }
        }, used);
      }
    });
    for (size_t w = 0; w < count_parts; ++w) h.add(sets[w]);
  }

  for (size_t j = 0; j < k; ++j) {
    const uint64_t* all = h.all.data() + j * kMagnitudeBins;
    const uint64_t* none = h.none.data() + j * kMagnitudeBins;
    const uint64_t* self = h.self.data() + j * kMagnitudeBins;
    // Threshold: the bin edge that best separates "nothing kept" (below) from "kept alone" (above).
    uint64_t self_total = 0, none_total = 0;
    for (size_t bin = 0; bin < kMagnitudeBins; ++bin) self_total += self[bin], none_total += none[bin];
    // Several edges may score the same (bins with neither event): take the middle of that run.
    int64_t best_score = -1;
    size_t best_first = 0, best_last = 0;
    uint64_t none_below = 0, self_below = 0;
    for (size_t edge = 0; edge <= kMagnitudeBins; ++edge) {
      const int64_t score = int64_t(none_below) + int64_t(self_total - self_below);
      if (score > best_score) best_score = score, best_first = best_last = edge;
      else if (score == best_score) best_last = edge;
      if (edge < kMagnitudeBins) none_below += none[edge], self_below += self[edge];
    }
    // Elements at or above each edge, summed once: the walk below asks for it at every edge of the
    // run, and a run of empty bins above the largest delta is thousands long.
    std::vector<uint64_t> above_edge(kMagnitudeBins + 1, 0);
    for (size_t bin = kMagnitudeBins; bin > 0; --bin)
      above_edge[bin - 1] = above_edge[bin] + all[bin - 1];
    const auto count_above = [&](size_t edge) { return above_edge[edge]; };
    const uint64_t above_first = count_above(best_first), above_last = count_above(best_last);
    const uint64_t target = (above_first + above_last) / 2;
    size_t best_edge = best_first;
    while (best_edge < best_last && count_above(best_edge + 1) >= target) ++best_edge;
    // Deltas are stored values, so many share one magnitude and mergekit's top-k keeps only some
    // of those at the threshold. Bins near the edge are therefore split by their event rates:
    // "kept alone" happens only to kept entries, "nothing kept" only to dropped ones, each at a
    // rate measured on the clear bins beyond the window.
    constexpr size_t kWindow = 3;
    const size_t lo = best_edge > kWindow ? best_edge - kWindow : 0;
    const size_t hi = std::min(kMagnitudeBins, best_edge + kWindow);
    const size_t far_lo = lo > 8 * kWindow ? lo - 8 * kWindow : 0;
    const auto rate = [&](const uint64_t* events, size_t from, size_t to) {
      uint64_t e = 0, a = 0;
      for (size_t bin = from; bin < to; ++bin) e += events[bin], a += all[bin];
      return a ? double(e) / double(a) : 0.0;
    };
    const double self_rate = rate(self, hi, kMagnitudeBins), none_rate = rate(none, far_lo, lo);
    double kept = 0;
    for (size_t bin = hi; bin < kMagnitudeBins; ++bin) kept += double(all[bin]);
    for (size_t bin = lo; bin < hi; ++bin) {
      if (all[bin] == 0) continue;
      double q_self = self_rate > 0 ? double(self[bin]) / double(all[bin]) / self_rate : 0.5;
      double q_none = none_rate > 0 ? 1 - double(none[bin]) / double(all[bin]) / none_rate : 0.5;
      const double q = std::clamp(0.5 * (q_self + q_none), 0.0, 1.0);
      kept += q * double(all[bin]);
    }
    uint64_t above = 0;
    for (size_t bin = best_edge; bin < kMagnitudeBins; ++bin) above += all[bin];
    (void)above;
    out.density[j] = kept / double(n);
    out.threshold[j] = double(bits_to_float(uint32_t(best_edge) << kMagnitudeShift));
    // Magnitude dependence, at a fixed split (the largest 10% of |delta_i| against the rest):
    // TIES keeps every large delta, so there "nothing kept" never happens; DARE drops at random,
    // so the rate hardly depends on magnitude.
    const uint64_t top_target = n / 10;
    uint64_t top = 0, none_top = 0;
    size_t bin = kMagnitudeBins;
    while (bin > 0 && top < top_target) {
      --bin;
      top += all[bin];
      none_top += none[bin];
    }
    const double rate_top = top ? double(none_top) / double(top) : 0.0;
    const double rate_rest = n > top ? double(none_total - none_top) / double(n - top) : 0.0;
    out.magnitude_step[j] = rate_rest > 0 ? 1 - rate_top / rate_rest : 0.0;
    drop_profile(all, none, n, j, out);
    // The scale of i when kept alone: the ratio histogram's mode away from 0.
    const uint64_t* ratio = h.ratio.data() + j * kRatioBins;
    size_t mode = 0;
    uint64_t mode_count = 0;
    for (size_t bin = 0; bin < kRatioBins; ++bin) {
      const double centre = kRatioLow + (double(bin) + 0.5) * kRatioStep;
      if (std::fabs(centre) > 0.1 && ratio[bin] > mode_count) mode = bin, mode_count = ratio[bin];
    }
    double weighted = 0, count = 0;
    for (size_t bin = mode > 0 ? mode - 1 : 0; bin <= std::min(kRatioBins - 1, mode + 1); ++bin) {
      weighted += double(ratio[bin]) * (kRatioLow + (double(bin) + 0.5) * kRatioStep);
      count += double(ratio[bin]);
    }
    out.kept_scale[j] = count > 0 ? weighted / count : std::numeric_limits<double>::quiet_NaN();
    const uint64_t ratio_zero = ratio[size_t((0.0 - kRatioLow) / kRatioStep)];
    out.solo_density[j] = count + double(ratio_zero) > 0 ? count / (count + double(ratio_zero)) : 0.0;
  }

  return out;
}

}  // namespace alloy::detail
