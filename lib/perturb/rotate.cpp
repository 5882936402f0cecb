// rotate-residual: fold-norms, then an orthogonal rotation Q of the residual stream (QuaRot,
// SpinQuant, SliceGPT): embeddings E Q, readers W Q, writers Q^T W (see alloy/perturb/perturb.h).
// With unit norm gains RMSNorm(x Q) = RMSNorm(x) Q, so every block sees the same function of a
// rotated stream and the logits are unchanged.
#include <Eigen/Dense>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>

#include "alloy/core/error.h"
#include "alloy/core/sha256.h"
#include "internal.h"

namespace alloy {

const char* residual_rotation_name(ResidualRotation rotation) {
  return rotation == ResidualRotation::kHadamard ? "hadamard" : "random";
}

std::optional<ResidualRotation> residual_rotation_from_name(std::string_view name) {
  if (name == "random") return ResidualRotation::kRandom;
  if (name == "hadamard") return ResidualRotation::kHadamard;
  return std::nullopt;
}

namespace {

// The +-1 diagonal of the randomised Hadamard.
std::vector<int> hadamard_signs(uint64_t seed, int n) {
  detail::PerturbRng rng(seed, "rotate-residual:signs");
  std::vector<int> s(static_cast<size_t>(n));
  for (int& x : s) x = (rng.next() >> 63) ? -1 : 1;
  return s;
}

}  // namespace

std::vector<double> residual_rotation(uint64_t seed, int hidden, ResidualRotation rotation) {
  if (hidden < 1) {
    throw Error(ErrorCode::kInvalidArgument, "perturb: rotate-residual needs a hidden size >= 1");
  }
  const size_t n = size_t(hidden);
  std::vector<double> q(n * n);
  if (rotation == ResidualRotation::kHadamard) {
    if (!std::has_single_bit(unsigned(hidden))) {
      throw Error(ErrorCode::kInvalidArgument,
                  "perturb: --rotation hadamard needs a hidden size that is a power of two (got " +
                      std::to_string(hidden) + "); use --rotation random");
    }
    const std::vector<int> s = hadamard_signs(seed, hidden);
    const double scale = 1.0 / std::sqrt(double(n));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        q[i * n + j] = ((std::popcount(i & j) & 1) ? -scale : scale) * s[j];
      }
    }
    return q;
  }
  std::vector<float> z(n * n);
  synth_normal(seed, synth_stream_id("perturb:rotate-residual"), 0, z.size(), z.data());
  const Eigen::MatrixXd g =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
          z.data(), Eigen::Index(n), Eigen::Index(n))
          .cast<double>();
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd m = qr.householderQ() * Eigen::MatrixXd::Identity(Eigen::Index(n), Eigen::Index(n));
  const Eigen::MatrixXd r = qr.matrixQR().triangularView<Eigen::Upper>();
  for (Eigen::Index j = 0; j < Eigen::Index(n); ++j) {
    if (r(j, j) < 0) m.col(j) = -m.col(j);  // sign fix: R with a positive diagonal
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) q[i * n + j] = m(Eigen::Index(i), Eigen::Index(j));
  }
  return q;
}

namespace detail {
namespace {

using nlohmann::json;
using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The stream axis of the tensor contracted with Q: new[.., j, ..] = sum_i old[.., i, ..] Q[i, j]
// (W Q for a reader [out, hidden], Q^T W for a writer [hidden, in], b Q for a bias [hidden]).
TensorTransform rotate(std::shared_ptr<const RowMajor> q, std::vector<uint64_t> shape, int axis,
                       TensorTransform before) {
  return [q = std::move(q), shape = std::move(shape), axis, before = std::move(before)](float* v, uint64_t rows,
                                                                                        uint64_t cols) {
    json extra = before ? before(v, rows, cols) : json(nullptr);
    const uint64_t n = uint64_t(q->rows());
    uint64_t outer = 1, inner = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (int(d) < axis) outer *= shape[d];
      if (int(d) > axis) inner *= shape[d];
    }
    if (shape[size_t(axis)] != n || outer * n * inner != rows * cols) {
      throw Error(ErrorCode::kShapeMismatch, "perturb: rotate-residual: a tensor of " + std::to_string(rows * cols) +
                                                 " values does not have the hidden size " + std::to_string(n) +
                                                 " on its residual axis");
    }
    using Block = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    for (uint64_t o = 0; o < outer; ++o) {
      Eigen::Map<Block> w(v + o * n * inner, Eigen::Index(n), Eigen::Index(inner));  // [hidden, inner]
      const RowMajor in = w.cast<double>();
      w = RowMajor(q->transpose() * in).cast<float>();
    }
    return extra;
  };
}

}  // namespace

PerturbPlan plan_rotation(const PerturbInput& input) {
  StreamLayout layout;
  PerturbPlan plan = plan_fold_norms(input, &layout);
  const int hidden = int(layout.hidden);
  if (layout.head.empty() && !layout.final_norm.empty()) {
    // Tied: the final norm stays in place, and must already be a unit gain to commute with Q.
    const float offset = layout.norm_offset(layout.final_norm);
    for (float w : load_values(require_tensor(input.model, layout.final_norm))) {
      if (w + offset != 1.0f) {
        throw Error(ErrorCode::kInvalidArgument,
                    "perturb: rotate-residual: " + input.model.path().string() + " ties lm_head to the embeddings, so " +
                        layout.final_norm + " cannot be folded and is not a unit gain; the rotation would change the function");
      }
    }
  }
  const std::vector<double> qv = residual_rotation(input.options.seed, hidden, input.options.rotation);
  auto q = std::make_shared<const RowMajor>(
      Eigen::Map<const RowMajor>(qv.data(), Eigen::Index(hidden), Eigen::Index(hidden)));
  std::map<std::string, const StreamTensor*> by_name;
  for (const StreamTensor& t : layout.tensors) by_name[t.name] = &t;
  json embeddings = json::array(), readers = json::array(), writers = json::array();
  for (PlannedTensor& t : plan.tensors) {
    const auto it = by_name.find(t.source);
    if (it == by_name.end()) continue;  // norms: all ones after the fold; the rest is off the stream
    const StreamTensor& s = *it->second;
    (s.role.use == ResidualUse::kEmbedding ? embeddings : s.role.use == ResidualUse::kReads ? readers : writers)
        .push_back(t.name);
    t.transform = rotate(q, s.shape, s.axis, std::move(t.transform));
  }
  json rotation = {{"kind", residual_rotation_name(input.options.rotation)},
                   {"hidden", hidden},
                   {"sha256", sha256_hex(qv.data(), qv.size() * sizeof(double))}};
  if (input.options.rotation == ResidualRotation::kHadamard) {
    rotation["signs"] = hadamard_signs(input.options.seed, hidden);
  }
  plan.truth["rotation"] = std::move(rotation);
  plan.truth["rotated"] = {{"embeddings", embeddings}, {"readers", readers}, {"writers", writers}};
  // Separate modules (a vision tower feeding the stream, an MTP head reading it) are left as they
  // are: the text function is preserved, theirs is not claimed.
  plan.truth["unrotated_modules"] = layout.submodels;
  return plan;
}

}  // namespace detail
}  // namespace alloy
