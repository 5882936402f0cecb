// Low-level output helpers shared by the writer and the file utilities. Internal to lib/core.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace alloy::detail {

// Throws Error(kIo) "<path>: <what>: <strerror(err)>".
[[noreturn]] void throw_io(const std::filesystem::path& path, const std::string& what, int err);

// A unique sibling name for staging `final_path`: "<dir>/.<name><tag>.tmp-<pid>-<n>". Hidden, in
// the same directory (so rename(2) into place is atomic), and unique within and across processes.
std::filesystem::path temp_sibling(const std::filesystem::path& final_path, const std::string& tag = "");

// Writes all of [data, data + size) at `offset`, retrying partial writes and EINTR. Returns 0 on
// success, else the errno value (EIO for a write that makes no progress).
int pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset);

}  // namespace alloy::detail
