// Quadratic Bezier curves of low loss between two MLPs (Garipov et al. 2018; alloy/lmc/lmc.h).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "alloy/lmc/lmc.h"
#include "random.h"

namespace alloy::lmc {

namespace detail {
void shuffle(std::vector<size_t>& order, uint64_t seed, uint64_t epoch);
}

Mlp bezier_point(const Mlp& a, const Mlp& control, const Mlp& b, double t) {
  if (a.sizes != b.sizes || a.sizes != control.sizes)
    throw Error(ErrorCode::kShapeMismatch, "the curve's models have different layer sizes");
  Mlp out = a;
  const float wa = float((1 - t) * (1 - t)), wc = float(2 * t * (1 - t)), wb = float(t * t);
  const float *pa = a.params.data(), *pc = control.params.data(), *pb = b.params.data();
  float* po = out.params.data();
  parallel_for(out.params.size(), kDefaultGrain, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) po[i] = wa * pa[i] + wc * pc[i] + wb * pb[i];
  });
  return out;
}

CurveResult train_curve(const Mlp& a, const Mlp& b, const Dataset& data,
                        const CurveOptions& options, const Progress& progress) {
  if (a.sizes != b.sizes)
    throw Error(ErrorCode::kShapeMismatch, "the two models have different layer sizes");
  if (options.batch == 0 || options.points < 2 || !(options.lr > 0) || options.momentum < 0 ||
      options.momentum >= 1)
    throw Error(ErrorCode::kInvalidArgument, "curve: bad --batch, --points, --lr or --momentum");
  CurveResult result;
  result.control = merge_models(a, b, "linear", 0.5);  // start at the midpoint of the line
  const size_t n = a.params.size(), f = data.train.features();
  std::vector<float> velocity(n, 0.0f), grad(n), x(options.batch * f);
  std::vector<uint8_t> labels(options.batch);
  std::vector<size_t> samples(data.train.count);
  for (size_t i = 0; i < samples.size(); ++i) samples[i] = i;
  const size_t batches = (samples.size() + options.batch - 1) / options.batch;
  const size_t evals = 2 * options.points;
  const size_t total = batches * options.epochs + evals;
  const float lr = float(options.lr), momentum = float(options.momentum);
  const uint64_t t_stream = detail::mix_bits(options.seed ^ 0xC0FFEEull);
  size_t step = 0;
  for (size_t epoch = 0; epoch < options.epochs; ++epoch) {
    std::vector<size_t> order = samples;
    detail::shuffle(order, options.seed, epoch);
    for (size_t bi = 0; bi < batches; ++bi, ++step) {
      const double t = detail::uniform01(t_stream, step);
      const Mlp point = bezier_point(a, result.control, b, t);
      const size_t begin = bi * options.batch,
                   count = std::min(options.batch, order.size() - begin);
      scale_pixels(data.train, order.data() + begin, count, x.data());
      for (size_t i = 0; i < count; ++i) labels[i] = data.train.labels[order[begin + i]];
      const double loss = loss_and_gradient<float>(point.sizes, point.params.data(), x.data(),
                                                   labels.data(), count, grad.data());
      if (!std::isfinite(loss))
        throw Error(ErrorCode::kNonFinite, "curve training diverged; try a smaller --lr");
      const float dc = float(2 * t * (1 - t));  // d theta(t) / d C
      float* p = result.control.params.data();
      float* v = velocity.data();
      const float* g = grad.data();
      parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) {
          v[i] = momentum * v[i] + dc * g[i];
          p[i] = p[i] - lr * v[i];
        }
      });
      if (progress) progress(step + 1, total, "curve epoch " + std::to_string(epoch + 1));
    }
  }
  size_t done = batches * options.epochs;
  for (size_t i = 0; i < options.points; ++i) {
    PathPoint p;
    p.t = double(i) / double(options.points - 1);
    const Mlp m = bezier_point(a, result.control, b, p.t);
    p.test = evaluate(m, data.test);
    p.train = evaluate(m, data.train, options.train_limit);
    result.curve.push_back(p);
    if (progress) progress(++done, total, "evaluating curve");
  }
  PathOptions line;
  line.points = options.points;
  line.train_limit = options.train_limit;
  result.line = evaluate_path(a, b, data, line, [&](size_t, size_t, const std::string&) {
    if (progress) progress(++done, total, "evaluating line");
  });
  for (const auto& p : result.curve)
    result.curve_max_test_loss = std::max(result.curve_max_test_loss, p.test.loss);
  for (const auto& p : result.line.points)
    result.line_max_test_loss = std::max(result.line_max_test_loss, p.test.loss);
  result.endpoint_max_test_loss =
      std::max(result.curve.front().test.loss, result.curve.back().test.loss);
  return result;
}

nlohmann::json curve_json(const CurveResult& curve) {
  nlohmann::json points = nlohmann::json::array();
  for (size_t i = 0; i < curve.curve.size(); ++i) {
    const auto& c = curve.curve[i];
    const auto& l = curve.line.points[i];
    points.push_back({{"t", c.t},
                      {"curve_test_loss", c.test.loss},
                      {"curve_test_accuracy", c.test.accuracy},
                      {"curve_train_loss", c.train.loss},
                      {"curve_train_accuracy", c.train.accuracy},
                      {"line_test_loss", l.test.loss},
                      {"line_test_accuracy", l.test.accuracy},
                      {"line_train_loss", l.train.loss},
                      {"line_train_accuracy", l.train.accuracy}});
  }
  std::vector<double> t, loss;
  for (const auto& c : curve.curve) {
    t.push_back(c.t);
    loss.push_back(c.test.loss);
  }
  return {{"points", points},
          {"curve_max_test_loss", curve.curve_max_test_loss},
          {"line_max_test_loss", curve.line_max_test_loss},
          {"endpoint_max_test_loss", curve.endpoint_max_test_loss},
          {"curve_loss_barrier", barrier(t, loss)},
          {"line_loss_barrier", curve.line.loss_barrier}};
}

std::string curve_csv(const CurveResult& curve) {
  std::string out =
      "t,curve_test_loss,curve_test_accuracy,curve_train_loss,curve_train_accuracy,line_test_loss,"
      "line_test_accuracy,line_train_loss,line_train_accuracy\n";
  char line[512];
  for (size_t i = 0; i < curve.curve.size(); ++i) {
    const auto& c = curve.curve[i];
    const auto& l = curve.line.points[i];
    std::snprintf(line, sizeof line, "%.6g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g\n", c.t,
                  c.test.loss, c.test.accuracy, c.train.loss, c.train.accuracy, l.test.loss,
                  l.test.accuracy, l.train.loss, l.train.accuracy);
    out += line;
  }
  return out;
}

}  // namespace alloy::lmc
