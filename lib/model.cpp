// Model directories: single file, model.safetensors, or shards with an untrusted index.
#include "alloy/model.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include "alloy/error.h"

namespace alloy {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// Files that travel with a model's weights (tokenizer, generation and chat-template files).
constexpr const char* kAuxiliaryNames[] = {
    "tokenizer.json",        "tokenizer_config.json", "tokenizer.model",    "special_tokens_map.json",
    "added_tokens.json",     "vocab.json",            "vocab.txt",          "merges.txt",
    "spiece.model",          "generation_config.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json",
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void check_shard_name(const std::string& name, const std::string& label) {
  auto refuse = [&](const char* why) {
    throw Error(ErrorCode::kIndexBadShardName, label + ": shard name '" + name + "' " + why);
  };
  if (name.empty()) refuse("is empty");
  if (name.find('\0') != std::string::npos) refuse("contains a NUL byte");
  if (name.find('\\') != std::string::npos) refuse("contains a backslash");
  if (name.front() == '/') refuse("is absolute");
  const fs::path path(name);
  for (const auto& part : path) {
    if (part == "..") refuse("leaves the model directory ('..')");
  }
}

bool is_inside(const fs::path& dir, const fs::path& path) {
  const auto rel = path.lexically_relative(dir);
  return !rel.empty() && *rel.begin() != ".." && !rel.is_absolute();
}

}  // namespace

std::vector<std::string> ShardIndex::shard_names() const {
  std::set<std::string> names;
  for (const auto& [tensor, shard] : weight_map) names.insert(shard);
  return {names.begin(), names.end()};
}

ShardIndex parse_shard_index(std::string_view text, const std::string& label) {
  auto refuse = [&](const std::string& why) { throw Error(ErrorCode::kIndexNotJson, label + ": " + why); };
  json root;
  std::set<std::string> tensor_names;
  // Depth 2 keys are the tensor names of weight_map; duplicates would be silently merged.
  bool in_weight_map = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth > 16) {
      throw Error(ErrorCode::kIndexNotJson, label + ": index nests too deeply");
    }
    if (event == json::parse_event_t::key) {
      if (depth == 1) in_weight_map = parsed.get<std::string>() == "weight_map";
      if (depth == 2 && in_weight_map && !tensor_names.insert(parsed.get<std::string>()).second) {
        throw Error(ErrorCode::kIndexNotJson,
                    label + ": tensor '" + parsed.get<std::string>() + "' listed twice in weight_map");
      }
    }
    return true;
  };
  try {
    root = json::parse(text.begin(), text.end(), callback, true);
  } catch (const json::exception& e) {
    refuse(std::string("not valid JSON: ") + e.what());
  }
  if (!root.is_object()) refuse("index is not a JSON object");
  if (!root.contains("weight_map") || !root["weight_map"].is_object()) {
    refuse("index has no weight_map object");
  }
  ShardIndex index;
  if (root.contains("metadata")) {
    if (!root["metadata"].is_object()) refuse("index metadata is not an object");
    index.metadata = root["metadata"];
  }
  for (const auto& [tensor, shard] : root["weight_map"].items()) {
    if (!shard.is_string()) refuse("weight_map entry for '" + tensor + "' is not a string");
    if (tensor.empty()) refuse("weight_map has an empty tensor name");
    check_shard_name(shard.get<std::string>(), label);
    index.weight_map[tensor] = shard.get<std::string>();
  }
  return index;
}

