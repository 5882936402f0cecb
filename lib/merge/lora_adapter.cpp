// PEFT LoRA adapters: reading and validating one, and adding its change to a base tensor.
#include <cmath>
#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/kernels.h"
#include "alloy/core/parallel.h"
#include "alloy/core/safetensors.h"
#include "alloy/merge/lora.h"

namespace alloy {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxConfigBytes = 1'000'000;
constexpr int kMaxConfigDepth = 32;
constexpr uint64_t kMaxRank = 1u << 20;
constexpr std::string_view kKeyPrefix = "base_model.model.";

json read_adapter_config(const fs::path& file) {
  std::error_code ec;
  const uint64_t size = fs::file_size(file, ec);
  if (ec) throw Error(ErrorCode::kNotAModel, file.string() + ": the LoRA adapter has no " + kAdapterConfigFile);
  if (size > kMaxConfigBytes) throw Error(ErrorCode::kBadConfig, file.string() + ": larger than 1 MB");
  const std::string text = read_text_file(file);
  try {
    json config = json::parse(text, [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
          depth > kMaxConfigDepth) {
        throw Error(ErrorCode::kBadConfig, file.string() + ": nests too deeply");
      }
      return true;
    });
    if (!config.is_object()) throw Error(ErrorCode::kBadConfig, file.string() + ": not a JSON object");
    return config;
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kBadConfig, file.string() + ": not valid JSON: " + e.what());
  }
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// The factor a tensor name holds: {module, which}, which 'A' or 'B', embedding or not.
struct FactorName {
  std::string module;
  char which = 0;
  bool embedding = false;
};

bool parse_factor_name(const std::string& name, FactorName* out) {
  static const struct { std::string_view suffix; char which; bool embedding; } kSuffixes[] = {
      {".lora_A.weight", 'A', false},
      {".lora_B.weight", 'B', false},
      {".lora_embedding_A", 'A', true},
      {".lora_embedding_B", 'B', true},
  };
  if (name.compare(0, kKeyPrefix.size(), kKeyPrefix) != 0) return false;
  for (const auto& s : kSuffixes) {
    if (ends_with(name, s.suffix) && name.size() > kKeyPrefix.size() + s.suffix.size()) {
      out->module = name.substr(kKeyPrefix.size(), name.size() - kKeyPrefix.size() - s.suffix.size());
      out->which = s.which;
      out->embedding = s.embedding;
      return true;
    }
  }
  return false;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Whether PEFT's list form of target_modules names `module`: the whole name, or its last parts.
bool targets(const json& target_modules, const std::string& module) {
  for (const auto& t : target_modules) {
    const std::string& target = t.get_ref<const std::string&>();
    if (module == target || ends_with(module, "." + target)) return true;
  }
  return false;
}

}  // namespace

ModelReference parse_model_reference(const std::string& name) {
  const size_t plus = name.find('+');
  if (plus == std::string::npos) return {name, ""};
  if (name.find('+', plus + 1) != std::string::npos) {
    throw Error(ErrorCode::kRecipe, "'" + name + "' has more than one '+' (the syntax is MODEL+ADAPTER)");
  }
  if (plus == 0 || plus + 1 == name.size()) {
    throw Error(ErrorCode::kRecipe, "'" + name + "': MODEL+ADAPTER needs both a model and an adapter");
  }
  return {name.substr(0, plus), name.substr(plus + 1)};
}

