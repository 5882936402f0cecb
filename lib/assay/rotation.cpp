// The rotation stage: undo an orthogonal rotation of the residual stream (alloy-synth perturb
// rotate-residual; QuaRot, SpinQuant and SliceGPT do the same after folding the norm gains). A
// rotated suspect holds S_E = E Q (embeddings), S_R = R Q (every reader, [out, hidden]) and
// S_W = Q^T W (every writer, [hidden, in]). Embeddings and writers carry no folded gain, so they
// pin Q down: with T = sum_c w_c C_c (the candidates' blend, rows = embedding rows and writer
// columns), min ||T Q - S|| over orthogonal Q is Q = U V^T from the SVD of T^T S (orthogonal
// Procrustes, Schoenemann 1966), and for fixed Q the weights w are least squares. Both need only
// the per-candidate M_c = C_c^T S (hidden x hidden) and the Gram <C_c, C_d>, so one pass over the
// tensors is followed by a few alternations in memory. docs/assay.md, "Rotated residual stream".
#include <Eigen/Dense>
#include <cmath>

#include "alloy/core/dtype.h"
#include "alloy/core/residual_stream.h"
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using Mat = Eigen::MatrixXd;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Side = AlignedTensor::RotationSide;

constexpr int kAlternations = 8;

// Which side of the stored tensor Q multiplies, from the stream axis of the role table
// (alloy/core/residual_stream.h): the last axis (readers [out, hidden], embeddings, writer biases
// [hidden], stacked [E, out, hidden]) is kRight, the one before it (writers [hidden, in], stacked
// [E, hidden, in]) kLeft. *unknown is set for a tensor that meets the stream along an axis the
// stage cannot tell or undo.
Side side_of(const TensorPlace& p, const std::vector<uint64_t>& shape, uint64_t hidden, bool* unknown = nullptr) {
  const int axis = residual_axis(p.role, p.view, shape, hidden);
  if (unknown) *unknown = axis == kUnknownResidualAxis;
  if (axis < 0) return Side::kNone;
  if (size_t(axis) + 1 == shape.size()) return Side::kRight;
  if (size_t(axis) + 2 == shape.size()) return Side::kLeft;
  if (unknown) *unknown = true;
  return Side::kNone;
}

// A tensor as float64 [rows, last axis] (a stacked [E, in, out] as [E * in, out]).
Mat load_matrix(const ModelTensor& t) {
  const auto& s = t.info->shape;
  std::vector<float> v(t.info->numel());
  load_range(t, 0, v.size(), v.data());
  t.shard->release(*t.info);
  return Eigen::Map<const RowMajorF>(v.data(), Eigen::Index(v.size() / s.back()), Eigen::Index(s.back())).cast<double>();
}

// Whether Q is a randomised Hadamard, H diag(+-1) / sqrt(n) up to row and column signs: every entry
// +-1/sqrt(n) within 20%.
bool looks_hadamard(const Mat& q) {
  const double scale = std::sqrt(double(q.rows()));
  return (q.cwiseAbs().array() * scale - 1).abs().maxCoeff() < 0.2;
}

}  // namespace

void undo_rotation(const AlignedTensor& a, const std::vector<uint64_t>& shape, float* values) {
  if (!a.rotation || a.rotation_side == Side::kNone || shape.empty()) return;
  const auto n = Eigen::Index(std::llround(std::sqrt(double(a.rotation->size()))));
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> q(a.rotation->data(), n, n);
  uint64_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  // The products in double, by row_dots (rows of one side against rows of the other), into
  // buffers reused for every tensor: through Eigen's generic product and fresh double copies of
  // each tensor, the assay of the 1 GB benchmark model with its residual stream rotated took 155 s.
  static thread_local std::vector<double> in_rows, out_rows;
  const size_t hidden = size_t(n);
  if (a.rotation_side == Side::kRight) {
    // S = C Q on the last axis -> C = S Q^T: C[r][j] = <S_r, Q_j>.
    if (shape.back() != uint64_t(n)) return;
    const size_t rows = size_t(numel / uint64_t(n));
    double* in = at_least(in_rows, rows * hidden);
    double* out = at_least(out_rows, rows * hidden);
    for (size_t k = 0; k < rows * hidden; ++k) in[k] = values[k];
    row_dots(in, rows, q.data(), hidden, hidden, out);
    for (size_t k = 0; k < rows * hidden; ++k) values[k] = float(out[k]);
    return;
  }
  // S = Q^T C on the axis before the last, per leading block [hidden, cols] -> C = Q S:
  // C[i][c] = <Q_i, column c of S>, the columns transposed into rows first.
  if (shape.size() < 2 || shape[shape.size() - 2] != uint64_t(n)) return;
  const size_t cols = size_t(shape.back()), block = hidden * cols;
  double* in = at_least(in_rows, block);
  double* out = at_least(out_rows, block);
  for (uint64_t o = 0; o < numel / block; ++o) {
    float* w = values + o * block;
    for (size_t i = 0; i < hidden; ++i) {
      for (size_t c = 0; c < cols; ++c) in[c * hidden + i] = w[i * cols + c];
    }
    row_dots(q.data(), hidden, in, cols, hidden, out);
    for (size_t k = 0; k < block; ++k) w[k] = float(out[k]);
  }
}

