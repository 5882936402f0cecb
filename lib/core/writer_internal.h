// The safetensors writer's parts: the byte layout of a file and the set of files being written.
// Internal to lib/core; alloy/core/writer.h is the public face.
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "alloy/core/sha256.h"
#include "alloy/core/writer.h"

namespace alloy::detail {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // readers refuse larger headers

// safetensors_layout.cpp: validates a spec list (names non-empty, not reserved, valid UTF-8,
// unique; sizes without overflow) and returns each tensor's byte size.
std::vector<uint64_t> validate_specs(const std::vector<TensorSpec>& specs);

// safetensors_layout.cpp: puts `members` (indexes into `specs`) into the file's deterministic
// order (larger dtype alignment first, then name) and returns the file's header: compact JSON,
// __metadata__ first (keys sorted, "format": "pt" always), then the tensors with contiguous
// offsets from 0 (stored in `begins`), padded with spaces to a multiple of 8 bytes.
std::string file_header(const std::vector<TensorSpec>& specs, std::vector<size_t>* members,
                        const std::vector<uint64_t>& sizes, const std::map<std::string, std::string>& metadata,
                        std::vector<uint64_t>* begins);

// "model.safetensors" for a single file, else "model-00001-of-00003.safetensors".
std::string shard_file_name(size_t index, size_t count);

// file_set_writer.cpp: one or more safetensors files whose layout is fixed up front. Each file is
// created under a temporary name with its final size and header; tensors are written straight to
// their offsets, from any thread. Owns the temporaries: removed (with anything already renamed)
// unless commit() succeeds. With `hash_files`, each file's SHA-256 is fed from the bytes written,
// in the file's byte order (see alloy/core/writer.h).
class FileSetWriter {
 public:
  // `members[f]` lists the tensors of file f (indexes into `specs`), written to `final_paths[f]`.
  FileSetWriter(std::vector<TensorSpec> specs, std::vector<uint64_t> sizes,
                std::vector<std::vector<size_t>> members, const std::vector<std::filesystem::path>& final_paths,
                const std::map<std::string, std::string>& metadata, bool hash_files = false);
  ~FileSetWriter();
  FileSetWriter(const FileSetWriter&) = delete;
  FileSetWriter& operator=(const FileSetWriter&) = delete;

  size_t file_count() const { return files_.size(); }
  const std::vector<TensorSpec>& specs() const { return specs_; }
  uint64_t size_of(size_t tensor) const { return sizes_[tensor]; }
  const std::filesystem::path& final_path_of(size_t tensor) const { return files_[file_of_[tensor]].final_path; }

  // The tensors in the order of their bytes on disk (file by file, each in its file order).
  std::vector<size_t> write_order() const;
  // After commit(): the files written, shards then index, with their sizes and (hashing) sha256.
  const std::vector<WrittenFile>& written_files() const { return written_files_; }

  // Writes a declared tensor's bytes; each tensor exactly once, with its declared size.
  void write(const std::string& name, const void* data, uint64_t nbytes);
  // Writes bytes [offset, offset + nbytes) of a declared tensor: its parts in order from offset 0
  // (each offset is the end of the previous part), one thread per tensor; the tensor counts as
  // written when its last byte is.
  void write_part(const std::string& name, uint64_t offset, const void* data, uint64_t nbytes);

  // Closes, checks every tensor was written, renames the files into place, then writes
  // `index_text` (if any) to `index_path`. Returns the final file names. On failure nothing is
  // left.
  std::vector<std::string> commit(const std::optional<std::filesystem::path>& index_path,
                                  const std::string& index_text);

 private:
  struct File {
    std::filesystem::path temp_path;
    std::filesystem::path final_path;
    int fd = -1;
    bool renamed = false;
    uint64_t data_start = 0;
    std::vector<size_t> members;  // in file order
    // Hashing: the bytes hashed so far are the header, members[0, next_hashed) and the first
    // `part_hashed` bytes of members[next_hashed].
    std::unique_ptr<std::mutex> hash_mutex = std::make_unique<std::mutex>();
    std::unique_ptr<Sha256> hash;
    size_t next_hashed = 0;
    uint64_t part_hashed = 0;
  };

  // Creates file f's temporary at its final size with `header` written.
  void create_file(File& file, const std::string& header, uint64_t data_bytes);
  void check_all_written() const;
  // Feeds file f's hash with tensor i's bytes [offset, offset + nbytes) if they come next (from
  // `data`; any earlier bytes of i not hashed yet are read back from the file first), then with
  // every tensor already on disk that now comes next (read back from the file).
  void hash_in_order(File& file, size_t i, uint64_t offset, const void* data, uint64_t nbytes);
  // Hashes bytes [from, to) of tensor i, read back from the file.
  void hash_from_file(const File& file, size_t i, uint64_t from, uint64_t to, Sha256* hash) const;
  void close_and_rename(std::vector<std::string>* names);
  void discard();

  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;
  std::vector<size_t> file_of_;     // tensor -> file index
  std::vector<uint64_t> begin_of_;  // tensor -> offset inside its file's data buffer
  std::unordered_map<std::string, size_t> index_of_;
  std::vector<File> files_;
  std::unique_ptr<std::atomic<bool>[]> written_;
  std::unique_ptr<std::atomic<bool>[]> stored_;  // its bytes are on disk (write() succeeded)
  std::unique_ptr<uint64_t[]> filled_;           // bytes written so far (write_part)
  std::vector<WrittenFile> written_files_;
  std::atomic<bool> done_{false};  // commit() started, or the files were discarded
  bool discarded_ = false;
  bool committed_ = false;
};

}  // namespace alloy::detail