std::unique_ptr<LoraAdapter> LoraAdapter::open(const fs::path& dir) {
  auto adapter = std::unique_ptr<LoraAdapter>(new LoraAdapter());
  adapter->path_ = dir;
  std::error_code ec;  // error_code forms: an over-long or unreadable path is "not there", never a throw
  if (!fs::is_directory(dir, ec)) {
    throw Error(ErrorCode::kNotAModel, dir.string() + ": no LoRA adapter directory there (it must hold " +
                                           kAdapterConfigFile + " and " + kAdapterWeightsFile + ")");
  }
  const fs::path config_file = dir / kAdapterConfigFile;
  const json config = read_adapter_config(config_file);
  auto refuse = [&](const std::string& why) {
    throw Error(ErrorCode::kBadConfig, config_file.string() + ": " + why);
  };
  auto field = [&](const char* key) -> const json* {
    const auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
  };
  if (const json* type = field("peft_type"); type && *type != "LORA") {
    refuse("peft_type " + type->dump() + " is not supported (alloy applies LORA adapters only)");
  }
  if (const json* dora = field("use_dora"); dora && (!dora->is_boolean() || dora->get<bool>())) {
    refuse("use_dora: DoRA adapters (a learned magnitude per column) are not supported");
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (const json* pattern = field(key); pattern && !(pattern->is_object() && pattern->empty())) {
      refuse(std::string(key) + " (a rank or alpha per module) is not supported");
    }
  }
  if (const json* save = field("modules_to_save"); save && !(save->is_array() && save->empty())) {
    refuse("modules_to_save (whole modules stored in the adapter) is not supported");
  }
  if (const json* bias = field("bias"); bias && *bias != "none") {
    refuse("bias " + bias->dump() + " is not supported (only \"none\")");
  }
  if (const json* lora_bias = field("lora_bias"); lora_bias && *lora_bias != false) {
    refuse("lora_bias (a trained bias on lora_B) is not supported");
  }
  if (const json* r = field("r")) {
    if (!r->is_number_unsigned() || r->get<uint64_t>() == 0 || r->get<uint64_t>() > kMaxRank)
      refuse("r must be a positive integer, not " + r->dump());
    adapter->rank_ = r->get<uint64_t>();
  }
  if (const json* alpha = field("lora_alpha")) {
    if (!alpha->is_number() || !std::isfinite(alpha->get<double>())) refuse("lora_alpha must be a number");
    adapter->alpha_ = alpha->get<double>();
  }
  bool fan_in_fan_out = false;
  for (auto [key, flag] : {std::pair{"use_rslora", &adapter->use_rslora_}, std::pair{"fan_in_fan_out", &fan_in_fan_out}}) {
    if (const json* value = field(key)) {
      if (!value->is_boolean()) refuse(std::string(key) + " must be true or false");
      *flag = value->get<bool>();
    }
  }
  const double r = static_cast<double>(adapter->rank_);
  adapter->scale_ = adapter->use_rslora_ ? adapter->alpha_ / std::sqrt(r) : adapter->alpha_ / r;
  const json* target_modules = field("target_modules");
  if (target_modules && !target_modules->is_string()) {
    bool strings = target_modules->is_array();
    for (const auto& t : strings ? *target_modules : json::array()) strings = strings && t.is_string();
    if (!strings) refuse("target_modules must be a list of module names or a string");
  }

  const fs::path weights = dir / kAdapterWeightsFile;
  if (!fs::exists(weights, ec)) {
    throw Error(ErrorCode::kNotAModel, weights.string() + ": the LoRA adapter has no weights file (alloy reads " +
                                           std::string(kAdapterWeightsFile) + "; convert adapter_model.bin first)");
  }
  adapter->weights_ = std::make_unique<SafetensorsFile>(weights.string());
  const std::string label = weights.string();
  std::map<std::string, LoraModule> modules;  // sorted by module name
  for (const TensorInfo& info : adapter->weights_->tensors()) {
    FactorName factor;
    if (info.name.find("lora_magnitude_vector") != std::string::npos) {
      throw Error(ErrorCode::kBadConfig, label + ": tensor '" + info.name + "' is a DoRA magnitude; DoRA is not supported");
    }
    if (!parse_factor_name(info.name, &factor)) {
      throw Error(ErrorCode::kBadConfig, label + ": tensor '" + info.name +
                                             "' is not a LoRA factor (expected base_model.model.MODULE.lora_A.weight / "
                                             "lora_B.weight, or lora_embedding_A / lora_embedding_B)");
    }
    if (info.shape.size() != 2) {
      throw Error(ErrorCode::kShapeMismatch, label + ": tensor '" + info.name + "' has shape " + shape_text(info.shape) +
                                                 "; a LoRA factor is 2-D");
    }
    if (!can_load_as_f32(info.dtype)) {
      throw Error(ErrorCode::kBadConfig, label + ": tensor '" + info.name + "' has dtype " + dtype_name(info.dtype) +
                                             ", which alloy cannot read as float32");
    }
    const uint64_t rank = factor.which == 'A' ? info.shape[0] : info.shape[1];
    if (rank != adapter->rank_) {
      throw Error(ErrorCode::kShapeMismatch, label + ": tensor '" + info.name + "' has shape " + shape_text(info.shape) +
                                                 ", rank " + std::to_string(rank) + ", but the config's r is " +
                                                 std::to_string(adapter->rank_));
    }
    LoraModule& m = modules[factor.module];
    if (!m.module.empty() && m.transposed != (factor.embedding || fan_in_fan_out)) {
      throw Error(ErrorCode::kBadConfig, label + ": module '" + factor.module + "' mixes linear and embedding factors");
    }
    m.module = factor.module;
    m.tensor = factor.module + ".weight";
    m.transposed = factor.embedding || fan_in_fan_out;
    (factor.which == 'A' ? m.a : m.b) = &info;
  }
  if (modules.empty()) throw Error(ErrorCode::kBadConfig, label + ": the adapter holds no LoRA factors");
  for (auto& [name, m] : modules) {
    if (m.a == nullptr || m.b == nullptr) {
      throw Error(ErrorCode::kBadConfig, label + ": module '" + name + "' has lora_" + (m.a ? "A" : "B") +
                                             " but no lora_" + (m.a ? "B" : "A"));
    }
    if (target_modules && target_modules->is_array() && !targets(*target_modules, name)) {
      throw Error(ErrorCode::kBadConfig, label + ": module '" + name + "' is not among the config's target_modules " +
                                             target_modules->dump());
    }
    // B A is [B rows, A columns]; transposed, the other way round.
    const uint64_t rows = m.b->shape[0], columns = m.a->shape[1];
    m.shape = m.transposed ? std::vector<uint64_t>{columns, rows} : std::vector<uint64_t>{rows, columns};
    adapter->by_tensor_.emplace(m.tensor, adapter->modules_.size());
    adapter->modules_.push_back(std::move(m));
  }
  return adapter;
}