void load_rows_unrotated(const AlignedTensor& a, const ModelTensor& t,
                         const std::vector<uint64_t>& rows, float* out) {
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
  static thread_local std::vector<double> in_rows, q_rows, out_rows;
  const double* q = a.rotation->data();
  if (right) {
    double* in = at_least(in_rows, count * n);
    double* dots = at_least(out_rows, count * n);
    for (size_t k = 0; k < count * n; ++k) in[k] = out[k];
    row_dots(in, count, q, n, n, dots);
    for (size_t k = 0; k < count * n; ++k) out[k] = float(dots[k]);
    return;
  }
  // A writer: stored row i of block o is Q_i times the block's columns, so each block holding a
  // requested row is read whole (once: the rows are taken block by block), the rows' compute alone.
  const size_t block = n * cols;
  static thread_local std::vector<float> stored;
  float* const w = at_least(stored, block);
  double* in = at_least(in_rows, block);
  std::vector<size_t> order(count);
  for (size_t r = 0; r < count; ++r) order[r] = r;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return rows[x] < rows[y]; });
  for (size_t first = 0; first < count;) {
    const uint64_t o = rows[order[first]] / n;
    size_t last = first;
    while (last < count && rows[order[last]] / n == o) ++last;
    load_range(t, size_t(o) * block, block, w);
    for (size_t i = 0; i < n; ++i) {
      for (size_t c = 0; c < cols; ++c) in[c * n + i] = w[i * cols + c];
    }
    const size_t group = last - first;
    double* qs = at_least(q_rows, group * n);
    double* dots = at_least(out_rows, group * cols);
    for (size_t j = 0; j < group; ++j)
      std::copy_n(q + (rows[order[first + j]] % n) * n, n, qs + j * n);
    row_dots(qs, group, in, cols, n, dots);
    for (size_t j = 0; j < group; ++j) {
      float* o_row = out + order[first + j] * cols;
      for (size_t c = 0; c < cols; ++c) o_row[c] = float(dots[j * cols + c]);
    }
    first = last;
  }
}

