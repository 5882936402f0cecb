// Reading a suspect tensor through its alignment (internal.h, AlignedTensor): the stored values
// with any rotation undone (the rotation itself is estimated in rotation.cpp), gathered into the
// candidates' order and scaled, either whole (the full assay) or only the rows a sampled assay and
// the gain fit read.
#include <algorithm>
#include <cmath>

#include "internal.h"

namespace alloy::detail {
namespace {

using Side = AlignedTensor::RotationSide;

// Rows (count x n floats, in place) times Q^T, row r becoming <row r, Q_j> for each j: a reader's
// undo (S = C Q -> C = S Q^T), a slab of rows at a time. row_dots sums each element in one fixed
// order whatever the other rows, so the bits do not depend on which rows are undone together.
void rows_times_qt(const double* q, size_t n, float* rows, size_t count) {
  static thread_local std::vector<double> in_rows, out_rows;
  double* in = at_least(in_rows, std::min(count, kRotationSlab) * n);
  double* out = at_least(out_rows, std::min(count, kRotationSlab) * n);
  for (size_t r0 = 0; r0 < count; r0 += kRotationSlab) {
    const size_t len = std::min(kRotationSlab, count - r0);
    float* v = rows + r0 * n;
    for (size_t k = 0; k < len * n; ++k) in[k] = v[k];
    row_dots(in, len, q, n, n, out);
    for (size_t k = 0; k < len * n; ++k) v[k] = float(out[k]);
  }
}

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

void undo_rotation(const AlignedTensor& a, const std::vector<uint64_t>& shape, float* values) {
  if (!a.rotation || a.rotation_side == Side::kNone || shape.empty()) return;
  const size_t n = size_t(std::llround(std::sqrt(double(a.rotation->size()))));
  const double* q = a.rotation->data();  // row-major n x n
  uint64_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  // The products in double, by row_dots (rows of one side against rows of the other), into
  // buffers reused for every tensor: through Eigen's generic product and fresh double copies of
  // each tensor, the assay of the 1 GB benchmark model with its residual stream rotated took 155 s.
  // A slab of rows (or columns) at a time: the whole tensor twice in doubles was most of a rotated
  // model's full assay's memory (the embeddings: 0.8 GB here, 16 GB at 250k x 4096). Each sum is
  // the same whatever the slab (row_dots' fixed order).
  const size_t hidden = n;
  if (a.rotation_side == Side::kRight) {
    // S = C Q on the last axis -> C = S Q^T: C[r][j] = <S_r, Q_j>.
    if (shape.back() == n) rows_times_qt(q, n, values, size_t(numel / n));
    return;
  }
  static thread_local std::vector<double> in_rows, out_rows;
  // S = Q^T C on the axis before the last, per leading block [hidden, cols] -> C = Q S:
  // C[i][c] = <Q_i, column c of S>, each slab of columns transposed into rows first (a column of
  // the result depends on that column alone, so it is written back in place).
  if (shape.size() < 2 || shape[shape.size() - 2] != n) return;
  const size_t cols = size_t(shape.back()), block = hidden * cols,
               slab = std::min(cols, kRotationSlab);
  double* in = at_least(in_rows, slab * hidden);
  double* out = at_least(out_rows, slab * hidden);
  for (uint64_t o = 0; o < numel / block; ++o) {
    float* w = values + o * block;
    for (size_t c0 = 0; c0 < cols; c0 += kRotationSlab) {
      const size_t len = std::min(kRotationSlab, cols - c0);
      for (size_t i = 0; i < hidden; ++i) {
        for (size_t c = 0; c < len; ++c) in[c * hidden + i] = w[i * cols + c0 + c];
      }
      row_dots(q, hidden, in, len, hidden, out);
      for (size_t i = 0; i < hidden; ++i) {
        for (size_t c = 0; c < len; ++c) w[i * cols + c0 + c] = float(out[i * len + c]);
      }
    }
  }
}

void load_rows_unrotated(const AlignedTensor& a, const ModelTensor& t,
                         const std::vector<uint64_t>& rows, float* out, size_t slab_columns) {
  const std::vector<uint64_t>& shape = t.info->shape;
  const size_t cols = size_t(shape.back()), count = rows.size();
  const size_t n = a.rotation ? size_t(std::llround(std::sqrt(double(a.rotation->size())))) : 0;
  const bool right = a.rotation && a.rotation_side == Side::kRight && cols == n;
  const bool left = a.rotation && a.rotation_side == Side::kLeft && shape.size() >= 2 &&
                    shape[shape.size() - 2] == n;
  if (!left) {
    for (size_t r = 0; r < count; ++r) load_range(t, size_t(rows[r]) * cols, cols, out + r * cols);
  }
  if (!right && !left) return;
  // The same products as undo_rotation's, for these rows only: row_dots sums each element in one
  // fixed order whatever the other rows, so every value has the bits the whole tensor's undo gives.
  const double* q = a.rotation->data();
  if (right) {
    rows_times_qt(q, n, out, count);
    return;
  }
  static thread_local std::vector<double> in_rows, q_rows, out_rows;
  // A writer: stored row i of block o is Q_i times the block's columns, so each block holding a
  // requested row is read (once: the rows are taken block by block), a slab of columns at a time
  // with all n of its rows (each dot runs over a whole column, as undo_rotation's), and only the
  // requested rows computed. Whole, the block was 12 bytes per element (400 MB of doubles at
  // hidden 4096 x 12288); a slab is at most n x slab_columns.
  const size_t slab = std::max<size_t>(1, std::min(cols, slab_columns));
  static thread_local std::vector<float> stored;
  float* const w = at_least(stored, n * slab);
  double* in = at_least(in_rows, n * slab);
  std::vector<size_t> order(count);
  for (size_t r = 0; r < count; ++r) order[r] = r;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return rows[x] < rows[y]; });
  for (size_t first = 0; first < count;) {
    const uint64_t o = rows[order[first]] / n;
    size_t last = first;
    while (last < count && rows[order[last]] / n == o) ++last;
    const size_t group = last - first;
    double* qs = at_least(q_rows, group * n);
    double* dots = at_least(out_rows, group * slab);
    for (size_t j = 0; j < group; ++j)
      std::copy_n(q + (rows[order[first + j]] % n) * n, n, qs + j * n);
    const size_t block_start = size_t(o) * n * cols;
    for (size_t c0 = 0; c0 < cols; c0 += slab) {
      const size_t len = std::min(slab, cols - c0);
      if (len == cols) {
        load_range(t, block_start, n * cols, w);  // the whole block in one read
      } else {
        for (size_t i = 0; i < n; ++i) load_range(t, block_start + i * cols + c0, len, w + i * len);
      }
      for (size_t i = 0; i < n; ++i) {
        for (size_t c = 0; c < len; ++c) in[c * n + i] = w[i * len + c];
      }
      row_dots(qs, group, in, len, n, dots);
      for (size_t j = 0; j < group; ++j) {
        float* o_row = out + order[first + j] * cols + c0;
        for (size_t c = 0; c < len; ++c) o_row[c] = float(dots[j * len + c]);
      }
    }
    first = last;
  }
}

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
