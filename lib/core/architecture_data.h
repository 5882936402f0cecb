// The architecture definition files compiled into the library: CMake generates
// architecture_data.cpp in the build tree from data/architectures/*.json
// (cmake/embed_architectures.cmake), so the tools need no source tree at run time.
#pragma once

#include <vector>

namespace alloy::detail {

struct ArchitectureFile {
  const char* name;  // file name, "qwen3_next.json"
  const char* text;  // the file's bytes
};

// In file-name order.
const std::vector<ArchitectureFile>& architecture_files();

}  // namespace alloy::detail