Model Model::open(const fs::path& path) {
  Model model;
  model.path_ = path;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) {
    throw Error(ErrorCode::kNotAModel, path.string() + ": no such file or directory");
  }
  if (fs::is_regular_file(status)) {
    model.shards_.push_back(std::make_unique<SafetensorsFile>(path.string()));
  } else if (fs::is_directory(status)) {
    model.is_directory_ = true;
    const fs::path index_path = path / kIndexName;
    if (fs::exists(index_path)) {
      const ShardIndex index = parse_shard_index(read_file(index_path), index_path.string());
      const fs::path real_dir = fs::canonical(path);
      for (const auto& shard_name : index.shard_names()) {
        const fs::path shard_path = path / shard_name;
        if (!fs::exists(fs::symlink_status(shard_path))) {
          throw Error(ErrorCode::kIndexMissingShard,
                      index_path.string() + ": shard '" + shard_name + "' does not exist");
        }
        const fs::path real = fs::weakly_canonical(shard_path, ec);
        if (ec || !is_inside(real_dir, real)) {
          throw Error(ErrorCode::kIndexShardSymlinkEscape,
                      index_path.string() + ": shard '" + shard_name + "' resolves outside the model directory");
        }
        if (!fs::exists(real)) {
          throw Error(ErrorCode::kIndexMissingShard,
                      index_path.string() + ": shard '" + shard_name + "' does not exist");
        }
        model.shards_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
      }
      // Cross-check the index against what the shards really hold.
      std::unordered_map<std::string, const SafetensorsFile*> holder;
      for (const auto& shard : model.shards_) {
        for (const auto& tensor : shard->tensors()) {
          auto [it, inserted] = holder.emplace(tensor.name, shard.get());
          if (!inserted) {
            throw Error(ErrorCode::kIndexTensorInTwoShards,
                        index_path.string() + ": tensor '" + tensor.name + "' is stored in both " +
                            it->second->path() + " and " + shard->path());
          }
        }
      }
      for (const auto& [tensor, shard_name] : index.weight_map) {
        const auto it = holder.find(tensor);
        const std::string expected = (path / shard_name).string();
        if (it == holder.end() || it->second->path() != expected) {
          throw Error(ErrorCode::kIndexTensorMissing,
                      index_path.string() + ": tensor '" + tensor + "' is mapped to " + shard_name +
                          ", which does not contain it");
        }
      }
      for (const auto& [tensor, shard] : holder) {
        if (!index.weight_map.count(tensor)) {
          throw Error(ErrorCode::kIndexTensorUnlisted,
                      index_path.string() + ": tensor '" + tensor + "' in " + shard->path() +
                          " is not listed in the index");
        }
      }
    } else if (fs::exists(path / kSingleName)) {
      model.shards_.push_back(std::make_unique<SafetensorsFile>((path / kSingleName).string()));
    } else {
      throw Error(ErrorCode::kNotAModel,
                  path.string() + ": no model.safetensors or model.safetensors.index.json in this directory");
    }
    const fs::path config_path = path / "config.json";
    if (fs::exists(config_path)) {
      try {
        model.config_ = json::parse(read_file(config_path));
      } catch (const json::exception& e) {
        throw Error(ErrorCode::kBadConfig, config_path.string() + ": not valid JSON: " + e.what());
      }
      if (!model.config_.is_object()) {
        throw Error(ErrorCode::kBadConfig, config_path.string() + ": not a JSON object");
      }
      model.has_config_ = true;
    }
    for (const char* name : kAuxiliaryNames) {
      if (fs::is_regular_file(path / name)) model.auxiliary_files_.push_back(name);
    }
  } else {
    throw Error(ErrorCode::kNotAModel, path.string() + ": not a file or directory");
  }

  for (const auto& shard : model.shards_) {
    for (const auto& tensor : shard->tensors()) model.tensors_.push_back({shard.get(), &tensor});
  }
  model.by_name_.reserve(model.tensors_.size());
  for (size_t i = 0; i < model.tensors_.size(); ++i) {
    model.by_name_.emplace_back(model.tensors_[i].name(), i);
  }
  std::sort(model.by_name_.begin(), model.by_name_.end());
  for (size_t i = 1; i < model.by_name_.size(); ++i) {
    if (model.by_name_[i].first == model.by_name_[i - 1].first) {
      throw Error(ErrorCode::kDuplicateTensor,
                  path.string() + ": tensor '" + model.by_name_[i].first + "' appears twice");
    }
  }
  return model;
}

const ModelTensor* Model::find(std::string_view name) const {
  const auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                                   [](const auto& entry, std::string_view n) { return entry.first < n; });
  if (it == by_name_.end() || it->first != name) return nullptr;
  return &tensors_[it->second];
}

uint64_t Model::total_bytes() const {
  uint64_t total = 0;
  for (const auto& tensor : tensors_) total += tensor.info->nbytes();
  return total;
}

}  // namespace alloy
