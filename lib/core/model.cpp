// Model directories: a lone file, model.safetensors, or shards listed by an untrusted index.
//
// Every file alloy reads from (or later copies out of) a model directory must resolve inside it:
// a shard that is a symlink leaving the directory is kIndexShardSymlinkEscape, any other file
// (model.safetensors, the index, config.json, tokenizer files) kSymlinkEscape. Copying a tokenizer
// that is really a link to ~/.ssh/id_rsa into a merged model would publish it.
#include "alloy/core/model.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include "alloy/core/error.h"
#include "alloy/core/hub_cache.h"
#include "reader_text.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::quote_name;
using nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
// PyTorch checkpoints (alloy/core/torch_checkpoint.h), read when there are no safetensors weights,
// as transformers prefers safetensors too.
constexpr const char* kTorchIndexName = "pytorch_model.bin.index.json";
constexpr const char* kTorchSingleName = "pytorch_model.bin";
// Index and config files are small; the cap keeps a hostile one from exhausting memory.
constexpr uint64_t kMaxJsonFileBytes = 100'000'000;
// Real configs nest a few levels (text_config.rope_scaling...); the cap bounds the DOM's cost.
constexpr int kMaxJsonDepth = 64;

// Files that travel with a model's weights (tokenizer, generation and chat-template files).
constexpr const char* kAuxiliaryNames[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
};

bool is_inside(const fs::path& real_dir, const fs::path& real) {
  const auto rel = real.lexically_relative(real_dir);
  return !rel.empty() && *rel.begin() != ".." && !rel.is_absolute();
}

// Whether something is at `path` (a dangling symlink counts as nothing), refusing with
// `escape_code` a path that resolves outside `real_dir` (the canonical model directory).
bool exists_inside(const fs::path& real_dir, const fs::path& path, ErrorCode escape_code,
                   const std::string& what) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return false;
  const fs::path real = fs::weakly_canonical(path, ec);
  if (ec) throw Error(ErrorCode::kIo, what + ": cannot resolve: " + ec.message());
  if (!is_inside(real_dir, real)) {
    throw Error(escape_code,
                what + " resolves outside the model directory (to " + real.string() + ")");
  }
  return fs::exists(real, ec);
}

// Reads a small JSON text file; `code` is the refusal for a file that is not a regular file or is
// too large (opening a FIFO would block, a huge file would be read whole).
std::string read_json_file(const fs::path& path, ErrorCode code) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(code, path.string() + ": not a regular file");
  const auto size = fs::file_size(path, ec);
  if (ec) throw Error(ErrorCode::kIo, path.string() + ": " + ec.message());
  if (size > kMaxJsonFileBytes) {
    throw Error(code,
                path.string() + ": " + std::to_string(size) + " bytes is more than 100,000,000");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The callback-parser depth event for a container start.
bool opens_container(json::parse_event_t event) {
  return event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
}

json parse_config(const fs::path& path) {
  const std::string text = read_json_file(path, ErrorCode::kBadConfig);
  if (detail::contains_nul(text))
    throw Error(ErrorCode::kBadConfig, path.string() + ": contains a NUL byte");
  json config;
  try {
    config = json::parse(text, [&](int depth, json::parse_event_t event, json&) {
      if (opens_container(event) && depth > kMaxJsonDepth) {
        throw Error(ErrorCode::kBadConfig, path.string() + ": nests too deeply");
      }
      return true;
    });
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kBadConfig, path.string() + ": not valid JSON: " + e.what());
  }
  if (!config.is_object())
    throw Error(ErrorCode::kBadConfig, path.string() + ": not a JSON object");
  return config;
}

void check_shard_name(const std::string& name, const std::string& label) {
  auto refuse = [&](const char* why) {
    throw Error(ErrorCode::kIndexBadShardName,
                label + ": shard name " + quote_name(name) + " " + why);
  };
  if (name.empty()) refuse("is empty");
  if (name.find('\0') != std::string::npos) refuse("contains a NUL byte");
  if (name.find('\\') != std::string::npos) refuse("contains a backslash");
  if (name.front() == '/') refuse("is absolute");
  for (const auto& part : fs::path(name)) {
    if (part == "..") refuse("leaves the model directory ('..')");
  }
}

