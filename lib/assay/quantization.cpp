// Quantization grids in the suspect's stored weights (see quantization.h).
#include "quantization.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "alloy/core/parallel.h"
#include "internal.h"

namespace alloy::detail {
namespace {

// The relative rounding of one stored value: half an ulp, at most 2^-8 in bf16, 2^-11 in f16 and
// 2^-24 in f32 of its magnitude.
double storage_rounding(DType dtype) {
  switch (dtype) {
    case DType::BF16: return std::ldexp(1.0, -8);
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::F32: return std::ldexp(1.0, -24);
    default: return 0;
  }
}

// A group's grid: origin, step and the step's own relative error (from the extremes).
struct GroupGrid {
  double origin = 0, step = 0, step_error = 0;
};
std::optional<GroupGrid> group_grid(const float* x, size_t n, const QuantizationGrid& grid, double u) {
  double lo = x[0], hi = x[0];
  for (size_t i = 1; i < n; ++i) lo = std::min(lo, double(x[i])), hi = std::max(hi, double(x[i]));
  GroupGrid g;
  g.origin = grid.absmax ? 0.0 : lo;
  const double extreme = std::max(std::fabs(lo), std::fabs(hi));
  const double range = grid.absmax ? extreme : hi - lo;
  g.step = range / grid.levels;
  if (!(g.step > 0) || !std::isfinite(g.step)) return std::nullopt;
  g.step_error = u * (extreme + std::fabs(g.origin)) / range;
  return g;
}

// How far (in steps) a stored value x may sit from its grid point: 1.25 x the bound stated at
// group_on_grid below.
double allowance(const GroupGrid& g, double x, double u) {
  const double r = (x - g.origin) / g.step;
  return 1.25 * (u * (std::fabs(x) + std::fabs(g.origin)) / g.step + std::fabs(r) * g.step_error) + 1e-9;
}

// Whether one group of values lies on `grid`'s points, the stored values rounded by at most `u`
// of their magnitude. A value x = origin + q step is read back as r = (x - origin) / step with the
// origin (0, or the group's minimum) and the step (recovered from the group's extremes, which are
// grid points themselves) rounded too: |r - q| <= u (|x| + |origin|) / step + |r| u (|extreme| +
// |origin|) / range, allowed 25% more. Elements whose allowance reaches a quarter of a step say
// nothing and are skipped (each of the others passes by chance with probability at most 1/2); a
// group with fewer than 16 (or an eighth of its elements) that say something, or of zeros (no
// step), says nothing: nullopt.
std::optional<bool> group_on_grid(const float* x, size_t n, const QuantizationGrid& grid, double u) {
  const auto g = group_grid(x, n, grid, u);
  if (!g) return std::nullopt;
  // Every element's allowance is at least this (each term of allowance() is non-negative and its
  // rounded operations are monotone), so above a quarter step no element says anything. A min-max
  // grid of 255 levels is so for most groups of a model that was never quantized (|origin| near
  // half the range): its scan of every element, two divisions each, was most of this detector's
  // time.
  if (1.25 * (u * std::fabs(g->origin) / g->step) + 1e-9 > 0.25) return std::nullopt;
  size_t informative = 0;
  for (size_t i = 0; i < n; ++i) {
    const double r = (double(x[i]) - g->origin) / g->step;
    const double allowed = allowance(*g, double(x[i]), u);
    if (allowed > 0.25) continue;
    ++informative;
    if (std::fabs(r - std::nearbyint(r)) > allowed) return false;
  }
  if (informative < std::max<size_t>(16, n / 8)) return std::nullopt;
  return true;
}

// The candidate grids, in the order they are tried: int4 before int8 (a finer grid would also
// accept coarse data at whole rows), small groups before large.
std::vector<QuantizationGrid> candidate_grids() {
  std::vector<QuantizationGrid> grids;
  for (const auto& [absmax, levels] : {std::pair{true, 7}, {false, 15}, {true, 127}, {false, 255}}) {
    for (uint64_t group : {32, 64, 128, 0}) grids.push_back({absmax, levels, group});
  }
  return grids;
}

}  // namespace

std::string QuantizationGrid::format() const { return levels <= 15 ? "int4" : "int8"; }

namespace {

// detect_grid without the read error's rethrow, so that it can run inside a parallel region.
std::optional<QuantizationGrid> grid_of(const ModelTensor& tensor) {
  const TensorInfo& info = *tensor.info;
  const double u = storage_rounding(info.dtype);
  const uint64_t n = info.numel();
  if (u == 0 || info.shape.size() < 2 || n < 1024 || info.shape.back() < 32) return std::nullopt;
  const uint64_t cols = info.shape.back(), rows = n / cols;
  const uint64_t sampled = std::min(rows, kGridRows);
  static thread_local std::vector<float> values;  // reused: a fresh one per tensor cost a page fault per 4 KiB
  float* sample = at_least(values, size_t(sampled * cols));
  for (uint64_t s = 0; s < sampled; ++s) {
    const uint64_t row = s * rows / sampled;  // evenly spaced, the first row included
    load_range(tensor, size_t(row * cols), size_t(cols), sample + s * cols);
  }
  for (const QuantizationGrid& grid : candidate_grids()) {
    const uint64_t width = grid.group == 0 ? cols : grid.group;
    if (cols % width != 0) continue;
    size_t on = 0, tested = 0;
    const uint64_t total = sampled * cols;
    for (uint64_t start = 0; start < total; start += width) {
      const auto result = group_on_grid(sample + start, size_t(width), grid, u);
      if (!result) continue;
      ++tested;
      on += *result;
      // Stop once the share cannot be reached even if every group left lies on the grid (the
      // share's best case; groups that say nothing would only lower it): most tensors are on no
      // grid, and testing all 16 grids on every group was most of this detector's time.
      const double left = double((total - start - width) / width);
      if (double(on) + left < kGridGroupShare * (double(tested) + left)) break;
    }
    if (tested > 0 && double(on) >= kGridGroupShare * double(tested)) return grid;
  }
  return std::nullopt;
}

}  // namespace

std::optional<QuantizationGrid> detect_grid(const ModelTensor& tensor) {
  auto grid = grid_of(tensor);
  rethrow_read_error();
  return grid;
}

void grid_cells(const QuantizationGrid& grid, DType dtype, const float* row, size_t cols, float* lo, float* hi) {
  const double u = storage_rounding(dtype);
  const size_t width = grid.group == 0 ? cols : size_t(grid.group);
  for (size_t start = 0; start < cols; start += width) {
    const size_t n = std::min(width, cols - start);
    const auto g = group_grid(row + start, n, grid, u);
    for (size_t i = start; i < start + n; ++i) {
      if (!g) {  // a group of zeros: every value was 0 before rounding, or its cell says nothing
        lo[i] = -INFINITY, hi[i] = INFINITY;
        continue;
      }
      const double x = row[i], q = std::nearbyint((x - g->origin) / g->step);
      const double margin = (0.5 + allowance(*g, x, u)) * g->step;
      lo[i] = float(g->origin + q * g->step - margin);
      hi[i] = float(g->origin + q * g->step + margin);
    }
  }
}

TensorGrids detect_grids(const Model& model) {
  // Tensors in parallel (each reads a sample of its own rows): one after another, this was a
  // tenth of a second of one busy core in the 1 GB assay.
  const std::vector<ModelTensor>& tensors = model.tensors();
  std::vector<std::optional<QuantizationGrid>> found(tensors.size());
  parallel_for(tensors.size(), 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) found[i] = grid_of(tensors[i]);
  });
  rethrow_read_error();
  TensorGrids grids;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (found[i]) grids.emplace(tensors[i].name(), *found[i]);
  }
  return grids;
}

