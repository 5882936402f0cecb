// HashCache: input files' sha256 by fstat identity, one small entry file each (alloy/core/hash_cache.h).
#include "alloy/core/hash_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <sstream>

namespace alloy {
namespace fs = std::filesystem;
namespace {

constexpr const char* kMagic = "alloy-hash-cache-v1";
// A valid entry is about 150 bytes; anything longer is not one of ours and is not read further.
constexpr size_t kMaxEntry = 512;

std::string entry_line(const FileIdentity& id, const std::string& sha256) {
  std::ostringstream line;
  line << kMagic << ' ' << id.device << ' ' << id.inode << ' ' << id.size << ' ' << id.mtime_ns << ' '
       << id.ctime_ns << ' ' << sha256 << '\n';
  return line.str();
}

bool is_sha256_hex(const std::string& text) {
  if (text.size() != 64) return false;
  for (const char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The whole entry, or "" when it cannot be read or is too long to be one.
std::string read_entry(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return "";
  std::string text(kMaxEntry + 1, '\0');
  size_t used = 0;
  while (used < text.size()) {
    const ssize_t n = ::read(fd, text.data() + used, text.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    used += static_cast<size_t>(n);
  }
  ::close(fd);
  if (used > kMaxEntry) return "";
  text.resize(used);
  return text;
}

// The digest an entry holds for `id`: exactly "MAGIC DEV INO SIZE MTIME CTIME SHA\n", every
// number equal to the identity's, else nullopt. Written by entry_line, so the expected line is
// rebuilt and compared byte for byte: no partial parse can accept a malformed entry.
std::optional<std::string> parse_entry(const std::string& text, const FileIdentity& id) {
  if (text.size() < 65 || text.back() != '\n') return std::nullopt;
  const std::string sha256 = text.substr(text.size() - 65, 64);
  if (!is_sha256_hex(sha256) || text != entry_line(id, sha256)) return std::nullopt;
  return sha256;
}

int64_t now_ns() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// A name no other writer uses at the same time: this process, and a counter.
std::string temp_suffix() {
  static std::atomic<uint64_t> counter{0};
  return ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

bool write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

HashCache::HashCache(fs::path dir, std::chrono::nanoseconds settle) : dir_(std::move(dir)), settle_(settle) {}

fs::path HashCache::entry_path(const FileIdentity& identity) const {
  std::ostringstream name;
  name << std::hex << identity.device << '-' << identity.inode;
  return dir_ / name.str();
}

std::optional<std::string> HashCache::lookup(const FileIdentity& identity) const {
  return parse_entry(read_entry(entry_path(identity)), identity);
}

void HashCache::store(const FileIdentity& identity, const std::string& sha256) {
  if (!is_sha256_hex(sha256)) return;
  if (identity.ctime_ns > now_ns() - settle_.count()) return;  // too fresh to tell a rewrite apart
  std::error_code ec;
  fs::create_directories(dir_, ec);
  const fs::path entry = entry_path(identity);
  const fs::path temp = entry.string() + temp_suffix();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    notice("the hash cache " + dir_.string() + " is not writable (" + std::strerror(errno) +
           "): digests are computed and not stored");
    return;
  }
  const bool written = write_all(fd, entry_line(identity, sha256));
  const int saved = errno;
  ::close(fd);
  if (!written || ::rename(temp.c_str(), entry.c_str()) != 0) {
    const std::string why = std::strerror(written ? errno : saved);
    ::unlink(temp.c_str());
    notice("the hash cache " + dir_.string() + " could not store an entry (" + why + ")");
  }
}

std::unique_ptr<HashCache> hash_cache_at(const fs::path& dir) {
  return dir.empty() ? nullptr : std::make_unique<HashCache>(dir);
}

std::vector<std::string> HashCache::notices() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return notices_;
}

void HashCache::notice(const std::string& text) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& seen : notices_) {
    if (seen == text) return;
  }
  notices_.push_back(text);
}

}  // namespace alloy
