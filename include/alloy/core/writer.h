// alloy/core/writer.h: deterministic safetensors writer with sharding.
//
// Byte-for-byte deterministic output:
//  - within a file, tensors are ordered by dtype alignment (largest first), then by name;
//  - the header JSON is compact, keys in that same order with "__metadata__" first, padded with
//    spaces to a multiple of 8; "__metadata__" always contains "format": "pt";
//  - shards are filled in the order tensors were declared, a new shard starting when adding a
//    tensor would exceed the byte budget (a tensor larger than the budget gets a shard of its own);
//  - one shard is written as model.safetensors with no index; several are written as
//    model-00001-of-0000N.safetensors plus model.safetensors.index.json with metadata.total_size
//    and a sorted weight_map.
// Every file is written under a temporary name in the same directory (".NAME.tmp-PID-N") and
// renamed into place only when complete, the index last; on any failure, or when a ShardedWriter is
// destroyed without finish(), the temporaries and any file already renamed are removed. Errors are
// alloy::Error: kIo (naming the file, with the errno text) for create/size/write/close/rename
// failures; kEmptyName, kReservedName, kDuplicateTensor, kShapeOverflow, kSubByteMisaligned for bad
// specs; kInvalidArgument (naming the tensor) for misuse of write() and finish().
//
// With hashing on, each file's SHA-256 is computed from the bytes as they are written, never by
// reading the file back: the header when the file is created, then each tensor's bytes as write()
// receives them in the file's byte order (write_order() gives that order; a tensor written early is
// held back and hashed, from the file, when the bytes before it have been hashed).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "alloy/core/dtype.h"

namespace alloy {

// Parses a decimal byte size as mergekit's --out-shard-size does: a whole number with an optional
// suffix K, M, B or G, T (powers of 1000; "5B" = 5,000,000,000 bytes, "500M" = 500,000,000), or a
// plain byte count. Throws Error(kInvalidArgument) naming the text; zero and overflow are refused.
uint64_t parse_byte_size(const std::string& text);

// A file written by ShardedWriter::finish(): its name (relative to the directory), size and, when
// hashing was on, the SHA-256 of its bytes (lowercase hex; "" otherwise).
struct WrittenFile {
  std::string name;
  uint64_t size = 0;
  std::string sha256;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
  uint64_t nbytes() const;  // overflow-checked
};

// Writes one safetensors file from tensors held in memory (data[i] has specs[i].nbytes() bytes).
void write_safetensors_file(const std::filesystem::path& path, const std::vector<TensorSpec>& specs,
                            const std::vector<const void*>& data,
                            const std::map<std::string, std::string>& metadata = {});

// Streaming, sharded writer for a model's weights into an existing directory. All tensors are
// declared up front (so every file's layout is known), then their bytes are supplied in any order
// with write(); each is copied to its final offset with pwrite. Threads may call write()
// concurrently for different tensors. finish() writes headers and the index and renames each file
// into place; if finish() is never called the temporaries are removed by the destructor.
class ShardedWriter {
 public:
  ShardedWriter(const std::filesystem::path& directory, std::vector<TensorSpec> specs,
                uint64_t max_shard_bytes, std::map<std::string, std::string> metadata = {},
                bool hash_files = false);
  ~ShardedWriter();
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;

  // Throws Error naming the tensor when it was not declared, nbytes differs from its declared size,
  // it was already written, or the write failed (then it counts as not written).
  void write(const std::string& name, const void* data, uint64_t nbytes);
  // Writes a tensor in parts: bytes [offset, offset + nbytes), the parts in order from offset 0
  // (each starts where the previous ended), all from one thread at a time; the tensor counts as
  // written when its last part is in. With hashing, parts of the tensor whose turn it is in the
  // file are hashed as they come. Throws as write() does, and when a part is out of order or
  // past the declared size.
  void write_part(const std::string& name, uint64_t offset, const void* data, uint64_t nbytes);
  // Closes the files (checking close()), renames them into place, then writes the index. Throws if
  // any declared tensor was not written, or on an I/O error, leaving nothing behind. Returns the
  // final file names (shards then index), relative to the directory. Call at most once.
  std::vector<std::string> finish();
  size_t shard_count() const;
  // The declared tensors (indexes into the specs) in the order of their bytes on disk: the first
  // file's tensors in their file order, then the next file's. Writing in this order lets the
  // hashes be computed from the bytes written alone.
  std::vector<size_t> write_order() const;
  // After finish(): every file written (shards then index) with its size and sha256.
  const std::vector<WrittenFile>& written_files() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace alloy