// Opens every shard the index names, then cross-checks the index against what they hold.
std::vector<std::unique_ptr<SafetensorsFile>> open_shards(const fs::path& dir,
                                                          const fs::path& real_dir,
                                                          const fs::path& index_path, const ShardIndex& index) {
  const std::string label = index_path.string();
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  for (const auto& shard_name : index.shard_names()) {
    const std::string what = label + ": shard " + quote_name(shard_name);
    if (!exists_inside(real_dir, dir / shard_name, ErrorCode::kIndexShardSymlinkEscape, what)) {
      throw Error(ErrorCode::kIndexMissingShard, what + " does not exist");
    }
    shards.push_back(std::make_unique<SafetensorsFile>((dir / shard_name).string(),
                                                       SafetensorsFile::format_of(shard_name)));
  }

  std::unordered_map<std::string, const SafetensorsFile*> holder;
  for (const auto& shard : shards) {
    for (const auto& tensor : shard->tensors()) {
      const auto [it, inserted] = holder.emplace(tensor.name, shard.get());
      if (!inserted) {
        throw Error(ErrorCode::kIndexTensorInTwoShards,
                    label + ": tensor " + quote_name(tensor.name) + " is stored in both " +
                        it->second->path() + " and " + shard->path());
      }
    }
  }
  for (const auto& [tensor, shard_name] : index.weight_map) {
    const auto it = holder.find(tensor);
    if (it == holder.end() || it->second->path() != (dir / shard_name).string()) {
      throw Error(ErrorCode::kIndexTensorMissing, label + ": tensor " + quote_name(tensor) +
                                                      " is mapped to " + quote_name(shard_name) +
                                                      ", which does not contain it");
    }
  }
  // Every tensor held is in weight_map with its holder (checked above) unless the index omits it.
  // (The checks of what lies beside the index are in check_unindexed, once the shards are open.)
  if (holder.size() != index.weight_map.size()) {
    for (const auto& shard : shards) {
      for (const auto& tensor : shard->tensors()) {
        if (!index.weight_map.count(tensor.name)) {
          throw Error(ErrorCode::kIndexTensorUnlisted,
                      label + ": tensor " + quote_name(tensor.name) + " in " + shard->path() +
                          " is not listed in the index");
        }
      }
    }
  }
  return shards;
}

// Whether a file beside an index is a weights file a loader might glob: *.safetensors beside a
// safetensors index; pytorch_model*.bin beside pytorch_model.bin.index.json (other *.bin files,
// training_args.bin say, are no weights).
bool is_weights_file(const fs::path& file, bool torch_index) {
  const std::string name = file.filename().string();
  if (!torch_index) return file.extension() == ".safetensors";
  return name.starts_with("pytorch_model") && file.extension() == ".bin";
}

// The orphan-shard family: weights files beside the index that it does not name, and a
// metadata.total_size that is not what the shards hold. Either means two loaders can see two
// models in one directory; refused unless allowed, then reported in `warnings`.
void check_unindexed(const fs::path& dir, const fs::path& index_path, const ShardIndex& index,
                     const std::vector<std::unique_ptr<SafetensorsFile>>& shards, const ModelOpenOptions& options,
                     std::vector<std::string>* warnings) {
  const std::string label = index_path.string();
  const std::vector<std::string> listed = index.shard_names();
  std::vector<std::string> unlisted;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_weights_file(entry.path(), index_path.filename() == kTorchIndexName) &&
        !std::binary_search(listed.begin(), listed.end(), name)) {
      unlisted.push_back(name);
    }
  }
  std::sort(unlisted.begin(), unlisted.end());
  auto refuse_or_warn = [&](ErrorCode code, const std::string& message) {
    if (!options.allow_unindexed_shards) {
      throw Error(code, message + " (--allow-unindexed-shards uses the index's weights and says so)");
    }
    warnings->push_back(message + "; using the weights the index names");
  };
  for (const auto& name : unlisted) {
    refuse_or_warn(ErrorCode::kIndexUnlistedShard,
                   label + ": " + quote_name(name) + " lies beside the index but is not one of its shards: a loader "
                   "that globs weights files would see other weights than one that follows the index");
  }
  if (const auto total = index.metadata.find("total_size");
      total != index.metadata.end() && total->is_number_unsigned()) {
    uint64_t held = 0;
    for (const auto& shard : shards) {
      for (const auto& tensor : shard->tensors()) held += tensor.nbytes();
    }
    if (total->get<uint64_t>() != held) {
      refuse_or_warn(ErrorCode::kIndexTotalSize, label + ": metadata.total_size is " +
                                                     std::to_string(total->get<uint64_t>()) +
                                                     " but the shards hold " + std::to_string(held) + " tensor bytes");
    }
  }
}

}  // namespace

std::vector<std::string> ShardIndex::shard_names() const {
  std::set<std::string> names;
  for (const auto& [tensor, shard] : weight_map) names.insert(shard);
  return {names.begin(), names.end()};
}

