// SGD with momentum on an MLP (alloy/lmc/mlp.h, train_mlp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "alloy/lmc/mlp.h"
#include "random.h"

namespace alloy::lmc {

namespace detail {
// Fisher-Yates with counter-based draws: the order depends only on (seed, epoch).
void shuffle(std::vector<size_t>& order, uint64_t seed, uint64_t epoch) {
  const uint64_t stream = mix_bits(mix_bits(seed + 0x5851F42D4C957F2Dull) + epoch);
  for (size_t i = order.size(); i > 1; --i) {
    const size_t j = size_t(uniform01(stream, i) * double(i));
    std::swap(order[i - 1], order[std::min(j, i - 1)]);
  }
}
}  // namespace detail

Mlp train_mlp(const Dataset& data, const TrainOptions& options, const Mlp* start,
              std::vector<EpochLog>* log, const Progress& progress) {
  if (options.batch == 0 || options.batch > 65536)
    throw Error(ErrorCode::kInvalidArgument, "--batch must be in [1, 65536]");
  if (!(options.lr > 0) || !std::isfinite(options.lr) || !(options.momentum >= 0) ||
      options.momentum >= 1)
    throw Error(ErrorCode::kInvalidArgument, "--lr must be positive and --momentum in [0, 1)");
  if (options.first_class > options.last_class || options.last_class >= kIdxClasses)
    throw Error(ErrorCode::kInvalidArgument, "--classes must be a range within 0-9");
  Mlp mlp;
  if (start) {
    mlp = *start;
  } else {
    std::vector<size_t> sizes{data.train.features()};
    sizes.insert(sizes.end(), options.hidden.begin(), options.hidden.end());
    sizes.push_back(kIdxClasses);
    mlp = init_mlp(sizes, options.seed);
  }
  if (mlp.sizes.front() != data.train.features() || mlp.sizes.back() != kIdxClasses)
    throw Error(ErrorCode::kShapeMismatch,
                "the model's input or output size does not fit the data set");
  std::vector<size_t> samples;
  const size_t available =
      options.limit ? std::min(options.limit, data.train.count) : data.train.count;
  for (size_t i = 0; i < available; ++i) {
    const size_t label = data.train.labels[i];
    if (label >= options.first_class && label <= options.last_class) samples.push_back(i);
  }
  if (samples.empty())
    throw Error(ErrorCode::kInvalidArgument, "no training samples in the chosen classes");

  const size_t n = mlp.params.size(), f = data.train.features();
  std::vector<float> velocity(n, 0.0f), grad(n), x(options.batch * f);
  std::vector<uint8_t> labels(options.batch);
  const float lr = float(options.lr), momentum = float(options.momentum);
  const size_t batches = (samples.size() + options.batch - 1) / options.batch;
  const size_t total = batches * options.epochs;
  for (size_t epoch = 0; epoch < options.epochs; ++epoch) {
    std::vector<size_t> order = samples;
    detail::shuffle(order, options.data_seed, epoch);
    double loss_sum = 0;
    const auto started = std::chrono::steady_clock::now();
    for (size_t b = 0; b < batches; ++b) {
      const size_t begin = b * options.batch, count = std::min(options.batch, order.size() - begin);
      scale_pixels(data.train, order.data() + begin, count, x.data());
      for (size_t i = 0; i < count; ++i) labels[i] = data.train.labels[order[begin + i]];
      const double loss = loss_and_gradient<float>(mlp.sizes, mlp.params.data(), x.data(),
                                                   labels.data(), count, grad.data());
      if (!std::isfinite(loss))
        throw Error(ErrorCode::kNonFinite, "training diverged (loss " + std::to_string(loss) +
                                               ") in epoch " + std::to_string(epoch + 1) +
                                               "; try a smaller --lr");
      loss_sum += loss;
      float* p = mlp.params.data();
      float* v = velocity.data();
      const float* g = grad.data();
      parallel_for(n, kDefaultGrain, [&](size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) {
          v[i] = momentum * v[i] + g[i];
          p[i] = p[i] - lr * v[i];
        }
      });
      if (progress) progress(epoch * batches + b + 1, total, "epoch " + std::to_string(epoch + 1));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (log) {
      EpochLog entry;
      entry.samples = order.size();
      entry.seconds = seconds;
      entry.epoch = epoch + 1;
      entry.train_loss = loss_sum / double(batches);
      const Evaluation test = evaluate(mlp, data.test);
      entry.test_loss = test.loss;
      entry.test_accuracy = test.accuracy;
      log->push_back(entry);
    }
  }
  return mlp;
}

}  // namespace alloy::lmc
