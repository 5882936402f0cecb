// Permutation alignment of hidden units: weight and activation matching (alloy/lmc/lmc.h).
#include <algorithm>
#include <cmath>

#include "alloy/core/error.h"
#include "alloy/core/linear_assignment.h"
#include "alloy/lmc/lmc.h"
#include "gemm.h"

namespace alloy::lmc {

Mlp permute_hidden(const Mlp& m, const std::vector<std::vector<uint32_t>>& perms) {
  const size_t layers = m.layers();
  if (perms.size() + 1 != layers)
    throw Error(ErrorCode::kInvalidArgument,
                "expected " + std::to_string(layers - 1) + " permutations, one per hidden layer");
  for (size_t h = 0; h < perms.size(); ++h) {
    std::vector<bool> seen(m.sizes[h + 1], false);
    if (perms[h].size() != m.sizes[h + 1])
      throw Error(ErrorCode::kInvalidArgument,
                  "permutation " + std::to_string(h) + " has the wrong length");
    for (uint32_t v : perms[h]) {
      if (v >= seen.size() || seen[v])
        throw Error(ErrorCode::kInvalidArgument,
                    "permutation " + std::to_string(h) + " is not a permutation");
      seen[v] = true;
    }
  }
  Mlp out = m;
  for (size_t l = 0; l < layers; ++l) {
    const size_t n_in = m.sizes[l], n_out = m.sizes[l + 1];
    const bool perm_out = l + 1 < layers, perm_in = l > 0;
    for (size_t i = 0; i < n_out; ++i) {
      const size_t src = perm_out ? perms[l][i] : i;
      for (size_t k = 0; k < n_in; ++k)
        out.weight(l)[i * n_in + k] = m.weight(l)[src * n_in + (perm_in ? perms[l - 1][k] : k)];
      out.bias(l)[i] = m.bias(l)[src];
    }
  }
  return out;
}

namespace {

std::vector<uint32_t> maximise(const std::vector<float>& similarity, size_t n) {
  std::vector<double> cost(n * n);
  for (size_t i = 0; i < n * n; ++i) cost[i] = -double(similarity[i]);
  return linear_assignment(cost, n);
}

// Weight matching: similarity of A's unit i and B's unit j in hidden layer h, given the
// permutations of the neighbouring layers.
std::vector<float> weight_similarity(const Mlp& a, const Mlp& b,
                                     const std::vector<std::vector<uint32_t>>& perms, size_t h) {
  const size_t n = a.sizes[h + 1], n_in = a.sizes[h], n_next = a.sizes[h + 2];
  const bool in_perm = h > 0, out_perm = h + 2 < a.sizes.size() - 1;
  std::vector<float> b_in(n * n_in), b_in_t(n_in * n), s(n * n);
  for (size_t j = 0; j < n; ++j)
    for (size_t k = 0; k < n_in; ++k)
      b_in[j * n_in + k] = b.weight(h)[j * n_in + (in_perm ? perms[h - 1][k] : k)];
  detail::transpose(n, n_in, b_in.data(), b_in_t.data());
  detail::gemm(n, n, n_in, a.weight(h), n_in, b_in_t.data(), n, s.data(), n, false, true);
  std::vector<float> a_next_t(n * n_next), b_out(n_next * n);
  detail::transpose(n_next, n, a.weight(h + 1), a_next_t.data());
  for (size_t m = 0; m < n_next; ++m)
    for (size_t j = 0; j < n; ++j)
      b_out[m * n + j] = b.weight(h + 1)[(out_perm ? perms[h + 1][m] : m) * n + j];
  detail::gemm(n, n, n_next, a_next_t.data(), n_next, b_out.data(), n, s.data(), n, true, true);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) s[i * n + j] += a.bias(h)[i] * b.bias(h)[j];
  return s;
}

// Correlation of post-ReLU activations of A's unit i and B's unit j.
std::vector<float> activation_similarity(const Mlp& a, const Mlp& b, const Split& train,
                                         size_t samples, size_t h) {
  const std::vector<float> ha = hidden_activations(a, train, samples, h + 1, false);
  const std::vector<float> hb = hidden_activations(b, train, samples, h + 1, false);
  const size_t n = a.sizes[h + 1], count = ha.size() / n;
  auto centre = [&](const std::vector<float>& x, std::vector<float>& xt) {
    std::vector<double> mean(n, 0.0), var(n, 0.0);
    for (size_t s = 0; s < count; ++s)
      for (size_t i = 0; i < n; ++i) mean[i] += x[s * n + i];
    for (double& m : mean) m /= double(count);
    for (size_t s = 0; s < count; ++s)
      for (size_t i = 0; i < n; ++i) {
        const double d = x[s * n + i] - mean[i];
        var[i] += d * d;
      }
    xt.resize(n * count);  // [unit, sample], centred and scaled to unit norm
    for (size_t i = 0; i < n; ++i) {
      const double scale = 1.0 / (std::sqrt(var[i]) + 1e-6);
      for (size_t s = 0; s < count; ++s)
        xt[i * count + s] = float((x[s * n + i] - mean[i]) * scale);
    }
  };
  std::vector<float> at, bt, b_samples(count * n), s(n * n);
  centre(ha, at);
  centre(hb, bt);
  detail::transpose(n, count, bt.data(), b_samples.data());
  detail::gemm(n, n, count, at.data(), count, b_samples.data(), n, s.data(), n, false, true);
  return s;
}

}  // namespace

AlignResult align_models(const Mlp& a, const Mlp& b, AlignMethod method, const Split* train,
                         size_t samples, const Progress& progress) {
  if (a.sizes != b.sizes)
    throw Error(ErrorCode::kShapeMismatch, "the two models have different layer sizes");
  const size_t hidden = a.layers() - 1;
  AlignResult result;
  result.perms.resize(hidden);
  for (size_t h = 0; h < hidden; ++h) {
    result.perms[h].resize(a.sizes[h + 1]);
    for (size_t i = 0; i < a.sizes[h + 1]; ++i) result.perms[h][i] = uint32_t(i);
  }
  if (method == AlignMethod::kActivation) {
    if (!train)
      throw Error(ErrorCode::kInvalidArgument, "activation matching needs training images");
    for (size_t h = 0; h < hidden; ++h) {
      result.perms[h] = maximise(activation_similarity(a, b, *train, samples, h), a.sizes[h + 1]);
      if (progress) progress(h + 1, hidden, "activation matching");
    }
    result.passes = 1;
  } else {
    constexpr size_t kMaxPasses = 100;
    for (size_t pass = 0; pass < kMaxPasses; ++pass) {
      bool changed = false;
      for (size_t h = 0; h < hidden; ++h) {
        std::vector<uint32_t> p =
            maximise(weight_similarity(a, b, result.perms, h), a.sizes[h + 1]);
        if (p != result.perms[h]) {
          changed = true;
          result.perms[h] = std::move(p);
        }
      }
      result.passes = pass + 1;
      if (progress) progress(pass + 1, kMaxPasses, "weight matching");
      if (!changed) break;
    }
    if (progress) progress(kMaxPasses, kMaxPasses, "weight matching");
  }
  result.aligned = permute_hidden(b, result.perms);
  return result;
}

nlohmann::json perms_json(const AlignResult& result, const std::string& method) {
  return {{"method", method}, {"passes", result.passes}, {"permutations", result.perms}};
}

}  // namespace alloy::lmc
