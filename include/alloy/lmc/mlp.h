// alloy/lmc/mlp.h: a multilayer perceptron stored as a Hugging Face-style model directory, its
// forward and backward passes, evaluation and SGD training.
//
// Directory layout (what save_mlp writes and load_mlp accepts, e.g. exported from PyTorch):
//   model.safetensors   layers.{i}.weight [out, in] and layers.{i}.bias [out], F32, i = 0..L-1
//   config.json         {"model_type": "mlp", "architectures": ["MLP"],
//                        "layer_sizes": [784, ..., 10], "activation": "relu"}
// The network: h_0 = pixels / 255 (flattened row-major), z_i = h_{i-1} W_i^T + b_i,
// h_i = relu(z_i) for hidden layers, logits = z_L; loss = mean cross-entropy (natural log).
//
// Numerics: every matrix product computes each output element as one chain of fused multiply-adds
// over k in increasing order (lib/lmc/gemm.cpp), so the bits do not depend on tiling, on the
// vector width chosen at run time, or on the number of threads; every sum over samples is done in
// fixed chunks combined in order. Training is therefore bit-identical for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "alloy/lmc/idx.h"

namespace alloy::lmc {

// Progress callback: (done, total, what). May be empty.
using Progress = std::function<void(size_t, size_t, const std::string&)>;

// Parameters of one MLP, all in one buffer: for each layer i, W_i (row-major [out, in]) then b_i.
struct Mlp {
  std::vector<size_t> sizes;  // layer_sizes: input, hidden..., classes
  std::vector<float> params;

  size_t layers() const { return sizes.empty() ? 0 : sizes.size() - 1; }
  size_t weight_offset(size_t layer) const;
  size_t bias_offset(size_t layer) const {
    return weight_offset(layer) + sizes[layer] * sizes[layer + 1];
  }
  float* weight(size_t layer) { return params.data() + weight_offset(layer); }
  const float* weight(size_t layer) const { return params.data() + weight_offset(layer); }
  float* bias(size_t layer) { return params.data() + bias_offset(layer); }
  const float* bias(size_t layer) const { return params.data() + bias_offset(layer); }
};

// Number of parameters of an MLP with these layer sizes (overflow-checked).
size_t parameter_count(const std::vector<size_t>& sizes);
// Parses "512,512" into {512, 512}; throws Error(kInvalidArgument) naming the text.
std::vector<size_t> parse_layer_list(const std::string& text);
// He (Kaiming normal) initialisation: W ~ N(0, 2 / fan_in), b = 0, from a counter-based generator
// (the same bits for the same seed, whatever the threads).
Mlp init_mlp(const std::vector<size_t>& sizes, uint64_t seed);

// Tensor names in the safetensors file.
std::string weight_name(size_t layer);
std::string bias_name(size_t layer);

// Loads a model directory (or a lone .safetensors file, whose sizes come from the tensor shapes).
// Refuses (Error kBadConfig / kMissingTensor / kShapeMismatch, naming the path) a config that is
// not an MLP, missing or extra tensors, non-F32 tensors, shapes that do not chain, and non-finite
// values.
Mlp load_mlp(const std::filesystem::path& path);
// Writes the directory (staged, then renamed into place). `extra_config` keys are added to
// config.json (e.g. how the model was made). Refuses an existing non-empty OUT unless overwrite,
// and an OUT that is or contains one of `inputs` (the models it was made from) in any case.
void save_mlp(const Mlp& mlp, const std::filesystem::path& out, bool overwrite,
              const nlohmann::json& extra_config = nlohmann::json::object(),
              const std::vector<std::filesystem::path>& inputs = {});

// --- numerics (T = float for speed, T = double for gradient checks) ---

// logits (count x classes) of `count` inputs x (count x sizes[0], already scaled).
template <class T>
void forward(const std::vector<size_t>& sizes, const T* params, const T* x, size_t count,
             T* logits);
// Mean cross-entropy of a batch and its gradient with respect to params (grad has params' size).
template <class T>
double loss_and_gradient(const std::vector<size_t>& sizes, const T* params, const T* x,
                         const uint8_t* labels, size_t count, T* grad);

// The matrix kernel picked for this machine: "avx512", "avx2" or "scalar".
std::string matrix_kernel_name();

// Pixels of samples [begin, begin + count) of a split as floats / 255.
void scale_pixels(const Split& split, const size_t* indices, size_t count, float* out);

// Hidden activations (post-ReLU, count x sizes[layer]) of hidden layer `layer` (1-based: 1 is the
// first hidden layer) for the first `count` training images; `pre` gives pre-activations instead.
std::vector<float> hidden_activations(const Mlp& mlp, const Split& split, size_t count,
                                      size_t layer, bool pre);

struct Evaluation {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction correct
  size_t count = 0;
  std::vector<size_t> class_correct, class_count;  // per class
  // Accuracy over the samples whose label is in [first, last].
  double accuracy_on(size_t first, size_t last) const;
};
// Evaluates on the whole split (or its first `limit` samples when limit > 0).
Evaluation evaluate(const Mlp& mlp, const Split& split, size_t limit = 0);
nlohmann::json evaluation_json(const Evaluation& evaluation);

struct TrainOptions {
  std::vector<size_t> hidden{512, 512};
  size_t epochs = 8;
  uint64_t seed = 0;       // initialisation
  uint64_t data_seed = 0;  // the order of the samples in each epoch
  double lr = 0.05;
  double momentum = 0.9;
  size_t batch = 128;
  size_t first_class = 0, last_class = kIdxClasses - 1;  // train only on labels in [first, last]
  size_t limit = 0;  // > 0: only the first `limit` training samples (tests, quick runs)
};

struct EpochLog {
  size_t epoch = 0;
  double train_loss = 0;  // mean minibatch loss over the epoch
  double test_loss = 0, test_accuracy = 0;
  size_t samples = 0;  // training samples seen in the epoch
  double seconds = 0;  // wall time of the epoch's training steps (the evaluation excluded)
};

// SGD with momentum (PyTorch's rule: v = momentum v + g, p -= lr v), minibatches in an order drawn
// from data_seed, the last partial batch kept. Starts from `start` when given (fine-tuning), else
// from init_mlp(input, hidden..., classes, seed). Evaluates the test set after each epoch.
Mlp train_mlp(const Dataset& data, const TrainOptions& options, const Mlp* start,
              std::vector<EpochLog>* log, const Progress& progress = {});

}  // namespace alloy::lmc
