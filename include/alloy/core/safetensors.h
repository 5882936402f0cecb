// alloy/core/safetensors.h: validating, zero-copy reader for the safetensors format.
//
// Byte layout of a safetensors file (https://github.com/huggingface/safetensors):
//
//   offset 0        : u64 little-endian N, the header length in bytes
//   offset 8        : N bytes of UTF-8 JSON, an object:
//                       { "__metadata__": {"k": "v", ...},            (optional, string->string)
//                         "<tensor name>": {"dtype": "BF16",
//                                           "shape": [d0, d1, ...],   (non-negative integers)
//                                           "data_offsets": [begin, end]}, ... }
//                     writers pad the JSON with trailing spaces to a multiple of 8
//   offset 8 + N    : the data buffer; each tensor's bytes are buffer[begin, end), row-major,
//                     little-endian
//
// Validation (each rule has its own ErrorCode; docs/format.md explains each):
//   2 <= N <= 100,000,000 and 8 + N <= file size; JSON is valid UTF-8, an object; each tensor entry
//   has exactly the keys dtype/shape/data_offsets; dtype is one of the spec's 22; shape and offsets
//   are non-negative integers; element count and byte size computed with overflow checks; sub-byte
//   dtypes fill whole bytes; end - begin == byte size; offsets sorted by (begin, end) are contiguous
//   from 0 without holes or overlaps; the buffer ends exactly at the last tensor; no duplicate
//   names, no tensor called "__metadata__", no empty name; __metadata__ is string -> string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <string_view>
#include <vector>

#include "alloy/core/dtype.h"

namespace alloy {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
  uint64_t data_begin = 0;  // offsets relative to the start of the data buffer
  uint64_t data_end = 0;

  uint64_t numel() const;   // product of shape (1 for a scalar []); validated not to overflow
  uint64_t nbytes() const { return data_end - data_begin; }
};

// The two weight file formats alloy reads. A PyTorch zip checkpoint (alloy/core/torch_checkpoint.h)
// is presented through the same header: its tensors' offsets are file offsets (data_start() 0),
// and two tensors may share bytes (tied weights), which safetensors forbids.
enum class WeightsFormat : uint8_t { kSafetensors, kTorchZip };

// The parsed, validated header of one safetensors file (or of a PyTorch checkpoint, see above).
struct SafetensorsHeader {
  WeightsFormat format = WeightsFormat::kSafetensors;
  uint64_t header_bytes = 0;              // N (0 for kTorchZip)
  std::vector<TensorInfo> tensors;        // sorted by data offset (file order)
  std::map<std::string, std::string> metadata;
  // Tensor bytes: the data buffer's length for safetensors, the sum of the tensors' sizes for a
  // checkpoint.
  uint64_t data_bytes() const;
  uint64_t data_start() const { return format == WeightsFormat::kTorchZip ? 0 : 8 + header_bytes; }
  // Index into `tensors` by name, or -1. A linear scan: SafetensorsFile::find is the indexed lookup.
  long find(std::string_view name) const;
};

// Parses and validates a whole safetensors file held in memory (`bytes` is the entire file).
// `label` names the file in error messages. Throws Error on the first defect found.
SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label);

// What fstat said about a file when it was opened: a later difference means it changed.
struct FileIdentity {
  uint64_t device = 0, inode = 0, size = 0, links = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  bool operator==(const FileIdentity&) const = default;
};

// A read-only memory mapping of a file, and the open descriptor it was mapped from (kept, so that
// reads and hashes see the same file however the path changes later).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error(kIo)
  // Opens `path` and checks the open descriptor, not the name: the file it resolves to (through
  // /proc/self/fd) must lie inside `real_dir`, a canonical directory, else Error(kSymlinkEscape).
  // A name swapped for a symlink after this check changes nothing: reads and copies use the
  // descriptor.
  static std::unique_ptr<MappedFile> open_inside(const std::filesystem::path& real_dir,
                                                 const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  const FileIdentity& identity() const { return identity_; }
  // Reads [offset, offset + length) with pread into dst. A file that has become shorter is
  // Error(kInputChanged) naming it (never the SIGBUS a mapping gives); 0 bytes read is fine.
  void read(uint64_t offset, uint64_t length, void* dst) const;
  // Error(kInputChanged) when the file's size, mtime or ctime differ from those at open, or the path
  // names another file now: what was read may not be what the path holds.
  void check_unchanged() const;
  // Copies the file's bytes, read from the descriptor, to a new file `dest` (which must not exist),
  // then check_unchanged(). A file with more than one hard link is refused (kSymlinkEscape): it
  // may be a file from outside the model directory that a link made look like one of its own.
  void copy_to(const std::filesystem::path& dest) const;
  // Tells the kernel the pages of [offset, offset + length) may be dropped from this process's
  // resident set (they are re-read from the file if touched again). Used after a tensor is consumed
  // so that streaming over a model keeps RSS bounded by a few tensors.
  void release(uint64_t offset, uint64_t length) const;
  // Hints that [offset, offset + length) will be read soon.
  void prefetch(uint64_t offset, uint64_t length) const;

 private:
  MappedFile(int fd, const std::string& path);  // takes ownership of fd
  void map(int fd);

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  FileIdentity identity_;
};

// A validated safetensors file (or PyTorch zip checkpoint) with zero-copy access to its tensors.
class SafetensorsFile {
 public:
  // Maps and validates a file of the given format; throws Error.
  explicit SafetensorsFile(const std::string& path, WeightsFormat format = WeightsFormat::kSafetensors);
  // The format a weights file name implies: kTorchZip for *.bin, *.pt and *.pth, else kSafetensors.
  static WeightsFormat format_of(const std::filesystem::path& path);
  WeightsFormat format() const { return header_.format; }
  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // The tensor named `name`, or null; constant time (a hash index built when the file is opened).
  const TensorInfo* find(std::string_view name) const;
  // Its position in tensors(), or -1.
  long index_of(std::string_view name) const;
  // Pointer to the tensor's raw bytes inside the mapping (valid while this object lives).
  const uint8_t* data(const TensorInfo& tensor) const;
  // Copies bytes [offset, offset + length) of the tensor's data into dst with pread: the merge's
  // way in, which turns a file truncated under it into Error(kInputChanged) instead of SIGBUS.
  void read(const TensorInfo& tensor, uint64_t offset, uint64_t length, void* dst) const;
  const MappedFile& file() const { return file_; }
  void release(const TensorInfo& tensor) const;
  void prefetch(const TensorInfo& tensor) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string_view, size_t> index_;  // views of header_'s names (never moves)
};

}  // namespace alloy
