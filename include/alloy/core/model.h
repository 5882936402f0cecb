// alloy/core/model.h: a Hugging Face model directory (or a lone .safetensors or .bin file).
//
// A directory holds either model.safetensors, or shards listed by model.safetensors.index.json
// (or, when it has neither, pytorch_model.bin or shards listed by pytorch_model.bin.index.json:
// PyTorch checkpoints read by alloy/core/torch_checkpoint.h, never unpickled)
// ({"metadata": {...}, "weight_map": {"tensor": "shard file"}}), plus config.json and the tokenizer
// and generation files. The index is untrusted: shard names that are absolute, contain "..", or are
// symlinks leaving the directory are refused; a missing shard, a tensor the index names but the
// shard lacks, a tensor in a shard but not in the index, and a tensor stored in two shards are all
// refused (distinct ErrorCodes, see alloy/core/error.h).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "alloy/core/safetensors.h"

namespace alloy {

// The validated content of model.safetensors.index.json.
struct ShardIndex {
  std::map<std::string, std::string> weight_map;   // tensor name -> shard file name
  nlohmann::json metadata = nlohmann::json::object();
  std::vector<std::string> shard_names() const;    // distinct, sorted
};

// Parses and validates an index's text without touching the filesystem: a JSON object whose
// "weight_map" is an object of tensor name -> shard file name (each name listed once, each shard
// name relative, without "..", backslashes or NUL) and whose optional "metadata" is an object.
// `label` names the file in errors (kIndexNotJson, kIndexBadShardName).
ShardIndex parse_shard_index(std::string_view json_text, const std::string& label);

// One tensor of a model: which shard holds it and its header entry.
struct ModelTensor {
  const SafetensorsFile* shard = nullptr;
  const TensorInfo* info = nullptr;
  const std::string& name() const { return info->name; }
  const uint8_t* data() const { return shard->data(*info); }
};

struct ModelOpenOptions {
  // A sharded directory whose index does not account for every *.safetensors file beside it (an
  // unlisted shard, or a model.safetensors next to the index), or whose metadata.total_size
  // disagrees with the shards, is ambiguous: a loader that globs *.safetensors sees other weights
  // than one that follows the index. Refused (kIndexUnlistedShard, kIndexTotalSize) unless this is
  // set; then the index's weights are used and warnings() says what was set aside.
  bool allow_unindexed_shards = false;
};

class Model {
 public:
  // Opens a model directory or a single .safetensors file; validates every shard and the index.
  static Model open(const std::filesystem::path& path, const ModelOpenOptions& options = {});

  const std::filesystem::path& path() const { return path_; }  // as given
  bool is_directory() const { return is_directory_; }
  // Tensors in a deterministic order: by shard (index order), then file order within the shard.
  const std::vector<ModelTensor>& tensors() const { return tensors_; }
  const ModelTensor* find(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  // config.json, or an empty object when absent (a lone file, or a directory without one).
  const nlohmann::json& config() const { return config_; }
  bool has_config() const { return has_config_; }
  // Files beside the weights that travel with a model: tokenizer*, special_tokens_map.json,
  // vocab/merges files, generation_config.json, chat_template*, etc. (names relative to path()).
  const std::vector<std::string>& auxiliary_files() const { return auxiliary_files_; }
  // Each auxiliary file, opened (and checked to lie inside the model directory) by open(), in the
  // order of auxiliary_files(). Copy and hash through these, never by name: the name may have been
  // swapped for a symlink since (MappedFile::open_inside, copy_to).
  const MappedFile& auxiliary(size_t i) const { return *auxiliary_opened_[i]; }
  uint64_t total_bytes() const;  // sum of tensor byte sizes
  // What open() accepted only because an option allowed it, one sentence each (tools print them).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::filesystem::path path_;
  bool is_directory_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<ModelTensor> tensors_;
  // name -> index into tensors_; the views point into the shards' headers, which never move.
  std::unordered_map<std::string_view, size_t> by_name_;
  nlohmann::json config_ = nlohmann::json::object();
  bool has_config_ = false;
  std::vector<std::string> auxiliary_files_;
  std::vector<std::unique_ptr<MappedFile>> auxiliary_opened_;
  std::vector<std::string> warnings_;
};

}  // namespace alloy
