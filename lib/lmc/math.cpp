// Forward and backward passes, evaluation (alloy/lmc/mlp.h). Templates over float (training,
// evaluation) and double (gradient checks); the matrix products are lib/lmc/gemm.cpp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "alloy/lmc/mlp.h"
#include "gemm.h"
#include "internal.h"

namespace alloy::lmc {
namespace detail {

size_t layer_offset(const std::vector<size_t>& sizes, size_t layer) {
  size_t offset = 0;
  for (size_t l = 0; l < layer; ++l) offset += sizes[l] * sizes[l + 1] + sizes[l + 1];
  return offset;
}

// out[count, n_out] = in[count, n_in] W^T + b. Either form below computes each output element as
// the same chain fma(in[i, k], W[o, k], .) over k from the bias (fma is commutative in its two
// factors), so the bits are the same; the one that transposes fewer elements is used: W itself
// (n_in x n_out) or the input and the output (count x (n_in + n_out)).
template <class T>
void linear_layer(const std::vector<size_t>& sizes, const T* params, size_t layer, const T* in,
                  size_t count, T* out, std::vector<T>& scratch, bool parallel) {
  const size_t n_in = sizes[layer], n_out = sizes[layer + 1];
  const T* w = params + layer_offset(sizes, layer);
  const T* b = w + n_in * n_out;
  if (count * (n_in + n_out) < n_in * n_out) {
    scratch.resize(count * (n_in + n_out));
    T* in_t = scratch.data();        // [in, count]
    T* out_t = in_t + n_in * count;  // [out, count]
    transpose(count, n_in, in, in_t);
    for (size_t o = 0; o < n_out; ++o) std::fill(out_t + o * count, out_t + (o + 1) * count, b[o]);
    gemm(n_out, count, n_in, w, n_in, in_t, count, out_t, count, true, parallel);
    transpose(n_out, count, out_t, out);
    return;
  }
  scratch.resize(n_in * n_out);
  transpose(n_out, n_in, w, scratch.data());  // [in, out]
  for (size_t i = 0; i < count; ++i) std::copy(b, b + n_out, out + i * n_out);
  gemm(count, n_out, n_in, in, n_in, scratch.data(), n_out, out, n_out, true, parallel);
}

template <class T>
void forward_to(const std::vector<size_t>& sizes, const T* params, const T* x, size_t count,
                size_t upto, bool relu_last, T* out, bool parallel) {
  std::vector<T> scratch, cur, next;
  const T* in = x;
  for (size_t l = 0; l < upto; ++l) {
    const size_t n_out = sizes[l + 1];
    T* dst;
    if (l + 1 == upto) {
      dst = out;
    } else {
      next.resize(count * n_out);
      dst = next.data();
    }
    linear_layer(sizes, params, l, in, count, dst, scratch, parallel);
    if (l + 1 < upto || relu_last) {
      for (size_t i = 0; i < count * n_out; ++i) dst[i] = dst[i] > T(0) ? dst[i] : T(0);
    }
    if (l + 1 < upto) {
      cur.swap(next);
      in = cur.data();
    }
  }
}

template void forward_to<float>(const std::vector<size_t>&, const float*, const float*, size_t,
                                size_t, bool, float*, bool);

}  // namespace detail

template <class T>
void forward(const std::vector<size_t>& sizes, const T* params, const T* x, size_t count,
             T* logits) {
  detail::forward_to(sizes, params, x, count, sizes.size() - 1, false, logits, true);
}
template void forward<float>(const std::vector<size_t>&, const float*, const float*, size_t,
                             float*);
template void forward<double>(const std::vector<size_t>&, const double*, const double*, size_t,
                              double*);

template <class T>
double loss_and_gradient(const std::vector<size_t>& sizes, const T* params, const T* x,
                         const uint8_t* labels, size_t count, T* grad) {
  const size_t layers = sizes.size() - 1;
  std::vector<std::vector<T>> h(layers);  // h[l]: output of layer l (post-ReLU for hidden layers)
  std::vector<T> scratch;
  const T* in = x;
  for (size_t l = 0; l < layers; ++l) {
    h[l].resize(count * sizes[l + 1]);
    detail::linear_layer(sizes, params, l, in, count, h[l].data(), scratch, true);
    if (l + 1 < layers)
      for (T& v : h[l]) v = v > T(0) ? v : T(0);
    in = h[l].data();
  }
  // Softmax cross-entropy; dz = (softmax - onehot) / count.
  const size_t classes = sizes.back();
  std::vector<T> dz(count * classes);
  double loss = 0;
  for (size_t i = 0; i < count; ++i) {
    const T* z = h[layers - 1].data() + i * classes;
    const T m = *std::max_element(z, z + classes);
    T sum = 0;
    for (size_t c = 0; c < classes; ++c) sum += std::exp(z[c] - m);
    const T log_sum = std::log(sum);
    loss += double(log_sum - (z[labels[i]] - m));
    for (size_t c = 0; c < classes; ++c) {
      const T p = std::exp(z[c] - m) / sum;
      dz[i * classes + c] = (p - (c == labels[i] ? T(1) : T(0))) / T(count);
    }
  }
  std::vector<T> dzt, dh;
  for (size_t l = layers; l-- > 0;) {
    const size_t n_in = sizes[l], n_out = sizes[l + 1];
    const T* w = params + detail::layer_offset(sizes, l);
    T* gw = grad + detail::layer_offset(sizes, l);
    T* gb = gw + n_in * n_out;
    const T* h_prev = l == 0 ? x : h[l - 1].data();
    dzt.resize(n_out * count);
    detail::transpose(count, n_out, dz.data(), dzt.data());
    detail::gemm(n_out, n_in, count, dzt.data(), count, h_prev, n_in, gw, n_in, false, true);
    for (size_t o = 0; o < n_out; ++o) {
      T s = 0;
      for (size_t i = 0; i < count; ++i) s += dzt[o * count + i];
      gb[o] = s;
    }
    if (l == 0) break;
    dh.resize(count * n_in);
    detail::gemm(count, n_in, n_out, dz.data(), n_out, w, n_in, dh.data(), n_in, false, true);
    for (size_t i = 0; i < count * n_in; ++i) dh[i] = h_prev[i] > T(0) ? dh[i] : T(0);
    dz.swap(dh);
  }
  return loss / double(count);
}
template double loss_and_gradient<float>(const std::vector<size_t>&, const float*, const float*,
                                         const uint8_t*, size_t, float*);
template double loss_and_gradient<double>(const std::vector<size_t>&, const double*, const double*,
                                          const uint8_t*, size_t, double*);

std::string matrix_kernel_name() {
  return detail::gemm_kernel_name();
}

void scale_pixels(const Split& split, const size_t* indices, size_t count, float* out) {
  const size_t f = split.features();
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* p = split.pixels.data() + indices[i] * f;
    float* o = out + i * f;
    for (size_t j = 0; j < f; ++j) o[j] = float(p[j]) / 255.0f;
  }
}

