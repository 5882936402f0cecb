// Writing a set of safetensors files whose layout is fixed up front (see writer_internal.h).
//
// Tensor bytes go straight to their final offsets with pwrite, in whatever order (and from
// whatever thread) the caller produces them. Committing closes every file (checking close(), which
// is where delayed write errors surface), renames the shards into place and writes the index last,
// so a complete-looking index never points at missing shards. Any failure, or destruction before
// commit, removes every temporary and every file already renamed.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "io_util.h"
#include "writer_internal.h"

namespace alloy::detail {
namespace fs = std::filesystem;

FileSetWriter::FileSetWriter(std::vector<TensorSpec> specs, std::vector<uint64_t> sizes,
                             std::vector<std::vector<size_t>> members, const std::vector<fs::path>& final_paths,
                             const std::map<std::string, std::string>& metadata, bool hash_files)
    : specs_(std::move(specs)), sizes_(std::move(sizes)) {
  file_of_.assign(specs_.size(), 0);
  begin_of_.assign(specs_.size(), 0);
  written_ = std::make_unique<std::atomic<bool>[]>(specs_.size());
  stored_ = std::make_unique<std::atomic<bool>[]>(specs_.size());
  filled_ = std::make_unique<uint64_t[]>(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) {
    index_of_.emplace(specs_[i].name, i);
    written_[i] = false;
    stored_[i] = false;
    filled_[i] = 0;
  }
  try {
    for (size_t f = 0; f < members.size(); ++f) {
      File& file = files_.emplace_back();
      file.final_path = final_paths[f];
      file.temp_path = temp_sibling(file.final_path);
      if (hash_files) file.hash = std::make_unique<Sha256>();
      const std::string header = file_header(specs_, &members[f], sizes_, metadata, &begin_of_);
      file.members = members[f];
      if (header.size() > kMaxHeaderBytes) {
        throw Error(ErrorCode::kHeaderTooLarge, file.final_path.string() + ": header of " +
                                                    std::to_string(header.size()) +
                                                    " bytes exceeds the safetensors limit of 100,000,000");
      }
      uint64_t data_bytes = 0;
      for (size_t i : members[f]) {
        file_of_[i] = f;
        data_bytes += sizes_[i];
      }
      create_file(file, header, data_bytes);
    }
  } catch (...) {
    discard();
    throw;
  }
}

FileSetWriter::~FileSetWriter() {
  if (!committed_) discard();
}

void FileSetWriter::create_file(File& file, const std::string& header, uint64_t data_bytes) {
  file.data_start = 8 + header.size();
  file.fd = ::open(file.temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (file.fd < 0) throw_io(file.temp_path, "cannot create", errno);
  if (::ftruncate(file.fd, static_cast<off_t>(file.data_start + data_bytes)) != 0) {
    throw_io(file.temp_path, "cannot size file to " + std::to_string(file.data_start + data_bytes) + " bytes",
             errno);
  }
  // The 8-byte little-endian header length, then the header.
  std::string prefix(8, '\0');
  for (int b = 0; b < 8; ++b) prefix[b] = static_cast<char>(uint64_t{header.size()} >> (8 * b));
  prefix += header;
  if (const int err = pwrite_all(file.fd, prefix.data(), prefix.size(), 0)) {
    throw_io(file.temp_path, "cannot write header", err);
  }
  if (file.hash) file.hash->update(prefix.data(), prefix.size());
}

std::vector<size_t> FileSetWriter::write_order() const {
  std::vector<size_t> order;
  order.reserve(specs_.size());
  for (const File& file : files_) order.insert(order.end(), file.members.begin(), file.members.end());
  return order;
}

void FileSetWriter::hash_in_order(File& file, size_t i, uint64_t offset, const void* data, uint64_t nbytes) {
  const std::lock_guard<std::mutex> lock(*file.hash_mutex);
  if (file.next_hashed < file.members.size() && file.members[file.next_hashed] == i) {
    // Earlier parts written before i's turn came are on disk.
    if (file.part_hashed < offset) {
      hash_from_file(file, i, file.part_hashed, offset, file.hash.get());
      file.part_hashed = offset;
    }
    if (file.part_hashed == offset) {
      file.hash->update(data, nbytes);
      file.part_hashed += nbytes;
    }
    if (file.part_hashed == sizes_[i]) {
      ++file.next_hashed;
      file.part_hashed = 0;
    }
  }
  // Tensors written before their turn: their bytes are on disk, read them back in order.
  while (file.next_hashed < file.members.size() && stored_[file.members[file.next_hashed]]) {
    const size_t next = file.members[file.next_hashed];
    hash_from_file(file, next, file.part_hashed, sizes_[next], file.hash.get());
    ++file.next_hashed;
    file.part_hashed = 0;
  }
}

void FileSetWriter::hash_from_file(const File& file, size_t i, uint64_t from, uint64_t to, Sha256* hash) const {
  constexpr uint64_t kWindow = uint64_t{1} << 20;
  std::vector<uint8_t> window(static_cast<size_t>(std::min<uint64_t>(kWindow, to - from)));
  for (uint64_t done = from; done < to;) {
    const uint64_t want = std::min<uint64_t>(kWindow, to - done);
    const ssize_t got = ::pread(file.fd, window.data(), want, static_cast<off_t>(file.data_start + begin_of_[i] + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw_io(file.temp_path, "cannot read back tensor '" + specs_[i].name + "' to hash it",
                           got < 0 ? errno : EIO);
    hash->update(window.data(), static_cast<size_t>(got));
    done += static_cast<uint64_t>(got);
  }
}

void FileSetWriter::write(const std::string& name, const void* data, uint64_t nbytes) {
  if (done_) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written after finish()");
  const auto it = index_of_.find(name);
  if (it != index_of_.end() && nbytes != sizes_[it->second]) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': got " + std::to_string(nbytes) +
                                                 " bytes, declared " + std::to_string(sizes_[it->second]));
  }
  write_part(name, 0, data, nbytes);
}

void FileSetWriter::write_part(const std::string& name, uint64_t offset, const void* data, uint64_t nbytes) {
  if (done_) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written after finish()");
  const auto it = index_of_.find(name);
  if (it == index_of_.end()) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' was not declared to the writer");
  }
  const size_t i = it->second;
  if (offset > sizes_[i] || nbytes > sizes_[i] - offset) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': bytes [" + std::to_string(offset) + ", " +
                                                 std::to_string(offset) + " + " + std::to_string(nbytes) +
                                                 ") exceed its declared " + std::to_string(sizes_[i]));
  }
  if (data == nullptr && nbytes > 0) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': no data");
  if (offset == 0) {
    if (written_[i].exchange(true)) throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "' written twice");
  } else if (!written_[i] || stored_[i] || filled_[i] != offset) {
    throw Error(ErrorCode::kInvalidArgument, "tensor '" + name + "': part at byte " + std::to_string(offset) +
                                                 " out of order (" + std::to_string(filled_[i]) + " bytes written)");
  }
  File& file = files_[file_of_[i]];
  if (const int err = pwrite_all(file.fd, data, nbytes, file.data_start + begin_of_[i] + offset)) {
    written_[i] = false;  // its bytes are incomplete: finish() must not publish the file
    throw_io(file.temp_path, "cannot write tensor '" + name + "'", err);
  }
  filled_[i] = offset + nbytes;
  if (filled_[i] == sizes_[i]) stored_[i] = true;
  if (file.hash) hash_in_order(file, i, offset, data, nbytes);
}

