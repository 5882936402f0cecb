#include "io_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "alloy/core/error.h"

namespace alloy::detail {

namespace {
std::atomic<unsigned> g_temp_counter{0};
}  // namespace

void throw_io(const std::filesystem::path& path, const std::string& what, int err) {
  throw Error(ErrorCode::kIo, path.string() + ": " + what + ": " + std::strerror(err));
}

std::filesystem::path temp_sibling(const std::filesystem::path& final_path, const std::string& tag) {
  std::string name = ".";
  name += final_path.filename().string();
  name += tag;
  name += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(g_temp_counter++);
  return final_path.parent_path() / name;
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
