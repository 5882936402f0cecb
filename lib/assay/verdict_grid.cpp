// The merge confirmed through the suspect's quantization grid (see verdict.h). A merge rounded to
// int4 carries rounding noise 13-27x its own deviation from the base, which leaves the per-tensor
// weights too noisy for the sameness test. But the rounding is deterministic: the blend of the
// candidates with the recovered weights, rounded on the suspect's grid, gives back the suspect's
// grid points, so almost no blended value falls outside the cell of the suspect's stored value
// (measured at hidden 128, parents 1% from their base: 0.02% of the elements), while the reference
// candidate alone falls outside in ~1% (the elements within its deviation of a cell edge). A
// sibling or a fine-tune rounded the same way leaves the blend outside as often as the reference
// (1.43% against 1.41%), a correlated sibling (delta cosine <= 0.8 with the candidates') at least
// sqrt(1 - 0.8^2) = 0.6 times as often. The test asks for a tenfold reduction over enough elements.
#include <algorithm>
#include <cmath>
#include <vector>

#include "verdict.h"

namespace alloy::detail {
namespace {

// Rows read per tensor (evenly spaced), as the grid detection.
constexpr uint64_t kGridTestRows = 64;

struct OutsideCounts {
  uint64_t elements = 0, blend = 0, reference = 0;
  size_t tensors = 0;
};

// Counts, over kGridTestRows rows of one tensor the suspect stores on a grid, the elements whose
// blend (weights over `members`) and whose reference value fall outside the suspect's cell.
void count_outside(const ModelTensor& suspect, const QuantizationGrid& grid, const std::vector<const ModelTensor*>& inputs,
                   const std::vector<double>& weights, size_t reference, OutsideCounts* counts) {
  const TensorInfo& info = *suspect.info;
  const uint64_t cols = info.shape.back(), rows = info.numel() / cols;
  const uint64_t sampled = std::min(rows, kGridTestRows);
  std::vector<float> row(cols), lo(cols), hi(cols), value(cols);
  std::vector<double> blend(cols);
  for (uint64_t s = 0; s < sampled; ++s) {
    const size_t begin = size_t(s * rows / sampled * cols);
    load_range(suspect, begin, size_t(cols), row.data());
    grid_cells(grid, info.dtype, row.data(), size_t(cols), lo.data(), hi.data());
    std::fill(blend.begin(), blend.end(), 0.0);
    for (size_t m = 0; m < inputs.size(); ++m) {
      load_range(*inputs[m], begin, size_t(cols), value.data());
      for (size_t i = 0; i < cols; ++i) blend[i] += weights[m] * double(value[i]);
      if (m != reference) continue;
      for (size_t i = 0; i < cols; ++i) counts->reference += value[i] < lo[i] || value[i] > hi[i];
    }
    for (size_t i = 0; i < cols; ++i) counts->blend += blend[i] < double(lo[i]) || blend[i] > double(hi[i]);
    counts->elements += cols;
  }
  rethrow_read_error();
  ++counts->tensors;
}

}  // namespace

bool confirmed_through_grid(VerdictContext& v, const std::vector<int>& involved, int base) {
  const AssayResult& r = v.result;
  if (!r.evidence.contains("quantization") || r.evidence["quantization"]["share"].get<double>() < kQuantizedShare) return false;
  // The recipe's weights: each involved candidate's inverse-variance mean, scaled to sum 1.
  const std::vector<WeightSignificance> significance = weight_significance(v);
  std::vector<double> weights;
  double sum = 0;
  for (int c : involved) weights.push_back(significance[size_t(c)].weight), sum += weights.back();
  if (!(std::fabs(sum) > 0)) return false;
  for (double& w : weights) w /= sum;
  // The reference: the base when it is among the candidates, else the heaviest involved one.
  const int reference = base >= 0 ? base : involved[size_t(std::max_element(weights.begin(), weights.end()) - weights.begin())];
  std::vector<int> members = involved;
  size_t reference_index = size_t(std::find(members.begin(), members.end(), reference) - members.begin());
  if (reference_index == members.size()) {
    members.push_back(reference);
    weights.push_back(0.0);
  }
  OutsideCounts counts;
  for (const auto& t : r.tensors) {
    // Only tensors compared as stored: an aligned slot's elements are not in the grid's order.
    if (!t.fitted || t.aligned) continue;
    const auto grid = v.grids.find(t.name);
    const ModelTensor* s = v.suspect.find(t.name);
    if (grid == v.grids.end() || s == nullptr) continue;
    std::vector<const ModelTensor*> inputs;
    for (int c : members) {
      const ModelTensor* ct = v.models[size_t(c)]->find(t.name);
      if (ct == nullptr || ct->info->shape != s->info->shape) break;
      inputs.push_back(ct);
    }
    if (inputs.size() != members.size()) continue;
    count_outside(*s, grid->second, inputs, weights, reference_index, &counts);
  }
  const double ratio = counts.reference > 0 ? double(counts.blend) / double(counts.reference) : 1.0;
  const bool confirmed = counts.reference >= kGridRebuildMinOutside && ratio <= kGridRebuildRatio;
  v.result.evidence["grid_rebuild"] = {{"confirmed", confirmed},
                                       {"tensors", counts.tensors},
                                       {"elements", counts.elements},
                                       {"outside_blend", counts.blend},
                                       {"outside_reference", counts.reference},
                                       {"reference", v.candidate(reference).path},
                                       {"ratio", ratio},
                                       {"ratio_bar", kGridRebuildRatio},
                                       {"min_outside_reference", kGridRebuildMinOutside}};
  v.note("through the suspect's " + r.evidence["quantization"]["format"].get<std::string>() + " grid, " +
         std::to_string(counts.blend) + " of " + std::to_string(counts.elements) + " blended values (" +
         number_text(100.0 * double(counts.blend) / double(std::max<uint64_t>(counts.elements, 1)), 2) +
         "%) fall outside the cell of the suspect's value, against " + std::to_string(counts.reference) + " for " +
         v.candidate(reference).path + " alone (ratio " + number_text(ratio, 2) + ", bar " +
         number_text(kGridRebuildRatio) + (confirmed ? "): the blend rounds to the suspect, a merge"
                                                    : "): the blend does not explain the suspect's grid points"));
  return confirmed;
}

}  // namespace alloy::detail
