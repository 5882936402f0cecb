// alloy/core/hash_cache.h: an opt-in cache of input files' sha256, keyed by what fstat says about the
// open descriptor (alloy-merge / alloy-assay --hash-cache DIR, or ALLOY_HASH_CACHE=DIR).
//
// Hashing a model costs about 0.6 core-seconds per gigabyte, more than the merge itself at the I/O
// floor; models are merged and assayed over and over unchanged. An entry is used only when the
// file's device, inode, size, mtime and ctime (both in nanoseconds) all equal the ones stored. No
// user can set a ctime: every write, truncate, chmod or rename of a file sets it to the current
// time, so a file rewritten (even with its mtime restored) no longer matches. A file changed after
// it was opened is caught as without the cache: the tools re-check the open descriptor's fstat at
// the end of the run (MappedFile::check_unchanged).
//
// Trust model: the cache is exactly as trustworthy as DIR. Whoever can write to DIR can make a
// merge's provenance cite any digest for any file, so DIR must be writable only by the people whose
// provenance it is (never a shared /tmp directory). Outputs say which digests came from the cache
// ("sha256_source": "cache"), and without the option nothing is read from or written to any cache.
//
// On-disk layout: one entry per file (inode) in DIR, named "DEV-INO" (lowercase hex) and holding one
// line of ASCII:
//   alloy-hash-cache-v1 DEV INO SIZE MTIME_NS CTIME_NS SHA256\n
// (decimal integers, 64 lowercase hex digits). An entry is written to a temporary name and renamed,
// so concurrent runs never see half an entry; the last writer wins. Anything else (a missing,
// truncated, oversized or corrupt entry, or one whose fields differ from the file's) is a miss: the
// file is hashed and the entry rewritten. A cache that cannot be written is a notice, never an error.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/safetensors.h"

namespace alloy {

class HashCache {
 public:
  // `settle`: a file whose ctime is less than this before the moment of storing is not stored.
  // Timestamps advance in clock ticks (milliseconds, up to seconds on some filesystems), so a file
  // written twice within one tick could keep its size and times; once its ctime is older than a tick,
  // any later write gives it a new one. Tests that store files they just wrote pass zero.
  explicit HashCache(std::filesystem::path dir, std::chrono::nanoseconds settle = std::chrono::seconds(2));

  const std::filesystem::path& dir() const { return dir_; }
  // The sha256 (lowercase hex) stored for exactly this identity, or nullopt (a miss).
  std::optional<std::string> lookup(const FileIdentity& identity) const;
  // Stores the digest of the file with this identity. Failures become notices (one per kind).
  void store(const FileIdentity& identity, const std::string& sha256);
  // What went wrong while storing (e.g. "DIR is not writable: ..."), for the tools to print.
  std::vector<std::string> notices() const;

 private:
  std::filesystem::path entry_path(const FileIdentity& identity) const;
  void notice(const std::string& text);

  std::filesystem::path dir_;
  std::chrono::nanoseconds settle_;
  mutable std::mutex mutex_;  // guards notices_ (the hasher stores from several threads)
  std::vector<std::string> notices_;
};

// A cache at `dir`, or null when `dir` is empty (the option not given).
std::unique_ptr<HashCache> hash_cache_at(const std::filesystem::path& dir);

}  // namespace alloy
