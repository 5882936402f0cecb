// MLP model directories (alloy/lmc/mlp.h): layer lists, He initialisation, load and save.
#include "alloy/lmc/mlp.h"

#include <cmath>
#include <cstring>
#include <numbers>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
#include "random.h"

namespace alloy::lmc {

size_t Mlp::weight_offset(size_t layer) const {
  size_t offset = 0;
  for (size_t l = 0; l < layer; ++l) offset += sizes[l] * sizes[l + 1] + sizes[l + 1];
  return offset;
}

size_t parameter_count(const std::vector<size_t>& sizes) {
  size_t total = 0;
  for (size_t l = 0; l + 1 < sizes.size(); ++l) {
    const size_t in = sizes[l], out = sizes[l + 1];
    if (in != 0 && out > (SIZE_MAX / 4 - total) / (in + 1))
      throw Error(ErrorCode::kInvalidArgument, "MLP layer sizes overflow the parameter count");
    total += out * in + out;
  }
  return total;
}

std::vector<size_t> parse_layer_list(const std::string& text) {
  std::vector<size_t> sizes;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = text.find(',', at);
    const std::string part =
        text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (part.empty() || part.size() > 7 ||
        part.find_first_not_of("0123456789") != std::string::npos || std::stoul(part) == 0)
      throw Error(
          ErrorCode::kInvalidArgument,
          "layer list '" + text + "': each entry must be a positive whole number below 10^7");
    sizes.push_back(std::stoul(part));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return sizes;
}

Mlp init_mlp(const std::vector<size_t>& sizes, uint64_t seed) {
  if (sizes.size() < 2)
    throw Error(ErrorCode::kInvalidArgument, "an MLP needs at least 2 layer sizes");
  Mlp mlp;
  mlp.sizes = sizes;
  mlp.params.assign(parameter_count(sizes), 0.0f);
  for (size_t l = 0; l < mlp.layers(); ++l) {
    const double std_dev = std::sqrt(2.0 / double(sizes[l]));
    const uint64_t stream = detail::mix_bits(seed * 0x9E3779B97F4A7C15ull + l + 1);
    float* w = mlp.weight(l);
    const size_t n = sizes[l] * sizes[l + 1];
    for (size_t i = 0; i < n; ++i) w[i] = static_cast<float>(std_dev * detail::normal(stream, i));
  }
  return mlp;
}

std::string weight_name(size_t layer) {
  return "layers." + std::to_string(layer) + ".weight";
}
std::string bias_name(size_t layer) {
  return "layers." + std::to_string(layer) + ".bias";
}

namespace {

[[noreturn]] void refuse(ErrorCode code, const std::filesystem::path& path,
                         const std::string& what) {
  throw Error(code, path.string() + ": " + what);
}

std::vector<size_t> sizes_from_config(const nlohmann::json& config,
                                      const std::filesystem::path& path) {
  if (config.contains("model_type") &&
      (!config["model_type"].is_string() || config["model_type"] != "mlp"))
    refuse(ErrorCode::kBadConfig, path, "config.json model_type is not \"mlp\"");
  if (config.contains("activation") &&
      (!config["activation"].is_string() || config["activation"] != "relu"))
    refuse(ErrorCode::kBadConfig, path,
           "config.json activation is not \"relu\" (the only one supported)");
  const auto it = config.find("layer_sizes");
  if (it == config.end() || !it->is_array() || it->size() < 2 || it->size() > 64)
    refuse(ErrorCode::kBadConfig, path, "config.json needs layer_sizes, a list of 2 to 64 sizes");
  std::vector<size_t> sizes;
  for (const auto& v : *it) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 || v.get<uint64_t>() > 10'000'000)
      refuse(ErrorCode::kBadConfig, path,
             "config.json layer_sizes holds " + v.dump() + ", not a whole number in [1, 10^7]");
    sizes.push_back(v.get<size_t>());
  }
  return sizes;
}

}  // namespace

