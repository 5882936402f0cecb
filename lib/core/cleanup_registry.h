// Paths to remove if the process is killed by SIGINT, SIGTERM or SIGHUP (remove_staging_on_signals
// in alloy/core/file_util.h). Internal to lib/core.
#pragma once

#include <filesystem>

namespace alloy::detail {

void register_for_cleanup(const std::filesystem::path& path);
void unregister_for_cleanup(const std::filesystem::path& path);

}  // namespace alloy::detail