namespace {
void check_input(const Mlp& mlp, const Split& split) {
  if (mlp.sizes.empty() || mlp.sizes.front() != split.features())
    throw Error(ErrorCode::kShapeMismatch,
                "the model takes " + std::to_string(mlp.sizes.empty() ? 0 : mlp.sizes.front()) +
                    " inputs, the images have " + std::to_string(split.features()) + " pixels");
  if (mlp.sizes.back() != kIdxClasses)
    throw Error(ErrorCode::kShapeMismatch, "the model has " + std::to_string(mlp.sizes.back()) +
                                               " outputs, the data set " +
                                               std::to_string(kIdxClasses) + " classes");
}
constexpr size_t kEvalChunk = 500;

// Runs layers [0, upto) on the first `count` images of `split` (pixels / 255) in fixed chunks of
// kEvalChunk images, the chunks spread over threads, and calls visit(chunk, begin, n, out) with
// the chunk's index, its first image, its size and its outputs [n, sizes[upto]]. Each chunk's
// result depends only on its images, so callers that combine per-chunk results in chunk order are
// deterministic on any number of threads.
template <class Visit>
void forward_chunks(const Mlp& mlp, const Split& split, size_t count, size_t upto, bool relu_last,
                    const Visit& visit) {
  const size_t f = split.features(), width = mlp.sizes[upto];
  const size_t chunks = (count + kEvalChunk - 1) / kEvalChunk;
  parallel_for(chunks, 1, [&](size_t b, size_t e) {
    std::vector<float> x, out;
    std::vector<size_t> idx;
    for (size_t c = b; c < e; ++c) {
      const size_t begin = c * kEvalChunk, n = std::min(kEvalChunk, count - begin);
      idx.resize(n);
      std::iota(idx.begin(), idx.end(), begin);
      x.resize(n * f);
      out.resize(n * width);
      scale_pixels(split, idx.data(), n, x.data());
      detail::forward_to(mlp.sizes, mlp.params.data(), x.data(), n, upto, relu_last, out.data(),
                         false);
      visit(c, begin, n, out.data());
    }
  });
}
}  // namespace

