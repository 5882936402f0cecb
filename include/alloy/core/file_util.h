// alloy/core/file_util.h: writing outputs so that nothing half-written ever looks complete.
//
// Files are written under a temporary name in the same directory and renamed into place; output
// directories are built under a temporary sibling name and renamed into place when complete.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace alloy {

// Writes `content` to `path` via a temporary file in the same directory and rename(2).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

// Where an output file named on a command line goes. "-" is standard output; a path that exists
// and is not a regular file (a character device such as /dev/null or /dev/stdout, a FIFO) is
// written in place, since renaming over it would replace it with a regular file; anything else is
// written atomically (write_file_atomic). check_output_path refuses, before any work is done, a
// path that is a directory, a symlink to one, or whose parent directory does not exist.
void check_output_path(const std::filesystem::path& path);
void write_output_file(const std::filesystem::path& path, const std::string& content);

// Reads a whole (small) file; throws Error(kIo) naming it.
std::string read_text_file(const std::filesystem::path& path);

// An output directory under construction, published only if doing so replaces nothing but what
// the user asked to replace (docs/security.md, "Publishing"):
//  - an advisory lock beside OUT (".<name>.alloy-lock", flock) refuses a second writer of the same
//    OUT with Error(kOutputLocked) instead of letting both publish;
//  - OUT's state is decided when the staging starts: absent, or an existing directory that may be
//    replaced (empty, or any with `overwrite`), remembered by device and inode. publish() refuses
//    (kOutputChanged) when OUT is no longer in that state: a directory that appeared, or one that
//    was swapped for another, is never deleted;
//  - OUT may never be, or contain, one of `inputs` (kOutputIsInput), even with `overwrite`;
//  - the staging folder, ".<name>.alloy-tmp-<host>-<pid>-<n>" in OUT's parent, is removed on
//    destruction unless published, and on SIGINT/SIGTERM/SIGHUP in tools that call
//    remove_staging_on_signals(); folders of this OUT left by dead processes of this host (after a
//    SIGKILL or a power cut) are removed when a new staging starts, with a notice (alloy/core/notice.h).
class StagingDirectory {
 public:
  // Refuses (Error kOutputExists) when `final_path` exists and is a non-empty directory or a file,
  // unless `overwrite` (a file is refused even then). Creates the parent directories if needed.
  StagingDirectory(const std::filesystem::path& final_path, bool overwrite,
                   const std::vector<std::filesystem::path>& inputs = {});
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const std::filesystem::path& path() const { return staging_; }
  const std::filesystem::path& final_path() const { return final_; }
  // Moves the staging directory onto the final path: with renameat2(RENAME_NOREPLACE) when OUT was
  // absent, with RENAME_EXCHANGE and then deletion of the approved old directory otherwise.
  void publish();

 private:
  void lock();
  void unlock();

  std::filesystem::path final_;
  std::filesystem::path staging_;
  std::filesystem::path lock_path_;
  int lock_fd_ = -1;
  bool overwrite_ = false;
  bool existed_ = false;       // OUT existed when the staging started
  uint64_t device_ = 0, inode_ = 0;  // and was this directory
  bool published_ = false;
};

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every thread it starts later)
// and starts a thread that, on one of them, removes every live staging directory and its lock and
// then dies of the same signal. Tools call it first thing in main(), before any thread exists.
void remove_staging_on_signals();

}  // namespace alloy
