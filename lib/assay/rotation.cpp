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
#include <memory>

#include "alloy/core/dtype.h"
#include "alloy/core/residual_stream.h"
#include "alloy/core/units.h"
#include "internal.h"

namespace alloy::detail {
namespace {

using Mat = Eigen::MatrixXd;
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

// One estimate pair's residual vectors, a block of them at a time, for the products C_c^T S: rows
// [r0, r0 + len) of the tensor seen as [rows, hidden] (the rows of embeddings and of stacked [E,
// in, hidden] writers, the columns of a [hidden, in] writer), transposed into `out` as hidden x len
// doubles. Only a block is held (a writer's [hidden, in] is read once whole): the whole tensors as
// doubles were 1.2 GB for the 1 GB benchmark model's embeddings, and would be tens of GB for a
// vocabulary of 250k at hidden 4096.
class ResidualRows {
 public:
  ResidualRows(const ModelTensor& t, bool columns, uint64_t hidden)
      : t_(t), columns_(columns), hidden_(hidden) {
    rows_ = columns ? t.info->shape[1] : t.info->numel() / hidden;
    if (columns) {
      whole_.resize(t.info->numel());
      load_range(t, 0, whole_.size(), whole_.data());
    }
  }
  ~ResidualRows() { t_.shard->release(*t_.info); }
  uint64_t rows() const { return rows_; }
  void block(uint64_t r0, uint64_t len, double* out) {
    if (columns_) {
      for (uint64_t h = 0; h < hidden_; ++h) {
        const float* from = whole_.data() + h * rows_ + r0;
        for (uint64_t r = 0; r < len; ++r) out[h * len + r] = from[r];
      }
      return;
    }
    float* rows = at_least(staging_, len * hidden_);
    load_range(t_, r0 * hidden_, len * hidden_, rows);
    for (uint64_t r = 0; r < len; ++r) {
      for (uint64_t h = 0; h < hidden_; ++h) out[h * len + r] = rows[r * hidden_ + h];
    }
  }

 private:
  const ModelTensor& t_;
  bool columns_;
  uint64_t hidden_, rows_;
  std::vector<float> whole_, staging_;
};

// Residual vectors per block of the products: one tile of row_dots' sums (cosine_cost.cpp).
constexpr uint64_t kEstimateBlock = 512;

// Whether Q is a randomised Hadamard, H diag(+-1) / sqrt(n) up to row and column signs: every entry
// +-1/sqrt(n) within 20%.
bool looks_hadamard(const Mat& q) {
  const double scale = std::sqrt(double(q.rows()));
  return (q.cwiseAbs().array() * scale - 1).abs().maxCoeff() < 0.2;
}

}  // namespace

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
  // M_c = C_c^T S block by block (row_dots: every sum in one fixed order, in parallel over the
  // rows of C_c^T), the blocks added in order; the norms and the Gram likewise.
  std::vector<std::vector<double>> xt(k, std::vector<double>(size_t(hidden * kEstimateBlock)));
  std::vector<double> st(size_t(hidden * kEstimateBlock)), dots(size_t(hidden * hidden));
  for (const Pair& p : pairs) {
    ResidualRows s(*suspect.find(p.suspect), p.transpose, hidden);
    std::vector<std::unique_ptr<ResidualRows>> cs;
    for (size_t c = 0; c < k; ++c) {
      const std::string name = p.candidate.empty() ? embedding_name(archs[c], *used[c]) : p.candidate;
      cs.push_back(std::make_unique<ResidualRows>(*used[c]->find(name), p.transpose, hidden));
    }
    for (uint64_t r0 = 0; r0 < s.rows(); r0 += kEstimateBlock) {
      const uint64_t len = std::min(kEstimateBlock, s.rows() - r0);
      const size_t terms = size_t(hidden * len);
      s.block(r0, len, st.data());
      for (size_t e = 0; e < terms; ++e) suspect_norm2 += st[e] * st[e];
      for (size_t c = 0; c < k; ++c) {
        cs[c]->block(r0, len, xt[c].data());
        row_dots(xt[c].data(), size_t(hidden), st.data(), size_t(hidden), size_t(len), dots.data());
        m[c] += Eigen::Map<
            const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
            dots.data(), n, n);
      }
      for (size_t a = 0; a < k; ++a) {
        for (size_t b = a; b < k; ++b) {
          double g = 0;
          for (size_t e = 0; e < terms; ++e) g += xt[a][e] * xt[b][e];
          gram(Eigen::Index(a), Eigen::Index(b)) += g;
          if (a != b) gram(Eigen::Index(b), Eigen::Index(a)) += g;
        }
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
