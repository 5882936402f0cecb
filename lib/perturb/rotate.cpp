// rotate-residual: fold-norms, then an orthogonal rotation Q of the residual stream (QuaRot,
// SpinQuant, SliceGPT): embeddings E Q, readers W Q, writers Q^T W (see alloy/perturb/perturb.h).
// With unit norm gains RMSNorm(x Q) = RMSNorm(x) Q, so every block sees the same function of a
// rotated stream and the logits are unchanged.
#include <Eigen/Dense>
#include <bit>
#include <cmath>
#include <cstring>
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

enum class Side { kNone, kReader, kWriter, kNorm };

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// How a tensor of synth's families meets the residual stream.
Side side_of(const std::string& name) {
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return Side::kReader;
  for (const char* reader : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                             "gate_proj.weight", "up_proj.weight", "mlp.gate.weight", "mlp.shared_expert_gate.weight"}) {
    if (ends_with(name, reader)) return Side::kReader;
  }
  for (const char* writer : {"self_attn.o_proj.weight", "down_proj.weight"}) {
    if (ends_with(name, writer)) return Side::kWriter;
  }
  if (ends_with(name, "layernorm.weight") || name == "model.norm.weight") return Side::kNorm;
  for (const char* inner : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) {
    if (ends_with(name, inner)) return Side::kNone;
  }
  throw Error(ErrorCode::kInvalidArgument,
              "perturb: rotate-residual does not know how tensor '" + name +
                  "' meets the residual stream (it rotates synth's Llama and Qwen2-MoE layouts)");
}

// readers (and embeddings, whose rows are residual vectors): W Q; writers: Q^T W.
TensorTransform rotate(std::shared_ptr<const RowMajor> q, Side side, TensorTransform before) {
  return [q = std::move(q), side, before = std::move(before)](float* v, uint64_t rows, uint64_t cols) {
    json extra = before ? before(v, rows, cols) : json(nullptr);
    const uint64_t n = uint64_t(q->rows());
    if ((side == Side::kReader && cols != n) || (side == Side::kWriter && rows != n)) {
      throw Error(ErrorCode::kShapeMismatch, "perturb: rotate-residual: a tensor of shape [" + std::to_string(rows) +
                                                 ", " + std::to_string(cols) + "] does not have the hidden size " +
                                                 std::to_string(n) + " on its residual axis");
    }
    Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> w(v, Eigen::Index(rows),
                                                                                        Eigen::Index(cols));
    const RowMajor in = w.cast<double>();
    const RowMajor out = side == Side::kReader ? RowMajor(in * *q) : RowMajor(q->transpose() * in);
    w = out.cast<float>();
    return extra;
  };
}

}  // namespace

PerturbPlan plan_rotation(const PerturbInput& input) {
  const Architecture& arch = require_architecture(input);
  PerturbPlan plan = plan_rescaling(input);  // fold-norms: the kind is not rescale-neurons
  const int hidden = arch.hidden;
  if (input.model.find("lm_head.weight") == nullptr) {
    // Tied: the final norm stays in place, and must already be all ones to commute with Q.
    for (float g : load_values(require_tensor(input.model, "model.norm.weight"))) {
      if (g != 1.0f) {
        throw Error(ErrorCode::kInvalidArgument,
                    "perturb: rotate-residual: " + input.model.path().string() +
                        " ties lm_head to the embeddings, so model.norm.weight cannot be folded and is not all "
                        "ones; the rotation would change the function");
      }
    }
  }
  const std::vector<double> qv = residual_rotation(input.options.seed, hidden, input.options.rotation);
  auto q = std::make_shared<const RowMajor>(
      Eigen::Map<const RowMajor>(qv.data(), Eigen::Index(hidden), Eigen::Index(hidden)));
  json embeddings = json::array(), readers = json::array(), writers = json::array();
  for (PlannedTensor& t : plan.tensors) {
    const Side side = side_of(t.name);
    if (side == Side::kNone || side == Side::kNorm) continue;  // norms: all ones after the fold
    (t.name == "model.embed_tokens.weight" ? embeddings : side == Side::kReader ? readers : writers).push_back(t.name);
    t.transform = rotate(q, side, std::move(t.transform));
  }
  json rotation = {{"kind", residual_rotation_name(input.options.rotation)},
                   {"hidden", hidden},
                   {"sha256", sha256_hex(qv.data(), qv.size() * sizeof(double))}};
  if (input.options.rotation == ResidualRotation::kHadamard) {
    rotation["signs"] = hadamard_signs(input.options.seed, hidden);
  }
  plan.truth["rotation"] = std::move(rotation);
  plan.truth["rotated"] = {{"embeddings", embeddings}, {"readers", readers}, {"writers", writers}};
  return plan;
}

}  // namespace detail
}  // namespace alloy