bool rotation_stage(const Model& suspect, const std::vector<const Model*>& candidates, Alignment* out) {
  const ModelArchitecture sa = detect_architecture(suspect);
  const ModelTensor* embedding = suspect.find(embedding_name(sa, suspect));
  if (!embedding || embedding->info->shape.size() != 2 || candidates.empty()) return false;
  const uint64_t hidden = embedding->info->shape[1];
  if (hidden < 2) return false;
  // The candidates that have the suspect's embedding shape take part.
  std::vector<const Model*> used;
  std::vector<ModelArchitecture> archs;
  for (const Model* m : candidates) {
    ModelArchitecture ca = detect_architecture(*m);
    const ModelTensor* e = m->find(embedding_name(ca, *m));
    if (e && e->info->shape == embedding->info->shape) used.push_back(m), archs.push_back(std::move(ca));
  }
  if (used.empty()) return false;
  // The tensors the estimate reads: the embeddings, and the writers when the embeddings alone have
  // too few rows. Each writer's output vectors are residual vectors: a [hidden, in] writer's
  // columns (S_W^T = C_W^T Q), a stacked [E, in, hidden] one's rows (GPT-OSS's expert down
  // projections: S_W = C_W Q, as the embeddings), a writer bias itself. Readers are left out: a
  // folded norm scales their hidden axis, so they are not rotations of the candidates' readers.
  struct Pair {
    std::string suspect, candidate;  // candidate empty: each candidate's embedding
    bool transpose;
  };
  std::vector<Pair> pairs;
  pairs.push_back({embedding->name(), "", false});
  uint64_t rows = embedding->info->shape[0];
  if (rows < kRotationRowsPerHidden * hidden) {
    for (const auto& t : suspect.tensors()) {
      const TensorPlace place = sa.classify(t.name());
      // Separate modules (an MTP head's blocks) are not the decoder's stream: perturb leaves them.
      if (!place.submodel.empty()) continue;
      const bool writer = residual_role(place.role).use == ResidualUse::kWrites || place.role == TensorRole::kExpertBias;
      const auto& shape = t.info->shape;
      const Side side = side_of(place, shape, hidden);
      const bool columns = side == Side::kLeft && shape.size() == 2;  // [hidden, in]
      if (!writer || !(columns || side == Side::kRight)) continue;
      bool everywhere = true;
      for (const Model* m : used) {
        const ModelTensor* ct = m->find(t.name());
        everywhere &= ct && ct->info->shape == shape;
      }
      if (!everywhere) continue;
      pairs.push_back({t.name(), t.name(), columns});
      rows += columns ? shape[1] : t.info->numel() / hidden;
    }
  }
  if (rows < 4 * hidden) return false;  // too few residual vectors to tell a rotation from a fit
  const size_t k = used.size();
  const auto n = Eigen::Index(hidden);
  std::vector<Mat> m(k, Mat::Zero(n, n));
  Mat gram = Mat::Zero(Eigen::Index(k), Eigen::Index(k));
  double suspect_norm2 = 0;
  for (const Pair& p : pairs) {
    Mat s = load_matrix(*suspect.find(p.suspect));
    if (p.transpose) s.transposeInPlace();
    suspect_norm2 += s.squaredNorm();
    std::vector<Mat> cs;
    for (size_t c = 0; c < k; ++c) {
      const std::string name = p.candidate.empty() ? embedding_name(archs[c], *used[c]) : p.candidate;
      Mat x = load_matrix(*used[c]->find(name));
      if (p.transpose) x.transposeInPlace();
      m[c] += x.transpose() * s;
      cs.push_back(std::move(x));
    }
    for (size_t a = 0; a < k; ++a) {
      for (size_t b = a; b < k; ++b) {
        const double g = (cs[a].array() * cs[b].array()).sum();
        gram(Eigen::Index(a), Eigen::Index(b)) += g;
        if (a != b) gram(Eigen::Index(b), Eigen::Index(a)) += g;
      }
    }
  }
  if (!(suspect_norm2 > 0)) return false;
  // Alternate: Q from the blend's Procrustes problem, then the blend's weights for that Q.
  Eigen::VectorXd w = Eigen::VectorXd::Constant(Eigen::Index(k), 1.0 / double(k));
  Mat q = Mat::Identity(n, n);
  Eigen::VectorXd b = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(k));
  const Mat ridge = 1e-12 * (gram.trace() + 1e-300) * Mat::Identity(Eigen::Index(k), Eigen::Index(k));
  for (int it = 0; it < kAlternations; ++it) {
    Mat blend = Mat::Zero(n, n);
    for (size_t c = 0; c < k; ++c) blend += w(Eigen::Index(c)) * m[c];
    const Eigen::BDCSVD<Mat> svd(blend, Eigen::ComputeFullU | Eigen::ComputeFullV);
    q = svd.matrixU() * svd.matrixV().transpose();
    for (size_t c = 0; c < k; ++c) b(Eigen::Index(c)) = (q.array() * m[c].array()).sum();  // <C_c Q, S>
    w = (gram + ridge).ldlt().solve(b);
  }
  const double residual2 = (suspect_norm2 - 2 * w.dot(b) + w.dot(gram * w)) / suspect_norm2;
  const double residual = std::sqrt(std::max(0.0, residual2));
  if (!(residual < kRotationResidual)) return false;
  const bool hadamard = looks_hadamard(q);
  if (hadamard) {
    // Snap to the exact +-1/sqrt(n) entries (the estimate's noise then drops out entirely) when the
    // snapped matrix is still orthogonal.
    const double scale = 1 / std::sqrt(double(n));
    const Mat snapped = q.unaryExpr([scale](double v) { return v < 0 ? -scale : scale; });
    if ((snapped.transpose() * snapped - Mat::Identity(n, n)).norm() < 1e-9) q = snapped;
  }
  auto rotation = std::make_shared<std::vector<double>>(size_t(n * n));
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < n; ++j) (*rotation)[size_t(i * n + j)] = q(i, j);
  }
  const double distance_from_identity = (q - Mat::Identity(n, n)).norm() / std::sqrt(double(n));
  std::vector<std::string> undone, not_undone;
  for (const auto& t : suspect.tensors()) {
    const TensorPlace place = sa.classify(t.name());
    if (!place.submodel.empty()) continue;
    bool unknown = false;
    const Side side = side_of(place, t.info->shape, hidden, &unknown);
    if (unknown) not_undone.push_back(t.name());
    if (side == Side::kNone) continue;
    AlignedTensor a;
    a.source = t.name();
    a.gather = TensorGather::of(t.info->shape, false);
    a.rotation_side = side;
    a.rotation = rotation;
    out->tensors[t.name()] = std::move(a);
    undone.push_back(t.name());
  }
  std::vector<double> weights(w.data(), w.data() + w.size());
  out->permutations.push_back({{"kind", "rotation"},
                               {"hidden", hidden},
                               {"residual", residual},
                               {"hadamard", hadamard},
                               {"distance_from_identity", distance_from_identity},
                               {"rows", rows},
                               {"estimated_on", pairs.size()},
                               {"blend_weights", weights},
                               {"tensors_undone", undone.size()},
                               {"not_undone", not_undone}});
  return true;
}

}  // namespace alloy::detail
