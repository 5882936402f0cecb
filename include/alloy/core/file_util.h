// alloy/core/file_util.h: writing outputs so that nothing half-written ever looks complete.
//
// Files are written under a temporary name in the same directory and renamed into place; output
// directories are built under a temporary sibling name and renamed into place when complete.
#pragma once

#include <filesystem>
#include <string>

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

// An output directory under construction: created as "<parent>/.<name>.tmp-<pid>-<n>", removed
// with everything in it on destruction unless publish() succeeded.
class StagingDirectory {
 public:
  // Refuses (Error kOutputExists) when `final_path` exists and is a non-empty directory or a file,
  // unless `overwrite`. Creates the parent directories if needed.
  StagingDirectory(const std::filesystem::path& final_path, bool overwrite);
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const std::filesystem::path& path() const { return staging_; }
  const std::filesystem::path& final_path() const { return final_; }
  // Renames the staging directory onto the final path (replacing an old one when overwriting).
  void publish();

 private:
  std::filesystem::path final_;
  std::filesystem::path staging_;
  bool overwrite_ = false;
  bool published_ = false;
};

}  // namespace alloy
