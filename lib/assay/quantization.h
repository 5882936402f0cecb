// Quantization grids in the suspect's stored weights (lib/assay/quantization.cpp), internal to the
// assay. A model released after a quantization round trip (quantized to int4 or int8 with one
// scale per group of elements, then dequantized and stored in bf16, f16 or f32) has every matrix on
// a grid: within each group, every value is an integer multiple of the group's scale (absmax:
// x = q s, |q| <= L, s = max|x| / L) or lies on min + q s (min-max: 0 <= q <= L,
// s = (max - min) / L). The rounding it adds is noise no merge recipe explains (int4 with groups of
// 32: about 10% of the weights' norm), and can hide a merge: the assay reports the grid and lowers
// a verdict that the noise left undecided (docs/assay.md, "Quantization grids").
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "alloy/core/dtype.h"
#include "alloy/core/model.h"

namespace alloy::detail {

struct QuantizationGrid {
  bool absmax = true;  // x = q s (absmax); else x = min + q s (min-max)
  int levels = 0;      // L: 7 or 127 (absmax), 15 or 255 (min-max)
  uint64_t group = 0;  // elements per scale along the last axis; 0: one scale per row
  std::string format() const;  // "int4" or "int8"
  bool operator==(const QuantizationGrid&) const = default;
};

// Rows read per tensor, and the share of their groups that must lie on a grid.
inline constexpr uint64_t kGridRows = 16;
inline constexpr double kGridGroupShare = 0.9;

// The grid `tensor` lies on, if any: the first of (int4 absmax, int4 min-max, int8 absmax, uint8
// min-max) x (groups of 32, 64, 128, whole rows) on which at least kGridGroupShare of the groups of
// kGridRows evenly spaced rows lie, every value within the storage dtype's rounding of its grid
// point. Tensors of fewer than 2 axes or 1024 elements, or a last axis under 32, have none. By
// chance a group of 32 unquantized bf16 values passes the int4 test with probability ~1e-39.
std::optional<QuantizationGrid> detect_grid(const ModelTensor& tensor);

// The cell of each value of one stored row (`cols` values in `dtype`) on `grid`: every value before
// the rounding that lands on the same grid point, widened by the storage rounding allowed when
// testing the grid: [lo[i], hi[i]]. A group of zeros has no step: its cells are unbounded.
void grid_cells(const QuantizationGrid& grid, DType dtype, const float* row, size_t cols, float* lo, float* hi);

// Every tensor of `model` that lies on a grid (detect_grid), by name.
using TensorGrids = std::map<std::string, QuantizationGrid>;
TensorGrids detect_grids(const Model& model);

// Over the suspect's matrices, given their grids: when some lie on a grid, {"format", "scheme",
// "levels", "group_size" (of the grid holding most elements), "tensors" (on any grid), "tested",
// "share" (of the suspect's parameters on any grid)}; else null. The one-argument form detects the
// grids itself.
nlohmann::json quantization_finding(const Model& suspect, const TensorGrids& grids);
nlohmann::json quantization_finding(const Model& suspect);

}  // namespace alloy::detail
