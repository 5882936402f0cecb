// StagingDirectory: build an output directory under a temporary name, then publish it without ever
// replacing something the user did not approve (alloy/core/file_util.h, docs/security.md).
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/notice.h"
#include "alloy/core/test_hooks.h"
#include "cleanup_registry.h"
#include "io_util.h"

namespace alloy {
namespace fs = std::filesystem;
using detail::throw_io;

namespace {

bool is_same_or_inside(const fs::path& inner, const fs::path& outer) {
  const auto rel = inner.lexically_relative(outer);
  return !rel.empty() && *rel.begin() != ".." && !rel.is_absolute();
}

// Refuses an output that is, or contains, one of the inputs: --overwrite would delete it.
void refuse_input_overlap(const fs::path& out, const std::vector<fs::path>& inputs) {
  std::error_code ec;
  const fs::path real_out = fs::weakly_canonical(fs::absolute(out, ec), ec);
  for (const auto& input : inputs) {
    const fs::path real_in = fs::weakly_canonical(fs::absolute(input, ec), ec);
    if (is_same_or_inside(real_in, real_out)) {
      throw Error(ErrorCode::kOutputIsInput,
                  out.string() + ": the output " + (real_in == real_out ? "is" : "contains") + " the input " +
                      input.string() + "; alloy never replaces its own inputs (choose another output)");
    }
  }
}

// Removes staging folders of `final_path` that processes of this host left behind when they were
// killed without a chance to clean up (SIGKILL, a power cut). A live process's folder is kept.
void sweep_stale(const fs::path& parent, const fs::path& final_path) {
  const std::string prefix = detail::temp_prefix(final_path);
  std::error_code ec;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // "<pid>-<n>"
    char* stop = nullptr;
    const long pid = std::strtol(rest.c_str(), &stop, 10);
    if (pid <= 0 || stop == rest.c_str() || *stop != '-') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    if (!fs::is_directory(it->symlink_status(ec))) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
    if (!rm) notice("removed " + it->path().string() + ", a staging folder left by process " + std::to_string(pid) +
                    ", which no longer runs");
  }
}

}  // namespace

StagingDirectory::StagingDirectory(const fs::path& final_path, bool overwrite, const std::vector<fs::path>& inputs)
    : final_(final_path), overwrite_(overwrite) {
  std::error_code ec;
  if (final_.filename().empty()) final_ = final_.parent_path();  // "out/" -> "out"
  refuse_input_overlap(final_, inputs);
  fs::path parent = final_.parent_path();
  if (parent.empty()) parent = ".";
  fs::create_directories(parent, ec);
  if (ec) throw Error(ErrorCode::kIo, parent.string() + ": cannot create: " + ec.message());
  lock();
  try {
    struct stat st {};
    if (::lstat(final_.c_str(), &st) == 0) {
      const bool is_dir = S_ISDIR(st.st_mode);
      const bool empty_dir = is_dir && fs::is_empty(final_, ec);
      if (!empty_dir && !overwrite_) {
        throw Error(ErrorCode::kOutputExists,
                    final_.string() + ": output exists and is not empty (use --overwrite to replace it)");
      }
      if (!is_dir) throw Error(ErrorCode::kOutputExists, final_.string() + ": output exists and is not a directory");
      existed_ = true;
      device_ = st.st_dev;
      inode_ = st.st_ino;
    } else if (errno != ENOENT) {
      throw_io(final_, "cannot inspect", errno);
    }
    sweep_stale(parent, final_);
    staging_ = detail::temp_sibling(parent / final_.filename());
    detail::register_for_cleanup(staging_);
    if (!fs::create_directory(staging_, ec) || ec) {
      throw Error(ErrorCode::kIo, staging_.string() + ": cannot create: " + ec.message());
    }
  } catch (...) {
    if (!staging_.empty()) detail::unregister_for_cleanup(staging_);
    unlock();
    throw;
  }
}

