// The central directory of a ZIP archive (APPNOTE 6.3), read defensively: enough for PyTorch's
// checkpoints, whose entries are stored uncompressed (alloy/core/torch_checkpoint.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace alloy::detail {

struct ZipEntry {
  std::string name;
  uint64_t header_offset = 0;  // its local file header
  uint64_t data_offset = 0;    // its first data byte (after the local header's name and extra field)
  uint64_t size = 0;           // stored bytes (= uncompressed bytes: only stored entries are accepted)
};

// Every entry of the archive held in `bytes`, in central directory order. Throws Error(kBadZip),
// naming `label`, for: no end record (truncated, or not a zip), a multi-disk archive, a central
// directory or local header outside the file or not where it says, ZIP64 fields missing or out of
// range, an encrypted or compressed entry, a local header whose name differs from the central
// directory's, an entry whose data runs into the central directory, two entries with one name,
// and entries that overlap.
std::vector<ZipEntry> read_zip_directory(const uint8_t* bytes, size_t size, const std::string& label);

}  // namespace alloy::detail
