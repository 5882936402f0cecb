// alloy/lmc/lmc.h: linear mode connectivity of two MLPs (docs/classroom.md).
//
//  - merge_models / evaluate_path: the models on the path between A and B are built by
//  alloy-merge's
//    own merge methods (the registry of alloy/merge/merge_method.h), tensor by tensor, so each
//    point is bit-identical to what alloy-merge writes for the same recipe; the loss barrier is
//    max_t [L(t) - ((1 - t) L(0) + t L(1))] (Frankle et al. 2020; Entezari et al. 2022).
//  - align_models: permute B's hidden units to line up with A (Git Re-Basin, Ainsworth et al. ICLR
//    2023): weight matching (coordinate descent over the hidden layers, each step a linear
//    assignment problem solved by alloy::linear_assignment) or activation matching (correlation of
//    post-ReLU activations on training images). The permuted model computes B's function.
//  - repair_interpolation: REPAIR (Jordan et al. ICLR 2023): each hidden unit's pre-activation of
//    the interpolated model is rescaled and shifted to the interpolated mean and standard deviation
//    of the endpoints' units, layer by layer.
//  - train_curve: a quadratic Bezier curve theta(t) = (1-t)^2 A + 2t(1-t) C + t^2 B whose control
//    point C is trained by SGD on the expected loss over t ~ U(0, 1) (Garipov et al. NeurIPS 2018).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "alloy/lmc/mlp.h"

namespace alloy::lmc {

// The model at t between a and b, built by merge method `method` of the registry: "linear"
// (weights 1 - t and t, normalize: true, as a two-model linear recipe) or "slerp" (base a,
// parameter t). Throws Error naming the method or the layer when the shapes differ.
Mlp merge_models(const Mlp& a, const Mlp& b, const std::string& method, double t);

// max_i [values[i] - ((1 - t_i) values.front() + t_i values.back())]; with `drop`, the opposite
// sign (how far accuracy falls below the straight line between the endpoints' accuracies).
double barrier(const std::vector<double>& t, const std::vector<double>& values, bool drop = false);

struct PathOptions {
  std::string method = "linear";
  size_t points = 21;
  size_t train_limit = 0;  // > 0: evaluate the train set on its first N images only
  bool repair = false;     // apply REPAIR at every interior point
  size_t repair_samples = 10000;
};
struct PathPoint {
  double t = 0;
  Evaluation test, train;
};
struct PathResult {
  std::string method;
  bool repaired = false;
  std::vector<PathPoint> points;
  double loss_barrier = 0, accuracy_barrier = 0;              // test set
  double train_loss_barrier = 0, train_accuracy_barrier = 0;  // train set
};
PathResult evaluate_path(const Mlp& a, const Mlp& b, const Dataset& data,
                         const PathOptions& options, const Progress& progress = {});
// {"method", "repaired", "points": [{t, test_loss, test_accuracy, train_loss, train_accuracy}],
//  "loss_barrier", "accuracy_barrier", "train_loss_barrier", "train_accuracy_barrier"}
nlohmann::json path_json(const PathResult& path);
// t,test_loss,test_accuracy,train_loss,train_accuracy
std::string path_csv(const PathResult& path);

enum class AlignMethod { kWeight, kActivation };
struct AlignResult {
  Mlp aligned;  // b with its hidden units permuted
  // perms[h][i]: the unit of b placed at position i of hidden layer h (0 = first hidden layer).
  std::vector<std::vector<uint32_t>> perms;
  size_t passes = 0;  // weight matching: passes over the layers until nothing changed
};
// `train` and `samples` are used by activation matching only.
AlignResult align_models(const Mlp& a, const Mlp& b, AlignMethod method, const Split* train,
                         size_t samples = 10000, const Progress& progress = {});
// m with hidden units permuted: W_h'[i, k] = W_h[p_h[i], p_{h-1}[k]], b_h'[i] = b_h[p_h[i]].
// Throws Error(kInvalidArgument) unless every perms[h] is a permutation of the layer's width.
Mlp permute_hidden(const Mlp& m, const std::vector<std::vector<uint32_t>>& perms);
nlohmann::json perms_json(const AlignResult& result, const std::string& method);

// REPAIR of the model at t between a and b (built by merge_models with `method`); the statistics
// come from the first `samples` images of `train`.
Mlp repair_interpolation(const Mlp& a, const Mlp& b, double t, const Split& train, size_t samples,
                         const std::string& method = "linear");

struct CurveOptions {
  size_t epochs = 4;
  double lr = 0.05, momentum = 0.9;
  size_t batch = 128;
  uint64_t seed = 0;
  size_t points = 21;
  size_t train_limit = 0;  // > 0: evaluate the train set on its first N images only
};
struct CurveResult {
  Mlp control;                   // the trained control point C
  std::vector<PathPoint> curve;  // evaluations along the Bezier curve
  PathResult line;               // the straight (linear merge) path, same points
  double curve_max_test_loss = 0, line_max_test_loss = 0, endpoint_max_test_loss = 0;
};
// theta(t) for the curve through a and b with control point c.
Mlp bezier_point(const Mlp& a, const Mlp& control, const Mlp& b, double t);
CurveResult train_curve(const Mlp& a, const Mlp& b, const Dataset& data,
                        const CurveOptions& options, const Progress& progress = {});
nlohmann::json curve_json(const CurveResult& curve);
std::string curve_csv(const CurveResult& curve);

}  // namespace alloy::lmc