ShardIndex parse_shard_index(std::string_view text, const std::string& label) {
  auto refuse = [&](const std::string& why) {
    throw Error(ErrorCode::kIndexNotJson, label + ": " + why);
  };
  // nlohmann keeps the last of two equal keys without a word, so duplicates are caught while
  // parsing: at the top level ("weight_map" twice would hide the first map) and in weight_map (a
  // tensor mapped to two shards).
  std::set<std::string> top_keys, tensor_names;
  bool in_weight_map = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (opens_container(event) && depth > kMaxJsonDepth) refuse("index nests too deeply");
    if (event != json::parse_event_t::key) return true;
    const std::string& key = parsed.get_ref<const std::string&>();
    if (depth == 1) {
      if (!top_keys.insert(key).second) refuse("key " + quote_name(key) + " appears twice");
      in_weight_map = key == "weight_map";
    } else if (depth == 2 && in_weight_map && !tensor_names.insert(key).second) {
      refuse("tensor " + quote_name(key) + " listed twice in weight_map");
    }
    return true;
  };
  if (detail::contains_nul(text)) refuse("contains a NUL byte");
  json root;
  try {
    root = json::parse(text.begin(), text.end(), callback, true);
  } catch (const json::exception& e) {
    refuse(std::string("not valid JSON: ") + e.what());
  }
  if (!root.is_object()) refuse("index is not a JSON object");
  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object())
    refuse("index has no weight_map object");
  ShardIndex index;
  if (const auto metadata = root.find("metadata"); metadata != root.end()) {
    if (!metadata->is_object()) refuse("index metadata is not an object");
    index.metadata = *metadata;
  }
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (tensor.empty()) refuse("weight_map has an empty tensor name");
    if (!shard.is_string())
      refuse("weight_map entry for " + quote_name(tensor) + " is not a string");
    check_shard_name(shard.get<std::string>(), label);
    index.weight_map[tensor] = shard.get<std::string>();
  }
  return index;
}

Model Model::open(const fs::path& path, const ModelOpenOptions& options) {
  Model model;
  model.path_ = path;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::is_regular_file(status)) {
    model.shards_.push_back(std::make_unique<SafetensorsFile>(path.string(), SafetensorsFile::format_of(path)));
  } else if (fs::is_directory(status)) {
    model.is_directory_ = true;
    // A Hub cache snapshot's files are links into its model folder's blobs/: that folder is the
    // boundary then (alloy/core/hub_cache.h).
    const fs::path real_dir = containment_root(fs::canonical(path, ec));
    if (ec) throw Error(ErrorCode::kIo, path.string() + ": cannot resolve: " + ec.message());
    auto exists = [&](const fs::path& file) {
      return exists_inside(real_dir, file, ErrorCode::kSymlinkEscape, file.string());
    };
    // With both an index and model.safetensors, the index wins (as transformers does); the single
    // file is then not read at all.
    const auto open_index = [&](const fs::path& index_path) {
      const ShardIndex index =
          parse_shard_index(read_json_file(index_path, ErrorCode::kIndexNotJson), index_path.string());
      model.shards_ = open_shards(path, real_dir, index_path, index);
      check_unindexed(path, index_path, index, model.shards_, options, &model.warnings_);
    };
    if (exists(path / kIndexName)) {
      open_index(path / kIndexName);
    } else if (exists(path / kSingleName)) {
      model.shards_.push_back(std::make_unique<SafetensorsFile>((path / kSingleName).string()));
    } else if (exists(path / kTorchIndexName)) {
      open_index(path / kTorchIndexName);
    } else if (exists(path / kTorchSingleName)) {
      model.shards_.push_back(
          std::make_unique<SafetensorsFile>((path / kTorchSingleName).string(), WeightsFormat::kTorchZip));
    } else {
      throw Error(ErrorCode::kNotAModel,
                  path.string() + ": no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                                  "pytorch_model.bin.index.json in this directory");
    }
    if (exists(path / "config.json")) {
      model.config_ = parse_config(path / "config.json");
      model.has_config_ = true;
    }
    for (const char* name : kAuxiliaryNames) {
      // Only regular files: a FIFO would hang whoever copies it.
      if (exists(path / name) && fs::is_regular_file(path / name, ec)) {
        model.auxiliary_opened_.push_back(MappedFile::open_inside(real_dir, path / name));
        model.auxiliary_files_.push_back(name);
      }
    }
  } else if (fs::exists(status)) {
    throw Error(ErrorCode::kNotAModel, path.string() + ": not a regular file or directory");
  } else {
    throw Error(ErrorCode::kNotAModel, path.string() + ": no such file or directory");
  }

  // Names are unique: within a file by the parser, across shards by open_shards.
  for (const auto& shard : model.shards_) {
    for (const auto& tensor : shard->tensors()) model.tensors_.push_back({shard.get(), &tensor});
  }
  model.by_name_.reserve(model.tensors_.size());
  for (size_t i = 0; i < model.tensors_.size(); ++i) model.by_name_.emplace(model.tensors_[i].name(), i);
  return model;
}

const ModelTensor* Model::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

uint64_t Model::total_bytes() const {
  uint64_t total = 0;
  for (const auto& tensor : tensors_) total += tensor.info->nbytes();
  return total;
}

}  // namespace alloy
