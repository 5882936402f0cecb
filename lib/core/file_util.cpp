#include "alloy/core/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "alloy/core/error.h"
#include "io_util.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::throw_io;

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path temp = detail::temp_sibling(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_io(path, "cannot create", errno);
  if (const int err = detail::pwrite_all(fd, content.data(), content.size(), 0)) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw_io(path, "cannot write", err);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw_io(path, "cannot write", err);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw_io(path, "cannot rename into place", err);
  }
}

void check_output_path(const fs::path& path) {
  if (path == "-") return;
  std::error_code ec;
  const auto status = fs::status(path, ec);  // follows symlinks: /dev/stdout is a link to a device
  if (fs::is_directory(status)) throw Error(ErrorCode::kIo, path.string() + ": is a directory, not a file to write");
  if (fs::exists(status)) return;
  const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot write here: " + parent.string() + " is not a directory");
  }
}

void write_output_file(const fs::path& path, const std::string& content) {
  check_output_path(path);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (path != "-" && (!fs::exists(status) || fs::is_regular_file(status))) {
    write_file_atomic(path, content);
    return;
  }
  const int fd = path == "-" ? ::dup(STDOUT_FILENO) : ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw_io(path, "cannot open for writing", errno);
  // A pipe or terminal takes the bytes in order: the offset is ignored for them, and a device such
  // as /dev/null accepts any.
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      throw_io(path, "cannot write", err);
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw_io(path, "cannot write", errno);
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, path.string() + ": cannot open: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(ErrorCode::kIo, path.string() + ": cannot read");
  return text.str();
}

}  // namespace alloy
