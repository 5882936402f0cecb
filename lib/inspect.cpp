#include "alloy/inspect.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

namespace alloy {
namespace {

constexpr const char* kConfigSummaryKeys[] = {
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "num_experts", "num_local_experts",
    "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "torch_dtype",
    "tie_word_embeddings"};

std::string shape_text(const nlohmann::json& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i].get<uint64_t>());
  }
  return text + "]";
}

std::string human_bytes(uint64_t bytes) {
  char buf[32];
  if (bytes >= 1'000'000'000) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1'000'000) std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  else if (bytes >= 1'000) std::snprintf(buf, sizeof buf, "%.2f kB", bytes / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  return buf;
}

}  // namespace

nlohmann::json inspect_model(const Model& model) {
  nlohmann::json out;
  out["path"] = model.path().string();
  out["shards"] = nlohmann::json::array();
  for (const auto& shard : model.shards()) {
    out["shards"].push_back({{"file", std::filesystem::path(shard->path()).filename().string()},
                             {"tensors", shard->tensors().size()},
                             {"bytes", shard->header().data_bytes()},
                             {"metadata", shard->metadata()}});
  }
  out["tensors"] = nlohmann::json::array();
  nlohmann::json dtypes = nlohmann::json::object();
  uint64_t total_elements = 0, total_bytes = 0;
  for (const auto& tensor : model.tensors()) {
    const TensorInfo& info = *tensor.info;
    const std::string dtype = dtype_name(info.dtype);
    out["tensors"].push_back({{"name", info.name},
                              {"dtype", dtype},
                              {"shape", info.shape},
                              {"bytes", info.nbytes()},
                              {"shard", std::filesystem::path(tensor.shard->path()).filename().string()}});
    auto& totals = dtypes[dtype];
    if (totals.is_null()) totals = {{"tensors", 0}, {"elements", 0}, {"bytes", 0}};
    totals["tensors"] = totals["tensors"].get<uint64_t>() + 1;
    totals["elements"] = totals["elements"].get<uint64_t>() + info.numel();
    totals["bytes"] = totals["bytes"].get<uint64_t>() + info.nbytes();
    total_elements += info.numel();
    total_bytes += info.nbytes();
  }
  out["dtypes"] = dtypes;
  out["total"] = {{"tensors", model.tensors().size()}, {"elements", total_elements}, {"bytes", total_bytes}};
  nlohmann::json config = nlohmann::json::object();
  for (const char* key : kConfigSummaryKeys) {
    if (model.config().contains(key)) config[key] = model.config()[key];
  }
  out["config"] = config;
  out["auxiliary_files"] = model.auxiliary_files();
  return out;
}

std::string format_inspection(const nlohmann::json& inspection) {
  std::ostringstream out;
  out << inspection["path"].get<std::string>() << ": valid, " << inspection["total"]["tensors"] << " tensors, "
      << inspection["total"]["elements"] << " elements, " << human_bytes(inspection["total"]["bytes"]) << " in "
      << inspection["shards"].size() << " shard(s)\n\n";

  size_t name_width = 4, dtype_width = 5, shape_width = 5;
  for (const auto& t : inspection["tensors"]) {
    name_width = std::max(name_width, t["name"].get<std::string>().size());
    dtype_width = std::max(dtype_width, t["dtype"].get<std::string>().size());
    shape_width = std::max(shape_width, shape_text(t["shape"]).size());
  }
  char line[64];
  auto row = [&](const std::string& name, const std::string& dtype, const std::string& shape,
                 const std::string& bytes, const std::string& shard) {
    out << name << std::string(name_width - name.size() + 2, ' ') << dtype
        << std::string(dtype_width - dtype.size() + 2, ' ') << shape
        << std::string(shape_width - shape.size() + 2, ' ');
    std::snprintf(line, sizeof line, "%14s  ", bytes.c_str());
    out << line << shard << "\n";
  };
  row("name", "dtype", "shape", "bytes", "shard");
  for (const auto& t : inspection["tensors"]) {
    row(t["name"], t["dtype"], shape_text(t["shape"]), std::to_string(t["bytes"].get<uint64_t>()), t["shard"]);
  }
  out << "\nper dtype:\n";
  for (const auto& [dtype, totals] : inspection["dtypes"].items()) {
    out << "  " << dtype << ": " << totals["tensors"] << " tensors, " << totals["elements"] << " elements, "
        << human_bytes(totals["bytes"]) << "\n";
  }
  for (const auto& shard : inspection["shards"]) {
    out << "shard " << shard["file"].get<std::string>() << ": " << shard["tensors"] << " tensors, metadata "
        << shard["metadata"].dump() << "\n";
  }
  if (!inspection["config"].empty()) {
    out << "config:\n";
    for (const auto& [key, value] : inspection["config"].items()) out << "  " << key << ": " << value.dump() << "\n";
  }
  if (!inspection["auxiliary_files"].empty()) {
    out << "files:";
    for (const auto& f : inspection["auxiliary_files"]) out << " " << f.get<std::string>();
    out << "\n";
  }
  return out.str();
}

}  // namespace alloy
