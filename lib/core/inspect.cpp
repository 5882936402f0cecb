// alloy-inspect's library side: a validated model described as JSON, and that JSON as text.
#include "alloy/core/inspect.h"

#include "alloy/core/architecture.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <vector>

namespace alloy {
namespace {

// The config.json keys worth a summary (whichever are present are copied as they are).
constexpr const char* kConfigSummaryKeys[] = {
    "architectures",         "model_type",          "hidden_size",         "num_hidden_layers",
    "intermediate_size",     "num_attention_heads", "num_key_value_heads", "vocab_size",
    "num_experts",           "num_local_experts",   "n_routed_experts",    "num_experts_per_tok",
    "moe_intermediate_size", "torch_dtype",         "tie_word_embeddings"};

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
  if (bytes >= 1'000'000'000) {
    std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
  } else if (bytes >= 1'000'000) {
    std::snprintf(buf, sizeof buf, "%.2f MB", static_cast<double>(bytes) / 1e6);
  } else if (bytes >= 1'000) {
    std::snprintf(buf, sizeof buf, "%.2f kB", static_cast<double>(bytes) / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  }
  return buf;
}

std::string count_text(const nlohmann::json& value) {
  return std::to_string(value.get<uint64_t>());
}

// Aligned columns separated by two spaces; columns whose flag in `right` is set are right-aligned.
// The first row is the heading. Trailing spaces are trimmed.
std::string table(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right,
                  const std::string& indent = "") {
  std::vector<size_t> width(right.size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line = indent;
    for (size_t c = 0; c < row.size(); ++c) {
      if (c) line += "  ";
      const std::string pad(width[c] - row[c].size(), ' ');
      line += right[c] ? pad + row[c] : row[c] + pad;
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + "\n";
  }
  return out;
}

// The detected architecture (ModelArchitecture::summary()) as an indented block.
std::string format_architecture(const nlohmann::json& a) {
  const auto text = [](const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"family:", text(a.at("family")) + " (" + text(a.at("title")) + ")"});
  std::string layers = text(a.at("layers")) + " under '" + text(a.at("layer_prefix")) + "'";
  if (!a.at("text_config").get<std::string>().empty()) layers += ", count in " + text(a.at("text_config"));
  rows.push_back({"layers:", layers});
  std::string types;
  for (const auto& [kind, count] : a.at("layer_types").items()) {
    types += (types.empty() ? "" : ", ") + kind + " x" + count.dump();
  }
  if (!types.empty()) rows.push_back({"layer types:", types});
  if (a.at("experts").get<int>() > 0) {
    rows.push_back({"experts:", text(a.at("experts")) + " routed, in " + text(a.at("moe_layers")) + " layers"});
  }
  std::string fused;
  for (const auto& f : a.at("fused")) fused += (fused.empty() ? "" : ", ") + f.get<std::string>();
  if (!fused.empty()) rows.push_back({"fused:", fused});
  rows.push_back({"tied embeddings:", a.at("tied_embeddings").get<bool>() ? "yes" : "no"});
  std::string subs;
  for (const auto& [name, count] : a.at("submodels").items()) {
    subs += (subs.empty() ? "" : ", ") + name + " (" + count.dump() + " tensors)";
  }
  if (!subs.empty()) rows.push_back({"sub-models:", subs});
  if (a.at("unknown_tensors").get<int>() > 0) {
    rows.push_back({"unknown tensors:", text(a.at("unknown_tensors")) + " (first: " +
                                            text(a.at("first_unknown_tensor")) + ")"});
  }
  std::string out = "architecture:\n" + table(rows, {false, false}, "  ");
  if (a.contains("notice")) out += "  notice: " + text(a.at("notice")) + "\n";
  return out;
}

}  // namespace

nlohmann::json inspect_model(const Model& model, bool list_tensors) {
  nlohmann::json out;
  out["path"] = model.path().string();
  out["shards"] = nlohmann::json::array();
  std::unordered_map<const SafetensorsFile*, std::string> shard_names;
  for (const auto& shard : model.shards()) {
    const std::string file = std::filesystem::path(shard->path()).filename().string();
    shard_names.emplace(shard.get(), file);
    out["shards"].push_back({{"file", file},
                             {"tensors", shard->tensors().size()},
                             {"bytes", shard->header().data_bytes()},
                             {"metadata", shard->metadata()}});
  }
  struct Totals {
    uint64_t tensors = 0, elements = 0, bytes = 0;
  };
  std::map<std::string, Totals> by_dtype;
  Totals total;
  nlohmann::json tensors = nlohmann::json::array();
  if (list_tensors) tensors.get_ref<nlohmann::json::array_t&>().reserve(model.tensors().size());
  for (const auto& tensor : model.tensors()) {
    const TensorInfo& info = *tensor.info;
    if (list_tensors) {
      tensors.push_back({{"name", info.name},
                         {"dtype", dtype_name(info.dtype)},
                         {"shape", info.shape},
                         {"bytes", info.nbytes()},
                         {"shard", shard_names.at(tensor.shard)}});
    }
    for (Totals* t : {&by_dtype[dtype_name(info.dtype)], &total}) {
      t->tensors += 1;
      t->elements += info.numel();
      t->bytes += info.nbytes();
    }
  }
  if (list_tensors) out["tensors"] = std::move(tensors);
  nlohmann::json dtypes = nlohmann::json::object();
  for (const auto& [dtype, t] : by_dtype)
    dtypes[dtype] = {{"tensors", t.tensors}, {"elements", t.elements}, {"bytes", t.bytes}};
  out["dtypes"] = dtypes;
  out["total"] = {{"tensors", total.tensors}, {"elements", total.elements}, {"bytes", total.bytes}};
  nlohmann::json config = nlohmann::json::object();
  for (const char* key : kConfigSummaryKeys) {
    if (model.config().contains(key)) config[key] = model.config()[key];
  }
  out["config"] = config;
  out["auxiliary_files"] = model.auxiliary_files();
  out["architecture"] = detect_architecture(model).summary();
  return out;
}

namespace {

// The text of an inspection around its tensor table, which `tensor_table` supplies: from the JSON's
// "tensors" list, or straight from the model.
std::string format_with(const nlohmann::json& inspection, const std::string& tensor_table) {
  const nlohmann::json& total = inspection.at("total");
  const size_t shard_count = inspection.at("shards").size();
  std::ostringstream out;
  out << inspection.at("path").get<std::string>() << ": valid, " << count_text(total.at("tensors"))
      << " tensors, " << count_text(total.at("elements")) << " elements, "
      << human_bytes(total.at("bytes").get<uint64_t>()) << " in " << shard_count
      << (shard_count == 1 ? " shard" : " shards") << "\n\n";
  out << tensor_table;

  std::vector<std::vector<std::string>> rows = {{"dtype", "tensors", "elements", "bytes", ""}};
  for (const auto& [dtype, totals] : inspection.at("dtypes").items()) {
    rows.push_back({dtype, count_text(totals.at("tensors")), count_text(totals.at("elements")),
                    count_text(totals.at("bytes")),
                    human_bytes(totals.at("bytes").get<uint64_t>())});
  }
  rows.push_back({"total", count_text(total.at("tensors")), count_text(total.at("elements")),
                  count_text(total.at("bytes")), human_bytes(total.at("bytes").get<uint64_t>())});
  out << "\n" << table(rows, {false, true, true, true, true});

  rows = {{"shard", "tensors", "bytes", "metadata"}};
  for (const auto& shard : inspection.at("shards")) {
    rows.push_back({shard.at("file").get<std::string>(), count_text(shard.at("tensors")),
                    count_text(shard.at("bytes")), shard.at("metadata").dump()});
  }
  out << "\n" << table(rows, {false, true, true, false});

  if (!inspection.at("config").empty()) {
    rows.clear();
    for (const auto& [key, value] : inspection.at("config").items())
      rows.push_back({key + ":", value.dump()});
    out << "\nconfig:\n" << table(rows, {false, false}, "  ");
  }
  if (!inspection.at("auxiliary_files").empty()) {
    out << "\nauxiliary files:\n";
    for (const auto& file : inspection.at("auxiliary_files"))
      out << "  " << file.get<std::string>() << "\n";
  }
  if (inspection.contains("architecture")) out << "\n" << format_architecture(inspection["architecture"]);
  return out.str();
}

// The tensor table of a model in two passes (column widths, then lines), laid out exactly as
// table() lays out the same rows, without building a row of strings per tensor: a hostile header
// may list a million tensors.
std::string model_tensor_table(const Model& model) {
  std::unordered_map<const SafetensorsFile*, std::string> shard_names;
  for (const auto& shard : model.shards())
    shard_names.emplace(shard.get(), std::filesystem::path(shard->path()).filename().string());
  auto shape_of = [](const TensorInfo& info) {
    std::string text = "[";
    for (size_t i = 0; i < info.shape.size(); ++i) {
      if (i) text += ", ";
      text += std::to_string(info.shape[i]);
    }
    return text + "]";
  };
  size_t width[5] = {4, 5, 5, 5, 5};  // the headings: name, dtype, shape, bytes, shard
  for (const auto& tensor : model.tensors()) {
    const TensorInfo& info = *tensor.info;
    width[0] = std::max(width[0], info.name.size());
    width[1] = std::max(width[1], std::strlen(dtype_name(info.dtype)));
    width[2] = std::max(width[2], shape_of(info).size());
    width[3] = std::max(width[3], std::to_string(info.nbytes()).size());
    width[4] = std::max(width[4], shard_names.at(tensor.shard).size());
  }
  std::string out;
  auto line = [&](const std::string& name, const char* dtype, const std::string& shape, const std::string& bytes,
                  const std::string& shard) {
    const size_t start = out.size();
    out += name;
    out.append(width[0] - name.size() + 2, ' ');
    out += dtype;
    out.append(width[1] - std::strlen(dtype) + 2, ' ');
    out += shape;
    out.append(width[2] - shape.size() + 2, ' ');
    out.append(width[3] - bytes.size(), ' ');  // right-aligned
    out += bytes;
    out += "  ";
    out += shard;
    const size_t end = out.find_last_not_of(' ');
    out.resize(end == std::string::npos || end < start ? start : end + 1);
    out += '\n';
  };
  line("name", "dtype", "shape", "bytes", "shard");
  for (const auto& tensor : model.tensors()) {
    const TensorInfo& info = *tensor.info;
    line(info.name, dtype_name(info.dtype), shape_of(info), std::to_string(info.nbytes()), shard_names.at(tensor.shard));
  }
  return out;
}

}  // namespace

std::string format_inspection(const nlohmann::json& inspection) {
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "bytes", "shard"}};
  for (const auto& t : inspection.at("tensors")) {
    rows.push_back({t.at("name").get<std::string>(), t.at("dtype").get<std::string>(), shape_text(t.at("shape")),
                    count_text(t.at("bytes")), t.at("shard").get<std::string>()});
  }
  return format_with(inspection, table(rows, {false, false, false, true, false}));
}

std::string format_model(const Model& model) {
  return format_with(inspect_model(model, false), model_tensor_table(model));
}

}  // namespace alloy