Mlp load_mlp(const std::filesystem::path& path) {
  const Model model = Model::open(path);
  std::vector<size_t> sizes;
  if (model.has_config()) {
    sizes = sizes_from_config(model.config(), path);
  } else {  // a lone file: the shapes chain
    for (size_t l = 0;; ++l) {
      const ModelTensor* w = model.find(weight_name(l));
      if (!w) break;
      if (w->info->shape.size() != 2)
        refuse(ErrorCode::kShapeMismatch, path, weight_name(l) + " is not a matrix");
      if (l == 0) sizes.push_back(w->info->shape[1]);
      sizes.push_back(w->info->shape[0]);
    }
    if (sizes.size() < 2) refuse(ErrorCode::kMissingTensor, path, "no tensor layers.0.weight");
  }
  const size_t layers = sizes.size() - 1;
  if (model.tensors().size() != 2 * layers)
    refuse(ErrorCode::kMissingTensor, path,
           std::to_string(model.tensors().size()) + " tensors, an MLP with layer_sizes of length " +
               std::to_string(sizes.size()) + " has exactly " + std::to_string(2 * layers) +
               " (layers.{i}.weight and layers.{i}.bias)");
  // Every tensor is checked against the sizes before anything is allocated: a config.json that
  // claims huge layers is refused by the shapes, not by running out of memory.
  std::vector<const ModelTensor*> found;
  for (size_t l = 0; l < layers; ++l) {
    for (int is_bias = 0; is_bias < 2; ++is_bias) {
      const std::string name = is_bias ? bias_name(l) : weight_name(l);
      const ModelTensor* t = model.find(name);
      if (!t) refuse(ErrorCode::kMissingTensor, path, "no tensor " + name);
      if (t->info->dtype != DType::F32)
        refuse(ErrorCode::kShapeMismatch, path,
               name + " is " + dtype_name(t->info->dtype) + ", alloy-lmc reads F32 only");
      const std::vector<uint64_t> expect = is_bias ? std::vector<uint64_t>{sizes[l + 1]}
                                                   : std::vector<uint64_t>{sizes[l + 1], sizes[l]};
      if (t->info->shape != expect)
        refuse(ErrorCode::kShapeMismatch, path, name + " has the wrong shape for layer_sizes");
      found.push_back(t);
    }
  }
  Mlp mlp;
  mlp.sizes = sizes;
  mlp.params.assign(parameter_count(sizes), 0.0f);
  for (size_t j = 0; j < found.size(); ++j) {
    const ModelTensor* t = found[j];
    float* dst = j % 2 ? mlp.bias(j / 2) : mlp.weight(j / 2);
    std::memcpy(dst, t->data(), t->info->nbytes());
    for (uint64_t i = 0; i < t->info->numel(); ++i) {
      if (!std::isfinite(dst[i]))
        refuse(ErrorCode::kNonFinite, path, t->name() + " holds NaN or Inf");
    }
  }
  return mlp;
}

void save_mlp(const Mlp& mlp, const std::filesystem::path& out, bool overwrite,
              const nlohmann::json& extra_config, const std::vector<std::filesystem::path>& inputs) {
  if (mlp.params.size() != parameter_count(mlp.sizes))
    throw Error(ErrorCode::kInternal,
                out.string() + ": parameter buffer does not match the layer sizes");
  StagingDirectory staging(out, overwrite, inputs);
  std::vector<TensorSpec> specs;
  std::vector<const void*> data;
  for (size_t l = 0; l < mlp.layers(); ++l) {
    specs.push_back({weight_name(l), DType::F32, {mlp.sizes[l + 1], mlp.sizes[l]}});
    data.push_back(mlp.weight(l));
    specs.push_back({bias_name(l), DType::F32, {mlp.sizes[l + 1]}});
    data.push_back(mlp.bias(l));
  }
  write_safetensors_file(staging.path() / "model.safetensors", specs, data);
  nlohmann::json config = {{"model_type", "mlp"},
                           {"architectures", {"MLP"}},
                           {"layer_sizes", mlp.sizes},
                           {"activation", "relu"},
                           {"torch_dtype", "float32"}};
  for (const auto& [key, value] : extra_config.items()) config[key] = value;
  write_file_atomic(staging.path() / "config.json", config.dump(2) + "\n");
  staging.publish();
}

}  // namespace alloy::lmc
