// Low-level output helpers shared by the writer and the file utilities. Internal to lib/core.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace alloy::detail {

// Throws Error(kIo) "<path>: <what>: <strerror(err)>".
[[noreturn]] void throw_io(const std::filesystem::path& path, const std::string& what, int err);

// A unique sibling name for staging `final_path`: "<dir>/<temp_prefix(final_path, tag)><pid>-<n>".
// Hidden, in the same directory (so rename(2) into place is atomic), unique within and across
// processes and hosts, and never longer than NAME_MAX however long the final name is.
std::filesystem::path temp_sibling(const std::filesystem::path& final_path, const std::string& tag = "");
// ".<name><tag>.alloy-tmp-<host>-": what every temp name of `final_path` made on this host starts
// with (the stale-staging sweep looks for it). A name over 96 bytes is shortened to its first 64
// bytes, "~" and a 64-bit hash of the whole name.
std::string temp_prefix(const std::filesystem::path& final_path, const std::string& tag = "");
// `name` itself, or when over 96 bytes its first 64 bytes, "~" and a 64-bit hash of the whole.
std::string short_name(const std::string& name);

// Writes all of [data, data + size) at `offset`, retrying partial writes and EINTR. Returns 0 on
// success, else the errno value (EIO for a write that makes no progress).
int pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset);

}  // namespace alloy::detail
