// HashCache and FileHasher with a cache (alloy/core/hash_cache.h): a hit is not read, any change of
// the file's fstat identity is a miss, and a bad entry or an unwritable directory is never an error.
#include "alloy/core/hash_cache.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "alloy/core/evidence.h"
#include "alloy/core/sha256.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::FileHasher;
using alloy::HashCache;
using alloy::test::read_bytes;
using alloy::test::TempDir;
using alloy::test::write_bytes;

constexpr const char* kOtherDigest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// Files in tests are written just before they are hashed: no settling time (see HashCache()).
std::unique_ptr<HashCache> fresh_cache(const fs::path& dir) {
  return std::make_unique<HashCache>(dir, std::chrono::nanoseconds(0));
}

alloy::FileDigest hash_with_cache(const fs::path& dir, const fs::path& file, std::vector<std::string>* notices = nullptr) {
  FileHasher hasher(fresh_cache(dir));
  const alloy::FileDigest digest = hasher.get(file);
  if (notices) *notices = hasher.notices();
  return digest;
}

alloy::FileIdentity identity(const fs::path& file) { return alloy::MappedFile(file.string()).identity(); }

// The one entry file in `dir`.
fs::path only_entry(const fs::path& dir) {
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(dir)) entries.push_back(e.path());
  EXPECT_EQ(entries.size(), 1u);
  return entries.empty() ? fs::path() : entries[0];
}

// Sets the file's mtime to `ns` nanoseconds since 1970 (its ctime becomes now).
void set_mtime_ns(const fs::path& file, int64_t ns) {
  const timespec times[2] = {{0, UTIME_OMIT}, {ns / 1'000'000'000, ns % 1'000'000'000}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
}

class HashCacheTest : public ::testing::Test {
 protected:
  fs::path cache_dir() const { return temp_ / "cache"; }
  fs::path file() const { return temp_ / "model.safetensors"; }
  void SetUp() override { write_bytes(file(), std::string(3 << 20, 'a') + "tail"); }
  TempDir temp_;
};

TEST_F(HashCacheTest, MissStoresThenHitIsTakenWithoutReading) {
  const std::string truth = alloy::sha256_file(file());
  const alloy::FileDigest first = hash_with_cache(cache_dir(), file());
  EXPECT_EQ(first.sha256, truth);
  EXPECT_EQ(first.size, fs::file_size(file()));
  EXPECT_FALSE(first.from_cache);
  const alloy::FileDigest second = hash_with_cache(cache_dir(), file());
  EXPECT_EQ(second.sha256, truth);  // the cached digest is the uncached one
  EXPECT_EQ(second.size, first.size);
  EXPECT_TRUE(second.from_cache);
  // Proof that a hit does not read the file: an entry edited to another digest is believed
  // (which is why the cache is only as trustworthy as its directory).
  const fs::path entry = only_entry(cache_dir());
  std::string text = read_bytes(entry);
  text.replace(text.size() - 65, 64, kOtherDigest);
  write_bytes(entry, text);
  EXPECT_EQ(hash_with_cache(cache_dir(), file()).sha256, kOtherDigest);
}

TEST_F(HashCacheTest, WithoutACacheNothingIsMarked) {
  FileHasher hasher;
  const alloy::FileDigest digest = hasher.get(file());
  EXPECT_EQ(digest.sha256, alloy::sha256_file(file()));
  EXPECT_FALSE(digest.from_cache);
  EXPECT_TRUE(hasher.notices().empty());
}

TEST_F(HashCacheTest, TouchedFileMisses) {
  hash_with_cache(cache_dir(), file());
  ASSERT_TRUE(hash_with_cache(cache_dir(), file()).from_cache);
  set_mtime_ns(file(), identity(file()).mtime_ns + 1'000'000'000);
  const alloy::FileDigest after = hash_with_cache(cache_dir(), file());
  EXPECT_FALSE(after.from_cache);
  EXPECT_EQ(after.sha256, alloy::sha256_file(file()));
  EXPECT_TRUE(hash_with_cache(cache_dir(), file()).from_cache);  // stored again under the new times
}

// The same size and the old mtime restored: only the ctime (which no user can set) tells it apart.
TEST_F(HashCacheTest, RewriteWithTheMtimeRestoredMisses) {
  hash_with_cache(cache_dir(), file());
  const alloy::FileIdentity before = identity(file());
  // Timestamps advance in clock ticks (a few ms): wait for the next one, as any real rewrite would.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  write_bytes(file(), std::string(3 << 20, 'b') + "tail");
  set_mtime_ns(file(), before.mtime_ns);
  const alloy::FileIdentity after = identity(file());
  ASSERT_EQ(after.inode, before.inode);
  ASSERT_EQ(after.size, before.size);
  ASSERT_EQ(after.mtime_ns, before.mtime_ns);
  ASSERT_NE(after.ctime_ns, before.ctime_ns);
  const alloy::FileDigest digest = hash_with_cache(cache_dir(), file());
  EXPECT_FALSE(digest.from_cache);
  EXPECT_EQ(digest.sha256, alloy::sha256_file(file()));
}

// Every damaged entry is a miss (the file is hashed again and the entry rewritten), never an error.
TEST_F(HashCacheTest, CorruptEntriesAreMisses) {
  const std::string truth = alloy::sha256_file(file());
  hash_with_cache(cache_dir(), file());
  const fs::path entry = only_entry(cache_dir());
  const std::string good = read_bytes(entry);
  const std::string line_end = good.substr(good.find(' '));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"truncated", good.substr(0, good.size() - 10)},
      {"no newline", good.substr(0, good.size() - 1)},
      {"two lines", good + good},
      {"other magic", "alloy-hash-cache-v2" + line_end},
      {"other size", [&] {
         std::string t = good;
         const std::string size = " " + std::to_string(fs::file_size(file())) + " ";
         return t.replace(t.find(size), size.size(), " 1 ");
       }()},
      {"uppercase digest", good.substr(0, good.size() - 65) + "ABCDEF" + good.substr(good.size() - 59)},
      {"short digest", good.substr(0, good.size() - 3) + "\n"},
      {"leading zero", [&] {
         std::string t = good;
         return t.insert(t.find(' ') + 1, "0");
       }()},
      {"binary", std::string(100, '\0')},
      {"oversized", good + std::string(1000, ' ')},
  };
  for (const auto& [name, text] : cases) {
    write_bytes(entry, text);
    EXPECT_FALSE(HashCache(cache_dir()).lookup(identity(file()))) << name;
    const alloy::FileDigest digest = hash_with_cache(cache_dir(), file());
    EXPECT_FALSE(digest.from_cache) << name;
    EXPECT_EQ(digest.sha256, truth) << name;
    EXPECT_EQ(read_bytes(entry), good) << name << ": the entry is rewritten";
  }
  // A directory or a symlink where the entry should be: a miss, and a notice when it cannot be replaced.
  fs::remove(entry);
  fs::create_directory(entry);
  std::vector<std::string> notices;
  EXPECT_EQ(hash_with_cache(cache_dir(), file(), &notices).sha256, truth);
  EXPECT_EQ(notices.size(), 1u);
  fs::remove(entry);
  write_bytes(temp_ / "elsewhere", good);
  fs::create_symlink(temp_ / "elsewhere", entry);
  EXPECT_FALSE(HashCache(cache_dir()).lookup(identity(file())));
}