nlohmann::json quantization_finding(const Model& suspect, const TensorGrids& grids) {
  uint64_t total = 0;
  size_t tested = 0;
  struct Count {
    QuantizationGrid grid;
    size_t tensors = 0;
    uint64_t elements = 0;
  };
  std::vector<Count> counts;
  for (const ModelTensor& t : suspect.tensors()) {
    total += t.info->numel();
    if (t.info->shape.size() < 2) continue;
    ++tested;
    const auto found = grids.find(t.name());
    if (found == grids.end()) continue;
    const QuantizationGrid& grid = found->second;
    auto it = std::find_if(counts.begin(), counts.end(), [&](const Count& c) { return c.grid == grid; });
    if (it == counts.end()) it = counts.insert(counts.end(), Count{grid});
    ++it->tensors;
    it->elements += t.info->numel();
  }
  if (counts.empty()) return nullptr;
  // The grid named is the one holding most elements; the counts cover every grid found (a row of 32
  // elements quantized in groups of 32 reads as either).
  const Count& top = *std::max_element(counts.begin(), counts.end(),
                                       [](const Count& a, const Count& b) { return a.elements < b.elements; });
  size_t tensors = 0;
  uint64_t elements = 0;
  for (const Count& c : counts) tensors += c.tensors, elements += c.elements;
  return {{"format", top.grid.format()},
          {"scheme", top.grid.absmax ? "absmax" : "min-max"},
          {"levels", top.grid.levels},
          {"group_size", top.grid.group},
          {"tensors", tensors},
          {"tested", tested},
          {"share", total > 0 ? double(elements) / double(total) : 0.0}};
}

nlohmann::json quantization_finding(const Model& suspect) {
  return quantization_finding(suspect, detect_grids(suspect));
}

}  // namespace alloy::detail
