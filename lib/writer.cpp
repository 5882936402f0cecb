// The deterministic, sharded safetensors writer (see alloy/writer.h for the byte layout rules).
//
// All tensors are declared up front, so every file's header and every tensor's offset are known at
// construction: headers are written immediately and tensor bytes go straight to their final offsets
// with pwrite, in whatever order (and from whatever thread) the caller produces them.
#include "alloy/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "alloy/error.h"
#include "alloy/file_util.h"

namespace alloy {
namespace fs = std::filesystem;
namespace {

std::atomic<unsigned> g_writer_counter{0};

[[noreturn]] void throw_io(const fs::path& path, const std::string& what, int err) {
  throw Error(ErrorCode::kIo, path.string() + ": " + what + ": " + std::strerror(err));
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

void pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset, const fs::path& path) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    const ssize_t n = ::pwrite(fd, bytes, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_io(path, "write failed", n < 0 ? errno : EIO);
    bytes += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// Validates a spec list and returns each tensor's byte size.
std::vector<uint64_t> validate_specs(const std::vector<TensorSpec>& specs) {
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  sizes.reserve(specs.size());
  for (const auto& spec : specs) {
    if (spec.name.empty()) throw Error(ErrorCode::kEmptyName, "cannot write a tensor with an empty name");
    if (spec.name == "__metadata__") {
      throw Error(ErrorCode::kReservedName, "cannot write a tensor named __metadata__");
    }
    if (!names.insert(spec.name).second) {
      throw Error(ErrorCode::kDuplicateTensor, "tensor '" + spec.name + "' declared twice");
    }
    sizes.push_back(spec.nbytes());
  }
  return sizes;
}

// The header of one file: compact JSON, __metadata__ first, then tensors in `order`, padded with
// spaces to a multiple of 8 bytes.
std::string build_header(const std::vector<TensorSpec>& specs, const std::vector<size_t>& order,
                         const std::vector<uint64_t>& sizes,
                         const std::map<std::string, std::string>& metadata,
                         std::vector<uint64_t>* begins) {
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  std::string header = "{\"__metadata__\":" + nlohmann::json(meta).dump();
  uint64_t offset = 0;
  for (size_t index : order) {
    const TensorSpec& spec = specs[index];
    nlohmann::json shape = nlohmann::json::array();
    for (uint64_t d : spec.shape) shape.push_back(d);
    header += "," + nlohmann::json(spec.name).dump() + ":{\"dtype\":\"" + dtype_name(spec.dtype) +
              "\",\"shape\":" + shape.dump() + ",\"data_offsets\":[" + std::to_string(offset) +
              "," + std::to_string(offset + sizes[index]) + "]}";
    (*begins)[index] = offset;
    offset += sizes[index];
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

// Deterministic order within a file: larger dtype alignment first, then name.
std::vector<size_t> file_order(const std::vector<TensorSpec>& specs, std::vector<size_t> members) {
  std::sort(members.begin(), members.end(), [&](size_t a, size_t b) {
    const unsigned align_a = dtype_info(specs[a].dtype).alignment;
    const unsigned align_b = dtype_info(specs[b].dtype).alignment;
    if (align_a != align_b) return align_a > align_b;
    return specs[a].name < specs[b].name;
  });
  return members;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t count = 1;
  for (uint64_t d : shape) {
    if (!checked_mul(count, d, &count)) {
      throw Error(ErrorCode::kShapeOverflow, "tensor '" + name + "': element count overflows");
    }
  }
  const unsigned bits = dtype_bits(dtype);
  uint64_t total_bits = 0;
  if (!checked_mul(count, bits, &total_bits)) {
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
  struct File {
    fs::path temp_path;
    fs::path final_path;
    int fd = -1;
    uint64_t data_start = 0;
  };
  fs::path directory;
  std::vector<TensorSpec> specs;
  std::vector<uint64_t> sizes;
  std::vector<size_t> file_of;       // tensor -> file index
  std::vector<uint64_t> begin_of;    // tensor -> offset inside its file's data buffer
  std::unordered_map<std::string, size_t> index_of;
  std::vector<File> files;
  std::unique_ptr<std::atomic<bool>[]> written;
  bool finished = false;

  void cleanup() {
    for (auto& file : files) {
      if (file.fd >= 0) ::close(file.fd);
      file.fd = -1;
      if (!file.temp_path.empty()) ::unlink(file.temp_path.c_str());
    }
  }
};

ShardedWriter::ShardedWriter(const fs::path& directory, std::vector<TensorSpec> specs,
                             uint64_t max_shard_bytes, std::map<std::string, std::string> metadata)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.directory = directory;
  s.specs = std::move(specs);
  s.sizes = validate_specs(s.specs);
  if (max_shard_bytes == 0) throw Error(ErrorCode::kInvalidArgument, "shard size must be positive");

  // Greedy shard assignment in declaration order.
  std::vector<std::vector<size_t>> members(1);
  uint64_t current = 0;
  for (size_t i = 0; i < s.specs.size(); ++i) {
    if (!members.back().empty() && (current + s.sizes[i] > max_shard_bytes ||
                                    current + s.sizes[i] < current)) {
      members.emplace_back();
      current = 0;
    }
    members.back().push_back(i);
    current += s.sizes[i];
  }

  s.file_of.assign(s.specs.size(), 0);
  s.begin_of.assign(s.specs.size(), 0);
  s.written = std::make_unique<std::atomic<bool>[]>(s.specs.size());
  for (size_t i = 0; i < s.specs.size(); ++i) {
    s.index_of[s.specs[i].name] = i;
    s.written[i] = false;
  }
  const unsigned serial = g_writer_counter++;
  try {
    for (size_t f = 0; f < members.size(); ++f) {
      Impl::File file;
      file.final_path = directory / shard_file_name(f, members.size());
      file.temp_path = directory / ("." + file.final_path.filename().string() + ".tmp-" +
                                    std::to_string(::getpid()) + "-" + std::to_string(serial));
      const std::vector<size_t> order = file_order(s.specs, members[f]);
      const std::string header = build_header(s.specs, order, s.sizes, metadata, &s.begin_of);
      uint64_t data_bytes = 0;
      for (size_t i : order) {
        s.file_of[i] = f;
        data_bytes += s.sizes[i];
      }
      file.fd = ::open(file.temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (file.fd < 0) throw_io(file.temp_path, "cannot create", errno);
      s.files.push_back(file);
      Impl::File& added = s.files.back();
      added.data_start = 8 + header.size();
      if (::ftruncate(added.fd, static_cast<off_t>(added.data_start + data_bytes)) != 0) {
        throw_io(added.temp_path, "cannot size file", errno);
      }
      uint8_t length[8];
      const uint64_t n = header.size();
      for (int b = 0; b < 8; ++b) length[b] = static_cast<uint8_t>(n >> (8 * b));
      pwrite_all(added.fd, length, 8, 0, added.temp_path);
      pwrite_all(added.fd, header.data(), header.size(), 8, added.temp_path);
    }
  } catch (...) {
    s.cleanup();
    throw;
  }
}

ShardedWriter::~ShardedWriter() {
  if (impl_ && !impl_->finished) impl_->cleanup();
}

size_t ShardedWriter::shard_count() const { return impl_->files.size(); }

void ShardedWriter::write(const std::string& name, const void* data, uint64_t nbytes) {
  Impl& s = *impl_;
  const auto it = s.index_of.find(name);
  if (it == s.index_of.end()) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' was not declared to the writer");
  }
  const size_t i = it->second;
  if (nbytes != s.sizes[i]) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': got " + std::to_string(nbytes) +
                                                 " bytes, declared " + std::to_string(s.sizes[i]));
  }
  if (s.written[i].exchange(true)) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written twice");
  }
  const Impl::File& file = s.files[s.file_of[i]];
  pwrite_all(file.fd, data, nbytes, file.data_start + s.begin_of[i], file.temp_path);
}

std::vector<std::string> ShardedWriter::finish() {
  Impl& s = *impl_;
  for (size_t i = 0; i < s.specs.size(); ++i) {
    if (!s.written[i]) {
      s.cleanup();
      s.finished = true;
      throw Error(ErrorCode::kInternal, "tensor '" + s.specs[i].name + "' was declared but never written");
    }
  }
  std::vector<std::string> names;
  try {
    for (auto& file : s.files) {
      const int fd = file.fd;
      file.fd = -1;
      if (::close(fd) != 0) throw_io(file.temp_path, "cannot close", errno);
    }
    if (s.files.size() > 1) {
      nlohmann::json weight_map = nlohmann::json::object();
      uint64_t total = 0;
      for (size_t i = 0; i < s.specs.size(); ++i) {
        weight_map[s.specs[i].name] = s.files[s.file_of[i]].final_path.filename().string();
        total += s.sizes[i];
      }
      nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      write_file_atomic(s.directory / "model.safetensors.index.json", index.dump(2) + "\n");
    }
    for (auto& file : s.files) {
      if (::rename(file.temp_path.c_str(), file.final_path.c_str()) != 0) {
        throw_io(file.final_path, "cannot rename into place", errno);
      }
      file.temp_path.clear();
      names.push_back(file.final_path.filename().string());
    }
  } catch (...) {
    s.cleanup();
    s.finished = true;
    std::error_code ec;
    fs::remove(s.directory / "model.safetensors.index.json", ec);
    throw;
  }
  if (s.files.size() > 1) names.push_back("model.safetensors.index.json");
  s.finished = true;
  return names;
}

void write_safetensors_file(const fs::path& path, const std::vector<TensorSpec>& specs,
                            const std::vector<const void*>& data,
                            const std::map<std::string, std::string>& metadata) {
  if (data.size() != specs.size()) {
    throw Error(ErrorCode::kInvalidArgument, path.string() + ": tensor count and data count differ");
  }
  // One shard in a staging directory beside the target, then renamed onto the requested name.
  fs::path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  StagingDirectory staging(parent / ("." + path.filename().string() + ".parts"), true);
  ShardedWriter writer(staging.path(), specs, std::numeric_limits<uint64_t>::max(), metadata);
  for (size_t i = 0; i < specs.size(); ++i) writer.write(specs[i].name, data[i], specs[i].nbytes());
  writer.finish();
  const fs::path written = staging.path() / "model.safetensors";
  if (::rename(written.c_str(), path.c_str()) != 0) throw_io(path, "cannot rename into place", errno);
}

}  // namespace alloy
