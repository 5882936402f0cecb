// Reading a suspect tensor through its alignment (internal.h, AlignedTensor): the stored values
// with any rotation undone, gathered into the candidates' order and scaled, either whole (the full
// assay) or only the rows a sampled assay reads.
#include <algorithm>

#include "internal.h"

namespace alloy::detail {
namespace {

// Aligned row `row` (of matrix m: index m * rows + i) of `a`, already gathered into `o`, scaled as
// the alignment says: divided or multiplied by its row scale, then each column by its column
// scale (around the norm's offset).
void scale_row(const AlignedTensor& a, uint64_t m, uint64_t row, uint64_t cols, float* o) {
  if (!a.row_scale.empty()) {
    const float f = a.row_scale[row];
    for (uint64_t col = 0; col < cols; ++col) o[col] = a.row_divides ? o[col] / f : o[col] * f;
  }
  if (!a.col_scale.empty()) {
    const float* f = a.col_scale.data() + m * cols;
    const float off = a.col_offset;
    for (uint64_t col = 0; col < cols; ++col) {
      if (off != 0) o[col] += off;
      o[col] = a.col_divides ? o[col] / f[col] : o[col] * f[col];
      if (off != 0) o[col] -= off;
    }
  }
}

}  // namespace

void load_aligned(const Model& suspect, const Alignment& alignment, const std::string& name,
                  std::vector<float>* out) {
  const AlignedTensor& a = alignment.tensors.at(name);
  const ModelTensor& t = *suspect.find(a.source);
  const uint64_t n = t.info->numel();
  // Reused for every tensor: a fresh vector cost a page fault per 4 KiB of it.
  static thread_local std::vector<float> stored;
  float* const src = at_least(stored, n);
  load_range(t, 0, n, src);
  if (a.rotation) undo_rotation(a, t.info->shape, src);
  out->resize(n);
  const TensorGather& g = a.gather;
  if (g.matrices * g.rows * g.cols != n) {
    std::copy_n(src, n, out->begin());
  } else {
    g.apply(src, out->data());
  }
  if (a.row_scale.empty() && a.col_scale.empty()) return;
  for (uint64_t m = 0; m < g.matrices; ++m) {
    for (uint64_t r = 0; r < g.rows; ++r)
      scale_row(a, m, m * g.rows + r, g.cols, out->data() + (m * g.rows + r) * g.cols);
  }
}

void load_aligned_rows(const Model& suspect, const Alignment& alignment, const std::string& name,
                       const std::vector<uint64_t>& rows, uint64_t row_length, float* out) {
  const AlignedTensor& a = alignment.tensors.at(name);
  const ModelTensor& t = *suspect.find(a.source);
  const TensorGather& g = a.gather;
  const uint64_t n = t.info->numel();
  if (g.matrices * g.rows * g.cols != n || g.cols != row_length ||
      t.info->shape.back() != row_length) {
    // A slot whose rows are not the stored tensor's rows: materialise it whole, then take the rows.
    static thread_local std::vector<float> whole;
    load_aligned(suspect, alignment, name, &whole);
    for (size_t r = 0; r < rows.size(); ++r)
      std::copy_n(whole.data() + rows[r] * row_length, row_length, out + r * row_length);
    return;
  }
  // Aligned row (m, i) is stored row (matrix[m], row[m * rows + i]), its columns gathered by col.
  std::vector<uint64_t> source(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const uint64_t m = rows[r] / g.rows, i = rows[r] % g.rows;
    source[r] =
        (g.matrix.empty() ? m : g.matrix[m]) * g.rows + (g.row.empty() ? i : g.row[m * g.rows + i]);
  }
  static thread_local std::vector<float> stored;
  float* const src = at_least(stored, rows.size() * row_length);
  load_rows_unrotated(a, t, source, src);
  for (size_t r = 0; r < rows.size(); ++r) {
    const uint64_t m = rows[r] / g.rows;
    const float* line = src + r * row_length;
    float* o = out + r * row_length;
    if (g.col.empty()) {
      std::copy_n(line, row_length, o);
    } else {
      const uint32_t* c = g.col.data() + m * row_length;
      for (uint64_t i = 0; i < row_length; ++i) o[i] = line[c[i]];
    }
    scale_row(a, m, rows[r], row_length, o);
  }
}

}  // namespace alloy::detail
