// The deterministic, sharded safetensors writer (see alloy/writer.h for the byte layout rules).
//
// All tensors are declared up front, so every file's header and every tensor's offset are known at
// construction: each file is created under a temporary name with its final size, its header is
// written at once, and tensor bytes go straight to their final offsets with pwrite, in whatever
// order (and from whatever thread) the caller produces them. Committing closes every file (checking
// close(), which is where delayed write errors surface), renames the shards into place and writes
// the index last, so a complete-looking index never points at missing shards. Any failure, or
// destruction before commit, removes every temporary and every file already renamed.
#include "alloy/core/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <unordered_map>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // readers refuse larger headers
// Files are addressed with off_t; keep every size well inside it.
constexpr uint64_t kMaxFileBytes = uint64_t{std::numeric_limits<int64_t>::max()} / 2;
constexpr const char* kIndexName = "model.safetensors.index.json";

std::atomic<unsigned> g_writer_counter{0};

std::string io_message(const fs::path& path, const std::string& what, int err) {
  return path.string() + ": " + what + ": " + std::strerror(err);
}

[[noreturn]] void throw_io(const fs::path& path, const std::string& what, int err) {
  throw Error(ErrorCode::kIo, io_message(path, what, err));
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// Writes all of [data, data + size) at `offset`, retrying partial writes and EINTR. Returns 0 on
// success, else the errno value (EIO for a write that makes no progress).
int pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    const ssize_t n = ::pwrite(fd, bytes, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    bytes += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

// The JSON text of a string, or Error naming `what` when it is not valid UTF-8.
std::string json_string(const std::string& text, const std::string& what) {
  try {
    return nlohmann::json(text).dump();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorCode::kInvalidArgument, what + " is not valid UTF-8");
  }
}

// Validates a spec list and returns each tensor's byte size.
std::vector<uint64_t> validate_specs(const std::vector<TensorSpec>& specs) {
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  sizes.reserve(specs.size());
  uint64_t total = 0;
  for (const auto& spec : specs) {
    if (spec.name.empty())
      throw Error(ErrorCode::kEmptyName, "cannot write a tensor with an empty name");
    if (spec.name == "__metadata__") {
      throw Error(ErrorCode::kReservedName, "cannot write a tensor named __metadata__");
    }
    json_string(spec.name, "tensor name '" + spec.name + "'");
    if (!names.insert(spec.name).second) {
      throw Error(ErrorCode::kDuplicateTensor, "tensor '" + spec.name + "' declared twice");
    }
    sizes.push_back(spec.nbytes());
    if (__builtin_add_overflow(total, sizes.back(), &total) || total > kMaxFileBytes) {
      throw Error(ErrorCode::kShapeOverflow,
                  "tensor '" + spec.name + "': the tensors' total byte size overflows");
    }
  }
  return sizes;
}

// Deterministic order within a file: larger dtype alignment first, then name.
void sort_file_order(const std::vector<TensorSpec>& specs, std::vector<size_t>* members) {
  std::sort(members->begin(), members->end(), [&](size_t a, size_t b) {
    const unsigned align_a = dtype_info(specs[a].dtype).alignment;
    const unsigned align_b = dtype_info(specs[b].dtype).alignment;
    if (align_a != align_b) return align_a > align_b;
    return specs[a].name < specs[b].name;
  });
}

// The header of one file: compact JSON, __metadata__ first (keys sorted, "format": "pt" always),
// then tensors in `order` with contiguous offsets from 0 (stored in `begins`), padded with spaces
// to a multiple of 8 bytes.
std::string build_header(const std::vector<TensorSpec>& specs, const std::vector<size_t>& order,
                         const std::vector<uint64_t>& sizes,
                         const std::map<std::string, std::string>& metadata,
                         std::vector<uint64_t>* begins) {
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [key, value] : meta) {
    if (!first) header += ",";
    first = false;
    header += json_string(key, "metadata key '" + key + "'") + ":" +
              json_string(value, "metadata value of '" + key + "'");
  }
  header += "}";
  uint64_t offset = 0;
  for (size_t index : order) {
    const TensorSpec& spec = specs[index];
    header += "," + json_string(spec.name, "tensor name") + ":{\"dtype\":\"" +
              dtype_name(spec.dtype) + "\",\"shape\":[";
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      if (d) header += ",";
      header += std::to_string(spec.shape[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + sizes[index]) + "]}";
    (*begins)[index] = offset;
    offset += sizes[index];
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

// One or more safetensors files whose layout is fixed up front. Owns the temporaries: removed
// (with anything already renamed) unless commit() succeeds.
class FileSetWriter {
 public:
  // `members[f]` lists the tensors of file f (indexes into `specs`), written to `final_paths[f]`.
  FileSetWriter(std::vector<TensorSpec> specs, std::vector<uint64_t> sizes,
                std::vector<std::vector<size_t>> members, const std::vector<fs::path>& final_paths,
                const std::map<std::string, std::string>& metadata)
      : specs_(std::move(specs)), sizes_(std::move(sizes)) {
    file_of_.assign(specs_.size(), 0);
    begin_of_.assign(specs_.size(), 0);
    written_ = std::make_unique<std::atomic<bool>[]>(specs_.size());
    for (size_t i = 0; i < specs_.size(); ++i) {
      index_of_.emplace(specs_[i].name, i);
      written_[i] = false;
    }
    const std::string suffix =
        ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(g_writer_counter++);
    try {
      for (size_t f = 0; f < members.size(); ++f) {
        File& file = files_.emplace_back();
        file.final_path = final_paths[f];
        file.temp_path =
            file.final_path.parent_path() / ("." + file.final_path.filename().string() + suffix);
        sort_file_order(specs_, &members[f]);
        const std::string header = build_header(specs_, members[f], sizes_, metadata, &begin_of_);
        if (header.size() > kMaxHeaderBytes) {
          throw Error(ErrorCode::kHeaderTooLarge,
                      file.final_path.string() + ": header of " + std::to_string(header.size()) +
                          " bytes exceeds the safetensors limit of 100,000,000");
        }
        uint64_t data_bytes = 0;
        for (size_t i : members[f]) {
          file_of_[i] = f;
          data_bytes += sizes_[i];
        }
        file.data_start = 8 + header.size();
        file.fd = ::open(file.temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (file.fd < 0) throw_io(file.temp_path, "cannot create", errno);
        if (::ftruncate(file.fd, static_cast<off_t>(file.data_start + data_bytes)) != 0) {
          throw_io(file.temp_path,
                   "cannot size file to " + std::to_string(file.data_start + data_bytes) + " bytes",
                   errno);
        }
        std::string prefix(8, '\0');
        for (int b = 0; b < 8; ++b)
          prefix[b] = static_cast<char>(uint64_t{header.size()} >> (8 * b));
        prefix += header;
        if (const int err = pwrite_all(file.fd, prefix.data(), prefix.size(), 0)) {
          throw_io(file.temp_path, "cannot write header", err);
        }
      }
    } catch (...) {
      discard();
      throw;
    }
  }

  ~FileSetWriter() {
    if (!committed_) discard();
  }
  FileSetWriter(const FileSetWriter&) = delete;
  FileSetWriter& operator=(const FileSetWriter&) = delete;

  size_t file_count() const { return files_.size(); }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  uint64_t size_of(size_t tensor) const { return sizes_[tensor]; }
  const fs::path& final_path_of(size_t tensor) const { return files_[file_of_[tensor]].final_path; }

  void write(const std::string& name, const void* data, uint64_t nbytes) {
    if (done_)
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written after finish()");
    const auto it = index_of_.find(name);
    if (it == index_of_.end()) {
      throw Error(ErrorCode::kInvalidArgument,
                  "tensor '" + name + "' was not declared to the writer");
    }
    const size_t i = it->second;
    if (nbytes != sizes_[i]) {
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': got " +
                                                   std::to_string(nbytes) + " bytes, declared " +
                                                   std::to_string(sizes_[i]));
    }
    if (data == nullptr && nbytes > 0) {
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': no data");
    }
    if (written_[i].exchange(true))
      throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written twice");
    const File& file = files_[file_of_[i]];
    if (const int err = pwrite_all(file.fd, data, nbytes, file.data_start + begin_of_[i])) {
      written_[i] = false;  // its bytes are incomplete: finish() must not publish the file
      throw_io(file.temp_path, "cannot write tensor '" + name + "'", err);
    }
  }

  // Closes, checks every tensor was written, renames the files into place, then writes
  // `index_text` (if any) to `index_path`. Returns the final file names. On failure nothing is
  // left.
  std::vector<std::string> commit(const std::optional<fs::path>& index_path,
                                  const std::string& index_text) {
    if (done_) throw Error(ErrorCode::kInvalidArgument, "finish() called twice");
    done_ = true;
    std::vector<std::string> names;
    try {
      for (size_t i = 0; i < specs_.size(); ++i) {
        if (!written_[i]) {
          throw Error(ErrorCode::kInvalidArgument, files_[file_of_[i]].final_path.string() +
                                                       ": tensor '" + specs_[i].name +
                                                       "' was declared but never written");
        }
      }
      for (auto& file : files_) {
        const int fd = file.fd;
        file.fd = -1;
        if (::close(fd) != 0) throw_io(file.temp_path, "cannot close", errno);
      }
      for (auto& file : files_) {
        if (::rename(file.temp_path.c_str(), file.final_path.c_str()) != 0) {
          throw_io(file.final_path, "cannot rename into place", errno);
        }
        file.renamed = true;
        names.push_back(file.final_path.filename().string());
      }
      if (index_path) {
        write_file_atomic(*index_path, index_text);
        names.push_back(index_path->filename().string());
      }
    } catch (...) {
      discard();
      throw;
    }
    committed_ = true;
    return names;
  }

 private:
  struct File {
    fs::path temp_path;
    fs::path final_path;
    int fd = -1;
    bool renamed = false;
    uint64_t data_start = 0;
  };

  void discard() {
    done_ = true;
    if (discarded_) return;
    discarded_ = true;
    for (auto& file : files_) {
      if (file.fd >= 0) ::close(file.fd);
      file.fd = -1;
      ::unlink((file.renamed ? file.final_path : file.temp_path).c_str());
    }
  }

  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;
  std::vector<size_t> file_of_;     // tensor -> file index
  std::vector<uint64_t> begin_of_;  // tensor -> offset inside its file's data buffer
  std::unordered_map<std::string, size_t> index_of_;
  std::vector<File> files_;
  std::unique_ptr<std::atomic<bool>[]> written_;
  std::atomic<bool> done_{false};  // commit() started, or the files were discarded
  bool discarded_ = false;
  bool committed_ = false;
};

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t count = 1;
  for (uint64_t d : shape) {
    if (!checked_mul(count, d, &count)) {
      throw Error(ErrorCode::kShapeOverflow, "tensor '" + name + "': element count overflows");
    }
  }
  uint64_t total_bits = 0;
  if (!checked_mul(count, dtype_bits(dtype), &total_bits)) {
    throw Error(ErrorCode::kShapeOverflow, "tensor '" + name + "': byte size overflows");
  }
  if (total_bits % 8 != 0) {
    throw Error(ErrorCode::kSubByteMisaligned, "tensor '" + name + "': " + std::to_string(count) +
                                                   " elements of " + dtype_name(dtype) +
                                                   " do not fill whole bytes");
  }
  return total_bits / 8;
}

struct ShardedWriter::Impl {
  fs::path directory;
  std::unique_ptr<FileSetWriter> files;
};

ShardedWriter::ShardedWriter(const fs::path& directory, std::vector<TensorSpec> specs,
                             uint64_t max_shard_bytes, std::map<std::string, std::string> metadata)
    : impl_(std::make_unique<Impl>()) {
  if (max_shard_bytes == 0) throw Error(ErrorCode::kInvalidArgument, "shard size must be positive");
  std::vector<uint64_t> sizes = validate_specs(specs);

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
    paths.push_back(directory / shard_file_name(f, members.size()));
  impl_->directory = directory;
  impl_->files = std::make_unique<FileSetWriter>(std::move(specs), std::move(sizes),
                                                 std::move(members), paths, metadata);
}

ShardedWriter::~ShardedWriter() = default;

size_t ShardedWriter::shard_count() const {
  return impl_->files->file_count();
}

void ShardedWriter::write(const std::string& name, const void* data, uint64_t nbytes) {
  impl_->files->write(name, data, nbytes);
}

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
  std::vector<uint64_t> sizes = validate_specs(specs);
  std::vector<size_t> all(specs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const fs::path target = path.has_parent_path() ? path : fs::path(".") / path;
  FileSetWriter file(specs, std::move(sizes), {std::move(all)}, {target}, metadata);
  for (size_t i = 0; i < specs.size(); ++i) file.write(specs[i].name, data[i], file.size_of(i));
  file.commit(std::nullopt, "");
}

}  // namespace alloy
