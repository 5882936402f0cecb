// alloy/core/evidence.h: what the tools record so that their outputs can be cited: the sha256 and size
// of a model's files (computed on background threads), the Hugging Face Hub id and revision of a
// model folder inside a Hub cache, and the time in UTC.
//
// The merge (alloy_provenance.json) and the assay (the "audit" record of assay.json) cite the exact
// bytes they read. Hashing a model's shards takes seconds per gigabyte, so it runs beside the work
// that reads the same files: one thread per file, each reading with pread into one reused 1 MiB
// window. A shard or tokenizer file is hashed through the descriptor the model opened it with (so
// the hash is of the file that was read, whatever the path names later); other files by path.
// With a HashCache (alloy/core/hash_cache.h, opt-in) a file whose open descriptor's fstat matches
// a stored entry is not read: its digest comes from the cache, and says so (FileDigest::from_cache).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "alloy/core/model.h"
#include "alloy/core/safetensors.h"

namespace alloy {

struct FileDigest {
  std::string sha256;  // lowercase hex (the Hugging Face Hub's LFS oid of a weight file)
  uint64_t size = 0;   // bytes hashed
  bool from_cache = false;  // taken from the HashCache, not computed from the bytes in this run
};

class HashCache;

class FileHasher {
 public:
  // `cache`: where digests are looked up before hashing and stored after (null: none).
  explicit FileHasher(std::unique_ptr<HashCache> cache = nullptr);
  FileHasher(const FileHasher&) = delete;
  FileHasher& operator=(const FileHasher&) = delete;
  ~FileHasher();  // cancels the hashes still running and waits for them

  // Starts hashing `path` (once: a second start of the same path does nothing). `file`: the open
  // descriptor to read, or null to open `path`.
  void start(const std::filesystem::path& path, const MappedFile* file = nullptr);
  // Starts every file of `model` (model_files()), shards and tokenizer files through its descriptors.
  void start_model(const Model& model);
  // The file's digest; waits for it (starts it if needed). Rethrows the hash's Error (kIo).
  FileDigest get(const std::filesystem::path& path);
  // The cache's notices (e.g. it could not be written), for the tools to print; none without one.
  std::vector<std::string> notices() const;

 private:
  FileDigest hash(const std::filesystem::path& path, const MappedFile* file) const;

  std::unique_ptr<HashCache> cache_;  // destroyed after the hashes: ~FileHasher waits for them
  std::atomic<bool> cancelled_{false};
  std::map<std::filesystem::path, std::shared_future<FileDigest>> hashes_;
};

// The files of a model that the tools read or carry: its shards, then (for a directory)
// config.json and model.safetensors.index.json when present, then the auxiliary files.
std::vector<std::filesystem::path> model_files(const Model& model);

// The Hub id ("org/name") and revision of a model folder inside a Hugging Face cache
// (.../models--org--name/snapshots/REVISION[/...]), from the path as given and, failing that, from
// its absolute form; empty strings when the path is not in such a cache.
struct HubReference {
  std::string id;
  std::string revision;
};
HubReference hub_reference(const std::filesystem::path& model_path);

// The current time in UTC as RFC 3339 ("2026-12-02T13:45:07Z"); when SOURCE_DATE_EPOCH is set (the
// reproducible-builds convention: seconds since 1970), that time instead, so reruns can be compared
// byte for byte (scripts/output-digest.sh sets it).
std::string utc_timestamp();

}  // namespace alloy
