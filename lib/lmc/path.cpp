// Paths between two MLPs through alloy-merge's merge methods, and their barriers (alloy/lmc/lmc.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "alloy/core/error.h"
#include "alloy/lmc/lmc.h"
#include "alloy/merge/merge_method.h"

namespace alloy::lmc {

namespace {
void check_same_shape(const Mlp& a, const Mlp& b) {
  if (a.sizes != b.sizes || a.params.size() != b.params.size())
    throw Error(ErrorCode::kShapeMismatch, "the two models have different layer sizes");
}
}  // namespace

Mlp merge_models(const Mlp& a, const Mlp& b, const std::string& method, double t) {
  check_same_shape(a, b);
  const MergeMethod* merge = find_merge_method(method);
  if (!merge || (method != "linear" && method != "slerp"))
    throw Error(ErrorCode::kInvalidArgument, "path method '" + method + "': use linear or slerp");
  Mlp out = a;
  for (size_t l = 0; l < a.layers(); ++l) {
    for (int is_bias = 0; is_bias < 2; ++is_bias) {
      MergeContext ctx;
      ctx.tensor_name = is_bias ? bias_name(l) : weight_name(l);
      ctx.compute_dtype = DType::F32;
      ctx.shape = is_bias ? std::vector<uint64_t>{a.sizes[l + 1]}
                          : std::vector<uint64_t>{a.sizes[l + 1], a.sizes[l]};
      const size_t offset = is_bias ? a.bias_offset(l) : a.weight_offset(l);
      MergeSource sa, sb;
      sa.values = a.params.data() + offset;
      sb.values = b.params.data() + offset;
      sa.model = "A";
      sb.model = "B";
      if (method == "linear") {
        sa.params["weight"] = 1.0 - t;
        sb.params["weight"] = t;
        ctx.params["normalize"] = 1.0;
      } else {
        sa.is_base = true;
        ctx.base_index = 0;
        ctx.params["t"] = t;
      }
      ctx.sources = {sa, sb};
      merge->merge(ctx, out.params.data() + offset);
    }
  }
  return out;
}

double barrier(const std::vector<double>& t, const std::vector<double>& values, bool drop) {
  if (values.empty() || t.size() != values.size()) return 0;
  double worst = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < values.size(); ++i) {
    const double line = (1 - t[i]) * values.front() + t[i] * values.back();
    worst = std::max(worst, drop ? line - values[i] : values[i] - line);
  }
  return worst;
}

PathResult evaluate_path(const Mlp& a, const Mlp& b, const Dataset& data,
                         const PathOptions& options, const Progress& progress) {
  if (options.points < 2 || options.points > 1001)
    throw Error(ErrorCode::kInvalidArgument, "--points must be in [2, 1001]");
  PathResult result;
  result.method = options.method;
  result.repaired = options.repair;
  for (size_t i = 0; i < options.points; ++i) {
    PathPoint p;
    p.t = double(i) / double(options.points - 1);
    const bool interior = i > 0 && i + 1 < options.points;
    const Mlp m =
        options.repair && interior
            ? repair_interpolation(a, b, p.t, data.train, options.repair_samples, options.method)
            : merge_models(a, b, options.method, p.t);
    p.test = evaluate(m, data.test);
    p.train = evaluate(m, data.train, options.train_limit);
    result.points.push_back(p);
    if (progress) progress(i + 1, options.points, "path");
  }
  std::vector<double> t, test_loss, test_acc, train_loss, train_acc;
  for (const auto& p : result.points) {
    t.push_back(p.t);
    test_loss.push_back(p.test.loss);
    test_acc.push_back(p.test.accuracy);
    train_loss.push_back(p.train.loss);
    train_acc.push_back(p.train.accuracy);
  }
  result.loss_barrier = barrier(t, test_loss);
  result.accuracy_barrier = barrier(t, test_acc, true);
  result.train_loss_barrier = barrier(t, train_loss);
  result.train_accuracy_barrier = barrier(t, train_acc, true);
  return result;
}

nlohmann::json path_json(const PathResult& path) {
  nlohmann::json points = nlohmann::json::array();
  for (const auto& p : path.points)
    points.push_back({{"t", p.t},
                      {"test_loss", p.test.loss},
                      {"test_accuracy", p.test.accuracy},
                      {"train_loss", p.train.loss},
                      {"train_accuracy", p.train.accuracy}});
  return {{"method", path.method},
          {"repaired", path.repaired},
          {"points", points},
          {"loss_barrier", path.loss_barrier},
          {"accuracy_barrier", path.accuracy_barrier},
          {"train_loss_barrier", path.train_loss_barrier},
          {"train_accuracy_barrier", path.train_accuracy_barrier}};
}

std::string path_csv(const PathResult& path) {
  std::string out = "t,test_loss,test_accuracy,train_loss,train_accuracy\n";
  char line[256];
  for (const auto& p : path.points) {
    std::snprintf(line, sizeof line, "%.6g,%.9g,%.9g,%.9g,%.9g\n", p.t, p.test.loss,
                  p.test.accuracy, p.train.loss, p.train.accuracy);
    out += line;
  }
  return out;
}

}  // namespace alloy::lmc
