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

StagingDirectory::StagingDirectory(const fs::path& final_path, bool overwrite)
    : final_(final_path), overwrite_(overwrite) {
  std::error_code ec;
  if (final_.filename().empty()) final_ = final_.parent_path();  // "out/" -> "out"
  const auto status = fs::symlink_status(final_, ec);
  if (fs::exists(status)) {
    const bool empty_dir = fs::is_directory(status) && fs::is_empty(final_, ec);
    if (!empty_dir && !overwrite_) {
      throw Error(ErrorCode::kOutputExists,
                  final_.string() + ": output exists and is not empty (use --overwrite to replace it)");
    }
    if (!fs::is_directory(status) && !empty_dir) {
      throw Error(ErrorCode::kOutputExists, final_.string() + ": output exists and is not a directory");
    }
  }
  fs::path parent = final_.parent_path();
  if (parent.empty()) parent = ".";
  fs::create_directories(parent, ec);
  if (ec) throw Error(ErrorCode::kIo, parent.string() + ": cannot create: " + ec.message());
  staging_ = detail::temp_sibling(parent / final_.filename());
  if (!fs::create_directory(staging_, ec) || ec) {
    throw Error(ErrorCode::kIo, staging_.string() + ": cannot create: " + ec.message());
  }
}

StagingDirectory::~StagingDirectory() {
  if (published_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagingDirectory::publish() {
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(final_, ec))) {
    if (fs::is_directory(final_, ec) && fs::is_empty(final_, ec)) {
      fs::remove(final_, ec);
    } else {
      old = detail::temp_sibling(final_, ".old");
      if (::rename(final_.c_str(), old.c_str()) != 0) throw_io(final_, "cannot move aside", errno);
    }
  }
  if (::rename(staging_.c_str(), final_.c_str()) != 0) {
    const int err = errno;
    if (!old.empty()) ::rename(old.c_str(), final_.c_str());
    throw_io(final_, "cannot rename the finished output into place", err);
  }
  published_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace alloy