std::vector<float> hidden_activations(const Mlp& mlp, const Split& split, size_t count,
                                      size_t layer, bool pre) {
  check_input(mlp, split);
  if (layer == 0 || layer >= mlp.layers())
    throw Error(ErrorCode::kInvalidArgument,
                "hidden layer " + std::to_string(layer) + " out of range");
  count = std::min(count, split.count);
  const size_t width = mlp.sizes[layer];
  std::vector<float> out(count * width);
  forward_chunks(mlp, split, count, layer, !pre,
                 [&](size_t, size_t begin, size_t n, const float* activations) {
                   std::copy(activations, activations + n * width, out.data() + begin * width);
                 });
  return out;
}

double Evaluation::accuracy_on(size_t first, size_t last) const {
  size_t correct = 0, total = 0;
  for (size_t c = first; c <= last && c < class_count.size(); ++c) {
    correct += class_correct[c];
    total += class_count[c];
  }
  return total ? double(correct) / double(total) : 0.0;
}

Evaluation evaluate(const Mlp& mlp, const Split& split, size_t limit) {
  check_input(mlp, split);
  const size_t count = limit ? std::min(limit, split.count) : split.count;
  const size_t classes = kIdxClasses;
  struct Partial {
    double loss = 0;
    std::vector<size_t> correct, total;
  };
  std::vector<Partial> partial((count + kEvalChunk - 1) / kEvalChunk);
  forward_chunks(mlp, split, count, mlp.layers(), false,
                 [&](size_t c, size_t begin, size_t n, const float* logits) {
                   Partial& p = partial[c];
                   p.correct.assign(classes, 0);
                   p.total.assign(classes, 0);
                   for (size_t i = 0; i < n; ++i) {
                     const float* z = logits + i * classes;
                     const size_t label = split.labels[begin + i];
                     const size_t arg = size_t(std::max_element(z, z + classes) - z);
                     double m = z[arg], s = 0;
                     for (size_t k = 0; k < classes; ++k) s += std::exp(double(z[k]) - m);
                     p.loss += std::log(s) - (double(z[label]) - m);
                     p.total[label] += 1;
                     p.correct[label] += arg == label;
                   }
                 });
  Evaluation ev;
  ev.count = count;
  ev.class_correct.assign(classes, 0);
  ev.class_count.assign(classes, 0);
  size_t correct = 0;
  for (const Partial& p : partial) {
    ev.loss += p.loss;
    for (size_t k = 0; k < classes; ++k) {
      ev.class_correct[k] += p.correct[k];
      ev.class_count[k] += p.total[k];
      correct += p.correct[k];
    }
  }
  ev.loss = count ? ev.loss / double(count) : 0.0;
  ev.accuracy = count ? double(correct) / double(count) : 0.0;
  if (!std::isfinite(ev.loss)) ev.loss = std::numeric_limits<double>::infinity();
  return ev;
}

nlohmann::json evaluation_json(const Evaluation& ev) {
  nlohmann::json per_class = nlohmann::json::array();
  for (size_t c = 0; c < ev.class_count.size(); ++c)
    per_class.push_back(ev.class_count[c] ? double(ev.class_correct[c]) / double(ev.class_count[c])
                                          : 0.0);
  return {{"loss", ev.loss},
          {"accuracy", ev.accuracy},
          {"count", ev.count},
          {"class_accuracy", per_class}};
}

}  // namespace alloy::lmc
