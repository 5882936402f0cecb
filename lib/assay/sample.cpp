// alloy-assay --sample: which rows of a tensor a sampled assay reads, and reading them.
//
// A merge's signature is in every element (each row is the same blend of the parents' rows), so a
// random subset of rows estimates each tensor's mixing weights without bias; their standard errors
// grow as 1/sqrt(rows read) and the fit reports them from the elements it saw. Rows, not single
// elements, are the unit because a row is contiguous on disk: reading 1% of the rows reads about 1%
// of the bytes (page-granular), where 1% of scattered elements would read every page.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <unordered_set>

#include "alloy/core/parallel.h"
#include "alloy/core/random.h"
#include "internal.h"

namespace alloy::detail {
namespace {

// Uniform in [0, n) from splitmix64 (Lemire's multiply-shift; the bias is below 2^-40 for the
// sizes here).
uint64_t below(uint64_t& state, uint64_t n) { return uint64_t((unsigned __int128)splitmix64_next(state) * n >> 64); }

}  // namespace

std::vector<uint64_t> sampled_rows(const std::vector<uint64_t>& shape, double fraction, uint64_t seed,
                                   const std::string& tensor_name) {
  if (!(fraction > 0 && fraction < 1) || shape.size() < 2 || shape.back() == 0) return {};
  uint64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  const uint64_t wanted = std::max<uint64_t>(kMinSampledRows, uint64_t(std::ceil(fraction * double(rows))));
  if (wanted >= rows) return {};
  // Floyd's algorithm: `wanted` distinct rows in `wanted` draws, whatever the tensor's size.
  uint64_t state = seed ^ fnv1a(tensor_name);  // each tensor draws its own rows from the one seed
  std::unordered_set<uint64_t> chosen;
  chosen.reserve(size_t(wanted) * 2);
  for (uint64_t j = rows - wanted; j < rows; ++j) {
    const uint64_t t = below(state, j + 1);
    if (!chosen.insert(t).second) chosen.insert(j);
  }
  std::vector<uint64_t> out(chosen.begin(), chosen.end());
  std::sort(out.begin(), out.end());  // in file order: the reads then move forward only
  return out;
}

std::vector<float*> gather_rows(const TensorViews& views, uint64_t row_length,
                                const std::vector<uint64_t>& rows, PageBuffer* buffer,
                                size_t first_input) {
  const size_t inputs = views.inputs.size(), count = rows.size(),
               per_input = size_t(count * row_length);
  if (per_input > SIZE_MAX / sizeof(float) / std::max<size_t>(inputs, 1)) throw std::bad_alloc();
  // Huge pages, grown and never shrunk: 4 KiB pages made afresh for each larger tensor were half
  // of a 1% assay's reading time in page faults (1,500 of them for the 1 GB model's rows).
  auto* base = reinterpret_cast<float*>(buffer->reserve(inputs * per_input * sizeof(float)));
  std::vector<float*> out(inputs);
  for (size_t v = 0; v < inputs; ++v) out[v] = base + v * per_input;
  // Every input's rows in one region, a few rows (one pread each) per task: at 1% a tensor has
  // tens of sampled rows, and a region per input in tasks of 64 rows left the second core idle.
  const size_t skipped = std::min(first_input, inputs) * count;
  parallel_for(inputs * count - skipped, 4, [&](size_t begin, size_t end) {
    for (size_t i = begin + skipped; i < end + skipped; ++i) {
      const size_t v = i / count, r = i % count;
      load_view(views, v, size_t(rows[r] * row_length), size_t(row_length),
                base + v * per_input + r * row_length);
    }
  });
  return out;
}

ResolvedMoments fit_sampled(const TensorViews& views, uint64_t rows, uint64_t row_length, double resolve_fraction,
                            int pivot, const std::vector<bool>& spread_members, const PrefixMoments& prefix,
                            int candidates, TensorAssay* out) {
  // Groups of consecutive sampled rows: the rows are a random draw, so each group is too.
  const uint64_t groups = std::min<uint64_t>(kSampleGroups, rows);
  std::vector<ResolvedMoments> parts;
  for (uint64_t g = 0; g < groups; ++g) {
    const uint64_t first = g * rows / groups, last = (g + 1) * rows / groups;
    TensorViews part = views;
    for (auto& values : part.values) values += first * row_length;
    part.numel = (last - first) * row_length;
    parts.push_back(accumulate_resolved(part, resolve_fraction, pivot, spread_members));
  }
  ResolvedMoments total = parts[0];
  for (size_t g = 1; g < parts.size(); ++g) add_into(total, parts[g]);
  fit_tensor(prefix, total, candidates, out);
  if (groups < 2) return total;
  // Delete-a-group jackknife: var = (G - 1) / G * sum_g (w_(-g) - mean)^2 (Efron & Tibshirani,
  // "An Introduction to the Bootstrap", ch. 11).
  std::vector<std::vector<double>> left_out;
  for (size_t g = 0; g < parts.size(); ++g) {
    ResolvedMoments rest;
    rest.vectors = total.vectors;
    rest.pivot = total.pivot;
    for (size_t h = 0; h < parts.size(); ++h) {
      if (h != g) add_into(rest, parts[h]);
    }
    TensorAssay fit;
    fit_tensor(prefix, rest, candidates, &fit);
    left_out.push_back(fit.weights);
  }
  for (size_t c = 0; c < out->weights.size(); ++c) {
    double mean = 0, sum2 = 0;
    for (const auto& w : left_out) mean += w[c] / double(groups);
    for (const auto& w : left_out) sum2 += (w[c] - mean) * (w[c] - mean);
    const double jackknife = std::sqrt(double(groups - 1) / double(groups) * sum2);
    if (std::isfinite(jackknife) && !(out->weight_se[c] >= jackknife)) out->weight_se[c] = jackknife;
  }
  return total;
}

}  // namespace alloy::detail