const LoraModule* LoraAdapter::find(std::string_view tensor) const {
  const auto it = by_tensor_.find(std::string(tensor));
  return it == by_tensor_.end() ? nullptr : &modules_[it->second];
}

std::vector<fs::path> LoraAdapter::files() const {
  return {path_ / kAdapterConfigFile, path_ / kAdapterWeightsFile};
}

void LoraAdapter::check_against(const Model& base) const {
  for (const LoraModule& m : modules_) {
    const ModelTensor* tensor = base.find(m.tensor);
    if (tensor == nullptr) {
      throw Error(ErrorCode::kMissingTensor, "LoRA adapter " + path_.string() + " changes tensor '" + m.tensor +
                                                 "', which model " + base.path().string() + " does not have");
    }
    if (tensor->info->shape != m.shape) {
      throw Error(ErrorCode::kShapeMismatch, "LoRA adapter " + path_.string() + ": tensor '" + m.tensor + "' is " +
                                                 shape_text(tensor->info->shape) + " in " + base.path().string() +
                                                 " but the adapter's change (lora_B " + shape_text(m.b->shape) +
                                                 " x lora_A " + shape_text(m.a->shape) +
                                                 (m.transposed ? ", transposed" : "") + ") is " + shape_text(m.shape));
    }
    const DType dtype = tensor->info->dtype;
    if (!can_load_as_f32(dtype) || !can_store_from_f32(dtype)) {
      throw Error(ErrorCode::kBadConfig, "LoRA adapter " + path_.string() + ": tensor '" + m.tensor + "' has dtype " +
                                             dtype_name(dtype) + ", which alloy cannot change in float32");
    }
  }
}

void LoraAdapter::add_change(const LoraModule& m, float* values) const {
  auto load = [&](const TensorInfo& info) {
    std::vector<uint8_t> raw(info.nbytes());
    weights_->read(info, 0, raw.size(), raw.data());
    std::vector<float> out(info.numel());
    load_as_f32(info.dtype, raw.data(), out.size(), out.data());
    return out;
  };
  const std::vector<float> a = load(*m.a), b = load(*m.b);
  const uint64_t r = rank_, rows = m.shape[0], columns = m.shape[1];
  // Row i of the change is sum_k left[i][k] * right[k][:]: left = B and right = A, or transposed
  // left = A^T and right = B^T.
  std::vector<float> left(rows * r), right(r * columns);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t k = 0; k < r; ++k) left[i * r + k] = m.transposed ? a[k * rows + i] : b[i * r + k];
  }
  for (uint64_t k = 0; k < r; ++k) {
    for (uint64_t j = 0; j < columns; ++j) right[k * columns + j] = m.transposed ? b[j * r + k] : a[k * columns + j];
  }
  const float scale = static_cast<float>(scale_);
  const size_t grain = std::max<size_t>(1, kDefaultGrain / std::max<uint64_t>(columns, 1));
  parallel_for(rows, grain, [&](size_t begin, size_t end) {
    std::vector<float> row(columns);
    for (size_t i = begin; i < end; ++i) {
      std::fill(row.begin(), row.end(), 0.0f);
      for (uint64_t k = 0; k < r; ++k) {
        const float l = left[i * r + k];
        const float* rk = right.data() + k * columns;
        for (uint64_t j = 0; j < columns; ++j) row[j] += l * rk[j];
      }
      float* out = values + i * columns;
      for (uint64_t j = 0; j < columns; ++j) out[j] += scale * row[j];
    }
  });
}

void LoraAdapter::patch(const LoraModule& m, DType dtype, uint8_t* bytes, float* scratch) const {
  const size_t n = static_cast<size_t>(m.shape[0] * m.shape[1]);
  load_as_f32(dtype, bytes, n, scratch);
  add_change(m, scratch);
  size_t bad = count_non_finite(n, scratch);
  if (dtype != DType::F32 && bad == 0) bad = overflow_on_store(dtype, scratch, n, false);
  if (bad > 0) {
    throw Error(ErrorCode::kNonFinite, "tensor '" + m.tensor + "': the LoRA adapter " + path_.string() + " makes " +
                                           std::to_string(bad) + " values NaN, infinite or beyond the range of " +
                                           dtype_name(dtype));
  }
  store_from_f32(scratch, n, dtype, bytes);
}

}  // namespace alloy
