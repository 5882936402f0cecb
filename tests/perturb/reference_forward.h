// Pieces of a reference forward pass in Eigen, float64, shared by the perturb tests: a
// function-preserving transform must leave the logits of a model computed from its stored tensors
// unchanged. Each family's block is written in the test from the Hugging Face modeling code; these
// are the parts they share (RMSNorm, RoPE, causal grouped-query and per-head attention, top-k
// routing).
#pragma once

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/model.h"
#include "alloy/synth/synth.h"

namespace alloy::test::ref {

using Mat = Eigen::MatrixXd;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// A tensor by name, as a matrix (see matrix()).
using Weights = std::function<Mat(const std::string&)>;

inline std::vector<float> values(const Model& m, const std::string& name) {
  const auto* t = m.find(name);
  if (!t) throw std::runtime_error("no tensor " + name);
  std::vector<float> v(t->info->numel());
  load_as_f32(t->info->dtype, t->data(), v.size(), v.data());
  return v;
}

// A tensor as a matrix: [rows, cols] for 2-D, one row for 1-D, [shape[0] * shape[1], shape[2]] for
// 3-D (stacked experts: expert e is rows [e * shape[1], (e + 1) * shape[1])).
inline Mat matrix(const Model& m, const std::string& name) {
  const auto* t = m.find(name);
  if (!t) throw std::runtime_error("no tensor " + name);
  const auto v = values(m, name);
  const auto& s = t->info->shape;
  const Eigen::Index cols = s.empty() ? 1 : Eigen::Index(s.back());
  const Eigen::Index rows = Eigen::Index(v.size()) / cols;
  return Eigen::Map<const RowMajorF>(v.data(), s.size() >= 2 ? rows : 1, s.size() >= 2 ? cols : Eigen::Index(v.size()))
      .cast<double>();
}

inline Weights weights_of(const Model& m) {
  return [&m](const std::string& name) { return matrix(m, name); };
}

// x / rms(x) times the per-column gain (one row).
inline Mat rms_norm(const Mat& x, const Mat& gain, double eps = 1e-6) {
  Mat out(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const double scale = 1.0 / std::sqrt(x.row(t).squaredNorm() / double(x.cols()) + eps);
    out.row(t) = (x.row(t) * scale).cwiseProduct(gain.row(0));
  }
  return out;
}

inline Mat linear(const Mat& x, const Mat& w) {
  return x * w.transpose();
}

inline Mat silu(const Mat& x) {
  return x.unaryExpr([](double v) { return v / (1 + std::exp(-v)); });
}

inline Mat sigmoid(const Mat& x) {
  return x.unaryExpr([](double v) { return 1 / (1 + std::exp(-v)); });
}

// Rotary embedding on the first `rotary` dims of each head_dim block (pairs i, i + rotary/2),
// position = token index.
inline void rope(Mat* x, int heads, int head_dim, int rotary) {
  for (Eigen::Index t = 0; t < x->rows(); ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < rotary / 2; ++i) {
        const double angle = double(t) * std::pow(10000.0, -2.0 * i / rotary);
        double& a = (*x)(t, h * head_dim + i);
        double& b = (*x)(t, h * head_dim + i + rotary / 2);
        const double ra = a * std::cos(angle) - b * std::sin(angle),
                     rb = a * std::sin(angle) + b * std::cos(angle);
        a = ra, b = rb;
      }
    }
  }
}

// Each row t of `scores` (query t over keys 0..tokens-1) to a softmax over keys 0..t; later keys 0.
inline void causal_softmax(Mat* scores) {
  for (Eigen::Index t = 0; t < scores->rows(); ++t) {
    const double top = scores->row(t).head(t + 1).maxCoeff();
    double sum = 0;
    for (Eigen::Index s = 0; s < scores->cols(); ++s) {
      (*scores)(t, s) = s <= t ? std::exp((*scores)(t, s) - top) : 0.0;
      sum += (*scores)(t, s);
    }
    scores->row(t) /= sum;
  }
}

// Causal softmax attention of q [tokens, heads * d] over k, v [tokens, kv_heads * d], query heads
// grouped onto the kv heads in order. Returns the context [tokens, heads * d].
inline Mat attend(const Mat& q, const Mat& k, const Mat& v, int heads, int kv_heads, int d) {
  const int group = heads / kv_heads;
  const Eigen::Index tokens = q.rows();
  Mat context(tokens, heads * d);
  for (int head = 0; head < heads; ++head) {
    const int kv = head / group;
    const Mat qh = q.middleCols(head * d, d), kh = k.middleCols(kv * d, d), vh = v.middleCols(kv * d, d);
    Mat scores = qh * kh.transpose() / std::sqrt(double(d));
    causal_softmax(&scores);
    context.middleCols(head * d, d) = scores * vh;
  }
  return context;
}

// Causal softmax attention with one key / value head per query head, keys of width qk_dim and
// values of width v_dim (multi-head latent attention after its up-projections). Returns the
// context [tokens, heads * v_dim].
inline Mat attend_heads(const Mat& q, const Mat& k, const Mat& v, int heads, int qk_dim, int v_dim) {
  const Eigen::Index tokens = q.rows();
  Mat context(tokens, heads * v_dim);
  for (int head = 0; head < heads; ++head) {
    Mat scores = q.middleCols(head * qk_dim, qk_dim) * k.middleCols(head * qk_dim, qk_dim).transpose() /
                 std::sqrt(double(qk_dim));
    causal_softmax(&scores);
    context.middleCols(head * v_dim, v_dim) = scores * v.middleCols(head * v_dim, v_dim);
  }
  return context;
}

// Softmax over a router row, then the k most probable experts (ties to the lower index) with their
// probabilities, divided by their sum when `renormalise`.
inline std::vector<std::pair<int, double>> route(const Eigen::RowVectorXd& logits, int k, bool renormalise) {
  Eigen::RowVectorXd prob = (logits.array() - logits.maxCoeff()).exp();
  prob /= prob.sum();
  std::vector<int> order(size_t(prob.size()));
  for (size_t e = 0; e < order.size(); ++e) order[e] = int(e);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::vector<std::pair<int, double>> chosen;
  double sum = 0;
  for (int i = 0; i < k; ++i) chosen.push_back({order[size_t(i)], prob[order[size_t(i)]]}), sum += prob[order[size_t(i)]];
  if (renormalise) {
    for (auto& c : chosen) c.second /= sum;
  }
  return chosen;
}

inline Mat random_tokens(int tokens, int hidden, uint64_t seed) {
  std::vector<float> z(size_t(tokens) * hidden);
  synth_normal(seed, synth_stream_id("test.tokens"), 0, z.size(), z.data());
  return Eigen::Map<const RowMajorF>(z.data(), tokens, hidden).cast<double>();
}

inline double relative_difference(const Mat& a, const Mat& b) {
  return (a - b).norm() / b.norm();
}

}  // namespace alloy::test::ref
