// The MLP: forward pass against hand-computed values, gradients against finite differences in
// double precision, save/load, training determinism across thread counts, and real accuracy.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "alloy/core/parallel.h"
#include "alloy/lmc/mlp.h"
#include "lmc/lmc_test_utils.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

// 3 -> 2 -> 2 with round numbers: every intermediate value is exact in float.
lmc::Mlp hand_model() {
  lmc::Mlp m;
  m.sizes = {3, 2, 2};
  m.params = {1,     -1,   0.5f, 0, 2, -1,  // W0 [2, 3]
              0.5f,  -1,                    // b0
              2,     1,    -1,   3,         // W1 [2, 2]
              0.25f, -0.5f};                // b1
  return m;
}

TEST(LmcForward, MatchesHandComputedValues) {
  const lmc::Mlp m = hand_model();
  const float x[] = {1, 2, 3, 0, 1, 0};
  float logits[4];
  lmc::forward<float>(m.sizes, m.params.data(), x, 2, logits);
  // sample 0: z0 = [1 - 2 + 1.5 + 0.5, 4 - 3 - 1] = [1, 0]; logits = [2 + 0.25, -1 - 0.5]
  // sample 1: z0 = [-1 + 0.5, 2 - 1] = [-0.5, 1] -> relu [0, 1]; logits = [1 + 0.25, 3 - 0.5]
  EXPECT_EQ(logits[0], 2.25f);
  EXPECT_EQ(logits[1], -1.5f);
  EXPECT_EQ(logits[2], 1.25f);
  EXPECT_EQ(logits[3], 2.5f);
  std::vector<float> grad(m.params.size());
  const uint8_t labels[] = {0, 1};
  const double loss =
      lmc::loss_and_gradient<float>(m.sizes, m.params.data(), x, labels, 2, grad.data());
  const double expected = (std::log1p(std::exp(-3.75)) + std::log1p(std::exp(-1.25))) / 2;
  EXPECT_NEAR(loss, expected, 1e-6);
  // d loss / d b1 = mean(softmax - onehot): sample 0 p1 = sigmoid(-3.75), sample 1 p0 =
  // sigmoid(-1.25)
  const double s0 = 1 / (1 + std::exp(3.75)), s1 = 1 / (1 + std::exp(1.25));
  EXPECT_NEAR(grad[12], (-s0 + s1) / 2, 1e-6);
  EXPECT_NEAR(grad[13], (s0 - s1) / 2, 1e-6);
}

TEST(LmcGradient, MatchesFiniteDifferencesInDouble) {
  const std::vector<size_t> sizes = {6, 5, 4, 3};
  const lmc::Mlp m = lmc::init_mlp(sizes, 7);
  std::vector<double> p(m.params.begin(), m.params.end());
  for (size_t i = 0; i < p.size(); ++i) p[i] += 0.01 * std::sin(double(i));  // non-zero biases
  std::vector<double> x(4 * 6);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.7 * double(i)) + 0.3;
  const uint8_t labels[] = {0, 2, 1, 2};
  std::vector<double> grad(p.size()), scratch(p.size());
  lmc::loss_and_gradient<double>(sizes, p.data(), x.data(), labels, 4, grad.data());
  const double h = 1e-6;
  double worst = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    std::vector<double> q = p;
    q[i] = p[i] + h;
    const double up =
        lmc::loss_and_gradient<double>(sizes, q.data(), x.data(), labels, 4, scratch.data());
    q[i] = p[i] - h;
    const double down =
        lmc::loss_and_gradient<double>(sizes, q.data(), x.data(), labels, 4, scratch.data());
    const double numeric = (up - down) / (2 * h);
    worst = std::max(worst, std::fabs(numeric - grad[i]));
  }
  EXPECT_LT(worst, 1e-8);
  // The float path (the one training uses) agrees with the double one.
  std::vector<float> pf(p.begin(), p.end()), xf(x.begin(), x.end()), gf(p.size());
  lmc::loss_and_gradient<float>(sizes, pf.data(), xf.data(), labels, 4, gf.data());
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(gf[i], grad[i], 1e-5) << i;
}

