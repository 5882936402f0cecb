// REPAIR (Jordan et al. ICLR 2023) of an interpolated MLP (alloy/lmc/lmc.h).
#include <cmath>

#include "alloy/lmc/lmc.h"

namespace alloy::lmc {

namespace {
struct Stats {
  std::vector<double> mean, std_dev;
};
// Per-unit mean and standard deviation of hidden layer `layer`'s pre-activations (sums in sample
// order: deterministic).
Stats unit_stats(const Mlp& m, const Split& train, size_t samples, size_t layer) {
  const std::vector<float> z = hidden_activations(m, train, samples, layer, true);
  const size_t n = m.sizes[layer], count = z.size() / n;
  Stats s;
  s.mean.assign(n, 0.0);
  s.std_dev.assign(n, 0.0);
  for (size_t r = 0; r < count; ++r)
    for (size_t i = 0; i < n; ++i) s.mean[i] += z[r * n + i];
  for (double& v : s.mean) v /= double(count);
  for (size_t r = 0; r < count; ++r)
    for (size_t i = 0; i < n; ++i) {
      const double d = z[r * n + i] - s.mean[i];
      s.std_dev[i] += d * d;
    }
  for (double& v : s.std_dev) v = std::sqrt(v / double(count));
  return s;
}
}  // namespace

Mlp repair_interpolation(const Mlp& a, const Mlp& b, double t, const Split& train, size_t samples,
                         const std::string& method) {
  Mlp m = merge_models(a, b, method, t);
  for (size_t layer = 1; layer < m.layers(); ++layer) {
    const Stats sa = unit_stats(a, train, samples, layer),
                sb = unit_stats(b, train, samples, layer);
    const Stats sm = unit_stats(m, train, samples, layer);  // earlier layers already repaired
    const size_t n = m.sizes[layer], n_in = m.sizes[layer - 1];
    float* w = m.weight(layer - 1);
    float* bias = m.bias(layer - 1);
    for (size_t i = 0; i < n; ++i) {
      const double target_mean = (1 - t) * sa.mean[i] + t * sb.mean[i];
      const double target_std = (1 - t) * sa.std_dev[i] + t * sb.std_dev[i];
      const double scale = sm.std_dev[i] > 1e-8 ? target_std / sm.std_dev[i] : 1.0;
      for (size_t k = 0; k < n_in; ++k) w[i * n_in + k] = float(w[i * n_in + k] * scale);
      bias[i] = float((bias[i] - sm.mean[i]) * scale + target_mean);
    }
  }
  return m;
}

}  // namespace alloy::lmc