void FileSetWriter::check_all_written() const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (!written_[i]) {
      throw Error(ErrorCode::kInvalidArgument, files_[file_of_[i]].final_path.string() + ": tensor '" +
                                                   specs_[i].name + "' was declared but never written");
    }
  }
}

void FileSetWriter::close_and_rename(std::vector<std::string>* names) {
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
    names->push_back(file.final_path.filename().string());
    WrittenFile written{names->back(), file.data_start, ""};
    for (size_t i : file.members) written.size += sizes_[i];
    if (file.hash) written.sha256 = file.hash->finish_hex();
    written_files_.push_back(written);
  }
}

std::vector<std::string> FileSetWriter::commit(const std::optional<fs::path>& index_path,
                                               const std::string& index_text) {
  if (done_) throw Error(ErrorCode::kInvalidArgument, "finish() called twice");
  done_ = true;
  std::vector<std::string> names;
  try {
    check_all_written();
    for (const File& file : files_) {
      if (file.hash && file.next_hashed != file.members.size()) {
        throw Error(ErrorCode::kIo, file.temp_path.string() + ": internal error: " +
                                        std::to_string(file.members.size() - file.next_hashed) +
                                        " tensors written but not hashed");
      }
    }
    close_and_rename(&names);
    if (index_path) {
      write_file_atomic(*index_path, index_text);
      names.push_back(index_path->filename().string());
      const bool hashing = !files_.empty() && files_[0].hash;
      written_files_.push_back({names.back(), index_text.size(),
                                hashing ? sha256_hex(index_text.data(), index_text.size()) : ""});
    }
  } catch (...) {
    discard();
    throw;
  }
  committed_ = true;
  return names;
}

void FileSetWriter::discard() {
  done_ = true;
  if (discarded_) return;
  discarded_ = true;
  for (auto& file : files_) {
    if (file.fd >= 0) ::close(file.fd);
    file.fd = -1;
    ::unlink((file.renamed ? file.final_path : file.temp_path).c_str());
  }
}

}  // namespace alloy::detail
