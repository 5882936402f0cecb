// Helpers of the merge-method tests (tests/test_method*.cpp): building a MergeContext from plain
// vectors, the rounding of the compute dtype, ulp distances and seeded test data.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/merge/merge_method.h"

namespace alloy::test {

struct MethodSource {
  std::vector<float> values;
  std::map<std::string, double> params;
};

// One call of a merge method on hand-made inputs.
struct MethodCall {
  explicit MethodCall(std::string method_name, DType compute_dtype = DType::F32)
      : method(std::move(method_name)), dtype(compute_dtype) {}

  std::string method;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;  // empty: 1-D of the first source's length
  std::vector<MethodSource> sources;
  int base = -1;
  std::map<std::string, double> params;
  uint64_t seed = 1;
  std::string tensor = "model.layers.0.mlp.up_proj.weight";

  std::vector<float> run() const {
    const MergeMethod* m = find_merge_method(method);
    if (m == nullptr) throw std::runtime_error("no method " + method);
    MergeContext ctx;
    ctx.tensor_name = tensor;
    ctx.compute_dtype = dtype;
    ctx.shape = shape.empty() ? std::vector<uint64_t>{sources.at(0).values.size()} : shape;
    ctx.base_index = base;
    ctx.params = params;
    ctx.seed = seed;
    for (size_t k = 0; k < sources.size(); ++k) {
      ctx.sources.push_back({sources[k].values.data(), sources[k].params,
                             static_cast<int>(k) == base, "model" + std::to_string(k)});
    }
    std::vector<float> out(ctx.numel(), -12345.0f);
    m->merge(ctx, out.data());
    return out;
  }
};

// rnd() and wD() of docs/methods.md, spelled out with the dtype library.
inline float rnd(DType d, float x) {
  return round_to(d, x);
}
inline float rnd(DType d, double x) {
  return round_to(d, static_cast<float>(x));
}
inline float wd(DType d, double v) {
  return round_to(d, static_cast<float>(v));
}

// Distance in units in the last place of dtype d between two values representable in d
// (+0 and -0 are equal); a NaN is infinitely far.
inline int64_t ulp_distance(DType d, float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return INT64_MAX;
  auto ordered = [&](float x) -> int64_t {
    int64_t bits, sign_bit;
    if (d == DType::BF16) {
      bits = f32_to_bf16(x);
      sign_bit = 0x8000;
    } else if (d == DType::F16) {
      bits = f32_to_f16(x);
      sign_bit = 0x8000;
    } else {
      uint32_t u;
      std::memcpy(&u, &x, 4);
      bits = u;
      sign_bit = 0x80000000;
    }
    return (bits & sign_bit) ? -(bits & (sign_bit - 1)) : bits;
  };
  const int64_t diff = ordered(a) - ordered(b);
  return diff < 0 ? -diff : diff;
}

inline bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// Seeded normal values with standard deviation `sd`, representable in d.
inline std::vector<float> random_values(DType d, size_t n, uint64_t seed, double sd = 1.0,
                                        double mean = 0.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = rnd(d, dist(gen));
  return v;
}

// base + a small random delta, as a fine-tune; representable in d.
inline std::vector<float> fine_tune(DType d, const std::vector<float>& base, uint64_t seed,
                                    double scale) {
  std::vector<float> delta = random_values(DType::F32, base.size(), seed, scale);
  std::vector<float> out(base.size());
  for (size_t i = 0; i < base.size(); ++i) out[i] = rnd(d, base[i] + delta[i]);
  return out;
}

// Runs fn and returns the code of the alloy::Error it throws (and its message in *message).
template <class Fn>
ErrorCode error_code_of(Fn&& fn, std::string* message = nullptr) {
  try {
    fn();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  ADD_FAILURE() << "no alloy::Error thrown";
  return ErrorCode::kInternal;
}

}  // namespace alloy::test