StagingDirectory::~StagingDirectory() {
  if (!published_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
  detail::unregister_for_cleanup(staging_);
  unlock();
}

// flock on ".<name>.alloy-lock" beside OUT. The holder unlinks the file when done, so a waiter may
// lock an unlinked inode: after locking, the path must still name the locked file, else retry.
void StagingDirectory::lock() {
  std::string name = ".";
  name += detail::short_name(final_.filename().string());
  name += ".alloy-lock";
  lock_path_ = final_.parent_path() / name;
  for (;;) {
    const int fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) throw_io(lock_path_, "cannot create the output's lock file", errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        throw Error(ErrorCode::kOutputLocked,
                    final_.string() + ": another alloy process is writing this output (it holds " +
                        lock_path_.string() + "); wait for it to finish or choose another output");
      }
      throw_io(lock_path_, "cannot lock", err);
    }
    struct stat held {}, named {};
    if (::fstat(fd, &held) == 0 && ::lstat(lock_path_.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino) {
      lock_fd_ = fd;
      detail::register_for_cleanup(lock_path_);
      return;
    }
    ::close(fd);  // the previous holder removed it between our open and our lock: take the new one
  }
}

void StagingDirectory::unlock() {
  if (lock_fd_ < 0) return;
  detail::unregister_for_cleanup(lock_path_);
  ::unlink(lock_path_.c_str());  // while still holding it (see lock())
  ::close(lock_fd_);
  lock_fd_ = -1;
}

void StagingDirectory::publish() {
  test_pause_point("before-publish");
  struct stat st {};
  const bool exists_now = ::lstat(final_.c_str(), &st) == 0;
  if (!exists_now && errno != ENOENT) throw_io(final_, "cannot inspect", errno);
  if (exists_now && (!existed_ || st.st_dev != device_ || st.st_ino != inode_)) {
    throw Error(ErrorCode::kOutputChanged,
                final_.string() + (existed_ ? ": was replaced by something else" : ": was created by someone else") +
                    " while alloy was writing it; refusing to replace what alloy did not approve (the result was "
                    "discarded)");
  }
  std::error_code ec;
  if (exists_now && !overwrite_ && !fs::is_empty(final_, ec)) {
    throw Error(ErrorCode::kOutputChanged, final_.string() +
                                               ": was empty when alloy started and has been filled since; refusing "
                                               "to replace it without --overwrite (the result was discarded)");
  }
  if (!exists_now) {
    // RENAME_NOREPLACE: a directory created at OUT after the check above still makes this fail.
    if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_.c_str(), RENAME_NOREPLACE) != 0) {
      const int err = errno;
      if (err == EEXIST) {
        throw Error(ErrorCode::kOutputChanged, final_.string() +
                                                   ": was created by someone else while alloy was writing it; "
                                                   "refusing to replace it (the result was discarded)");
      }
      if ((err != EINVAL && err != ENOSYS) || ::rename(staging_.c_str(), final_.c_str()) != 0)
        throw_io(final_, "cannot rename the finished output into place", err);
    }
    published_ = true;
    unlock();
    return;
  }
  // Swap the approved old directory and the new one in one step, then delete the old one, checking
  // that what came out really is the directory approved at the start.
  if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) != 0) {
    const int err = errno;
    if (err != EINVAL && err != ENOSYS) throw_io(final_, "cannot swap the finished output into place", err);
    // A file system without RENAME_EXCHANGE: move the old one aside, then the new one in.
    const fs::path old = detail::temp_sibling(final_, ".old");
    if (::rename(final_.c_str(), old.c_str()) != 0) throw_io(final_, "cannot move aside", errno);
    if (::rename(staging_.c_str(), final_.c_str()) != 0) {
      const int rename_err = errno;
      ::rename(old.c_str(), final_.c_str());
      throw_io(final_, "cannot rename the finished output into place", rename_err);
    }
    if (::rename(old.c_str(), staging_.c_str()) != 0) throw_io(old, "cannot remove the replaced output", errno);
  }
  struct stat old_st {};
  if (::lstat(staging_.c_str(), &old_st) != 0 || old_st.st_dev != device_ || old_st.st_ino != inode_) {
    ::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE);  // undo
    throw Error(ErrorCode::kOutputChanged, final_.string() +
                                               ": was replaced by something else while alloy was writing it; "
                                               "refusing to delete it (the result was discarded)");
  }
  published_ = true;
  fs::remove_all(staging_, ec);  // the old output, now under the staging name
  unlock();
}

}  // namespace alloy
