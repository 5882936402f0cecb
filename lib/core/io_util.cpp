#include "io_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "alloy/core/error.h"

namespace alloy::detail {

namespace {
std::atomic<unsigned> g_temp_counter{0};
}  // namespace

void throw_io(const std::filesystem::path& path, const std::string& what, int err) {
  throw Error(ErrorCode::kIo, path.string() + ": " + what + ": " + std::strerror(err));
}

namespace {

// The host name as it may appear in a file name: at most 32 of [A-Za-z0-9.], others as '_'.
std::string host_tag() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "host";
  std::string tag;
  for (const char* c = host; *c != '\0' && tag.size() < 32; ++c) {
    const bool plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.';
    tag += plain ? *c : '_';
  }
  return tag;
}

}  // namespace

std::string short_name(const std::string& name) {
  if (name.size() <= 96) return name;
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return name.substr(0, 64) + "~" + hex;
}

std::string temp_prefix(const std::filesystem::path& final_path, const std::string& tag) {
  static const std::string host = host_tag();
  std::string prefix = ".";
  prefix += short_name(final_path.filename().string());
  prefix += tag;
  prefix += ".alloy-tmp-";
  prefix += host;
  prefix += "-";
  return prefix;
}

std::filesystem::path temp_sibling(const std::filesystem::path& final_path, const std::string& tag) {
  return final_path.parent_path() / (temp_prefix(final_path, tag) + std::to_string(::getpid()) + "-" +
                                     std::to_string(g_temp_counter++));
}

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

}  // namespace alloy::detail