TEST(LmcModel, SavesAndLoadsTheHuggingFaceLayout) {
  TempDir dir;
  const lmc::Mlp m = lmc::init_mlp({12, 8, 10}, 3);
  lmc::save_mlp(m, dir / "model", false);
  EXPECT_TRUE(std::filesystem::exists(dir / "model" / "model.safetensors"));
  const std::string config = read_bytes(dir / "model" / "config.json");
  EXPECT_NE(config.find("\"model_type\": \"mlp\""), std::string::npos);
  EXPECT_NE(config.find("\"MLP\""), std::string::npos);
  const lmc::Mlp back = lmc::load_mlp(dir / "model");
  EXPECT_EQ(back.sizes, m.sizes);
  EXPECT_EQ(0, std::memcmp(back.params.data(), m.params.data(), 4 * m.params.size()));
  // A lone safetensors file: the sizes come from the shapes.
  const lmc::Mlp lone = lmc::load_mlp(dir / "model" / "model.safetensors");
  EXPECT_EQ(lone.sizes, m.sizes);
  EXPECT_THROW(lmc::save_mlp(m, dir / "model", false), Error);  // no silent overwrite
  // A config that is not an MLP is refused.
  write_bytes(dir / "model" / "config.json",
              R"({"model_type": "llama", "layer_sizes": [12, 8, 10]})");
  EXPECT_THROW(lmc::load_mlp(dir / "model"), Error);
  write_bytes(dir / "model" / "config.json",
              R"({"model_type": "mlp", "layer_sizes": [12, 9, 10]})");
  EXPECT_THROW(lmc::load_mlp(dir / "model"), Error);
}

TEST(LmcTrain, IsBitIdenticalForAnyThreadCount) {
  const lmc::Dataset* data = fashion_mnist();
  ASSERT_NE(data, nullptr);
  lmc::TrainOptions options;
  options.hidden = {64, 32};
  options.epochs = 1;
  options.seed = 5;
  options.data_seed = 6;
  options.limit = 3000;
  options.batch = 100;
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    set_thread_count(threads);
    results.push_back(lmc::train_mlp(*data, options, nullptr, nullptr).params);
  }
  set_thread_count(0);
  for (size_t i = 1; i < results.size(); ++i)
    EXPECT_EQ(0, std::memcmp(results[0].data(), results[i].data(), 4 * results[0].size()));
  // and the evaluation too
  lmc::Mlp m;
  m.sizes = {784, 64, 32, 10};
  m.params = results[0];
  set_thread_count(1);
  const lmc::Evaluation one = lmc::evaluate(m, data->test);
  set_thread_count(2);
  const lmc::Evaluation two = lmc::evaluate(m, data->test);
  set_thread_count(0);
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_EQ(one.accuracy, two.accuracy);
}

TEST(LmcTrain, SmallMlpReachesEightyPercentOnFashionMnist) {
  const lmc::Dataset* data = fashion_mnist();
  ASSERT_NE(data, nullptr);
  lmc::TrainOptions options;
  options.hidden = {128};
  options.epochs = 3;
  options.seed = 1;
  options.data_seed = 1;
  options.limit = 15000;  // a quarter of the training set keeps the test fast (83.25% here)
  std::vector<lmc::EpochLog> log;
  const lmc::Mlp m = lmc::train_mlp(*data, options, nullptr, &log);
  ASSERT_EQ(log.size(), 3u);
  const lmc::Evaluation test = lmc::evaluate(m, data->test);
  EXPECT_GE(test.accuracy, 0.80);
  EXPECT_EQ(test.accuracy, log.back().test_accuracy);
  // Fine-tuning on classes 0-4 only moves 0-4's accuracy up and 5-9's down.
  options.first_class = 0;
  options.last_class = 4;
  options.epochs = 1;
  const lmc::Mlp ft = lmc::train_mlp(*data, options, &m, nullptr);
  const lmc::Evaluation after = lmc::evaluate(ft, data->test);
  EXPECT_GT(after.accuracy_on(0, 4), test.accuracy_on(0, 4));
  EXPECT_LT(after.accuracy_on(5, 9), test.accuracy_on(5, 9));
}

}  // namespace
}  // namespace alloy::test
