// The deterministic, sharded safetensors writer (see alloy/core/writer.h for the byte layout
// rules): assigns tensors to shards and writes the index. The layout of each file is in
// safetensors_layout.cpp, the staging and publishing of the files in file_set_writer.cpp.
#include "alloy/core/writer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "writer_internal.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::FileSetWriter;

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";
}  // namespace

struct ShardedWriter::Impl {
  fs::path directory;
  std::unique_ptr<FileSetWriter> files;
};

ShardedWriter::ShardedWriter(const fs::path& directory, std::vector<TensorSpec> specs,
                             uint64_t max_shard_bytes, std::map<std::string, std::string> metadata,
                             bool hash_files)
    : impl_(std::make_unique<Impl>()) {
  if (max_shard_bytes == 0) throw Error(ErrorCode::kInvalidArgument, "shard size must be positive");
  std::vector<uint64_t> sizes = detail::validate_specs(specs);

  // Greedy shard assignment in declaration order; a tensor larger than the budget gets its own.
  std::vector<std::vector<size_t>> members(1);
  uint64_t current = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!members.back().empty() && sizes[i] > max_shard_bytes - current) {
      members.emplace_back();
      current = 0;
    }
    members.back().push_back(i);
    current += std::min(sizes[i], max_shard_bytes);
  }
  std::vector<fs::path> paths;
  for (size_t f = 0; f < members.size(); ++f)
    paths.push_back(directory / detail::shard_file_name(f, members.size()));
  impl_->directory = directory;
  impl_->files = std::make_unique<FileSetWriter>(std::move(specs), std::move(sizes),
                                                 std::move(members), paths, metadata, hash_files);
}

ShardedWriter::~ShardedWriter() = default;

size_t ShardedWriter::shard_count() const {
  return impl_->files->file_count();
}

void ShardedWriter::write(const std::string& name, const void* data, uint64_t nbytes) {
  impl_->files->write(name, data, nbytes);
}

void ShardedWriter::write_part(const std::string& name, uint64_t offset, const void* data, uint64_t nbytes) {
  impl_->files->write_part(name, offset, data, nbytes);
}

std::vector<size_t> ShardedWriter::write_order() const { return impl_->files->write_order(); }

const std::vector<WrittenFile>& ShardedWriter::written_files() const { return impl_->files->written_files(); }

std::vector<std::string> ShardedWriter::finish() {
  FileSetWriter& files = *impl_->files;
  if (files.file_count() <= 1) return files.commit(std::nullopt, "");
  // The index, as Hugging Face writes it: indent 2, sorted keys (nlohmann objects are sorted).
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t i = 0; i < files.specs().size(); ++i) {
    weight_map[files.specs()[i].name] = files.final_path_of(i).filename().string();
    total += files.size_of(i);
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return files.commit(impl_->directory / kIndexName, index.dump(2) + "\n");
}

void write_safetensors_file(const fs::path& path, const std::vector<TensorSpec>& specs,
                            const std::vector<const void*>& data,
                            const std::map<std::string, std::string>& metadata) {
  if (data.size() != specs.size()) {
    throw Error(ErrorCode::kInvalidArgument,
                path.string() + ": " + std::to_string(specs.size()) + " tensors declared but " +
                    std::to_string(data.size()) + " data pointers given");
  }
  std::vector<uint64_t> sizes = detail::validate_specs(specs);
  std::vector<size_t> all(specs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const fs::path target = path.has_parent_path() ? path : fs::path(".") / path;
  FileSetWriter file(specs, std::move(sizes), {std::move(all)}, {target}, metadata);
  for (size_t i = 0; i < specs.size(); ++i) file.write(specs[i].name, data[i], file.size_of(i));
  file.commit(std::nullopt, "");
}

}  // namespace alloy