TEST_F(HashCacheTest, UnwritableDirectoryIsANoticeNotAFailure) {
  // A path under a regular file can be neither created nor written, even by root.
  write_bytes(temp_ / "not-a-dir", "x");
  std::vector<std::string> notices;
  const alloy::FileDigest digest = hash_with_cache(temp_ / "not-a-dir" / "cache", file(), &notices);
  EXPECT_EQ(digest.sha256, alloy::sha256_file(file()));
  EXPECT_FALSE(digest.from_cache);
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_NE(notices[0].find("not writable"), std::string::npos) << notices[0];
}

// A file changed less than `settle` ago is not stored: a second write in the same clock tick could
// leave its size and times as they were.
TEST_F(HashCacheTest, FreshFilesAreNotStored) {
  HashCache cache(cache_dir());  // the default settle (2 s); the file was written just now
  cache.store(identity(file()), alloy::sha256_file(file()));
  EXPECT_FALSE(fs::exists(cache_dir()));
  EXPECT_TRUE(cache.notices().empty());
}

TEST_F(HashCacheTest, EntriesOfOtherFilesDoNotMatch) {
  write_bytes(temp_ / "other", std::string(3 << 20, 'a') + "tail");  // same size and bytes, other inode
  hash_with_cache(cache_dir(), file());
  EXPECT_FALSE(hash_with_cache(cache_dir(), temp_ / "other").from_cache);
  EXPECT_TRUE(hash_with_cache(cache_dir(), file()).from_cache);
  EXPECT_TRUE(hash_with_cache(cache_dir(), temp_ / "other").from_cache);
}

}  // namespace
