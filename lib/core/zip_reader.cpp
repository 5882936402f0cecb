// ZIP central directory reader (rules: zip_reader.h). Every offset and size read from the file is
// checked against the bytes that hold it before it is used.
#include "zip_reader.h"

#include <algorithm>

#include "alloy/core/error.h"
#include "reader_text.h"

namespace alloy::detail {
namespace {

constexpr uint32_t kLocalSignature = 0x04034b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr size_t kEndBytes = 22, kCentralBytes = 46, kLocalBytes = 30;
constexpr size_t kZip64EndBytes = 56, kZip64LocatorBytes = 20;
constexpr size_t kMaxComment = 65535;

uint64_t read_le(const uint8_t* p, int n) {
  uint64_t value = 0;
  for (int i = n - 1; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}
uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(read_le(p, 2)); }
uint32_t u32(const uint8_t* p) { return static_cast<uint32_t>(read_le(p, 4)); }
uint64_t u64(const uint8_t* p) { return read_le(p, 8); }

[[noreturn]] void fail(const std::string& label, const std::string& message) {
  throw Error(ErrorCode::kBadZip, label + ": zip archive: " + message);
}

// [begin, begin + length) lies inside [0, limit).
bool fits(uint64_t begin, uint64_t length, uint64_t limit) {
  uint64_t end = 0;
  return !__builtin_add_overflow(begin, length, &end) && end <= limit;
}

struct Directory {
  uint64_t entries = 0, offset = 0, bytes = 0;
  uint64_t end = 0;  // where the records after the central directory begin
};

Directory find_directory(const uint8_t* bytes, size_t size, const std::string& label) {
  if (size < kEndBytes) fail(label, "too small to hold an end of central directory record");
  // The end record is the last thing in the file, followed only by its comment.
  size_t position = size - kEndBytes;
  const size_t lowest = size - kEndBytes > kMaxComment ? size - kEndBytes - kMaxComment : 0;
  while (true) {
    const uint8_t* p = bytes + position;
    if (u32(p) == kEndSignature && u16(p + 20) == size - position - kEndBytes) break;
    if (position == lowest) fail(label, "no end of central directory record (truncated, or not a zip archive)");
    --position;
  }
  const uint8_t* end = bytes + position;
  if (u16(end + 4) != 0 || u16(end + 6) != 0) fail(label, "multi-disk archives are not read");
  Directory directory{u16(end + 10), u32(end + 16), u32(end + 12), position};
  if (u16(end + 8) != directory.entries) fail(label, "entry counts of the end record disagree");
  const bool zip64 = directory.entries == 0xFFFF || directory.offset == 0xFFFFFFFF || directory.bytes == 0xFFFFFFFF;
  if (!zip64) return directory;
  if (position < kZip64LocatorBytes) fail(label, "ZIP64 end record locator missing");
  const uint8_t* locator = end - kZip64LocatorBytes;
  if (u32(locator) != kZip64LocatorSignature) fail(label, "ZIP64 end record locator missing");
  if (u32(locator + 4) != 0 || u32(locator + 16) > 1) fail(label, "multi-disk archives are not read");
  const uint64_t record = u64(locator + 8);
  if (!fits(record, kZip64EndBytes, position - kZip64LocatorBytes)) {
    fail(label, "ZIP64 end record at " + std::to_string(record) + " lies outside the file");
  }
  const uint8_t* p = bytes + record;
  if (u32(p) != kZip64EndSignature) fail(label, "no ZIP64 end record where the locator points");
  if (u32(p + 16) != 0 || u32(p + 20) != 0) fail(label, "multi-disk archives are not read");
  directory = {u64(p + 32), u64(p + 48), u64(p + 40), record};
  if (u64(p + 24) != directory.entries) fail(label, "entry counts of the ZIP64 end record disagree");
  return directory;
}

// Replaces the 32-bit fields that hold 0xFFFFFFFF by the ZIP64 extra field's values, in the
// order APPNOTE 4.5.3 gives (uncompressed size, compressed size, local header offset).
void apply_zip64(const uint8_t* extra, size_t extra_bytes, uint64_t* uncompressed, uint64_t* compressed,
                 uint64_t* local, const std::string& label, const std::string& name) {
  uint64_t* fields[] = {uncompressed, compressed, local};
  bool needed = false;
  for (uint64_t* field : fields) needed |= *field == 0xFFFFFFFF;
  if (!needed) return;
  size_t at = 0;
  while (at + 4 <= extra_bytes) {
    const uint16_t id = u16(extra + at), length = u16(extra + at + 2);
    if (at + 4 + length > extra_bytes) break;
    if (id == 0x0001) {
      size_t used = 0;
      for (uint64_t* field : fields) {
        if (*field != 0xFFFFFFFF) continue;
        if (used + 8 > length) fail(label, "entry " + quote_name(name) + ": ZIP64 extra field too short");
        *field = u64(extra + at + 4 + used);
        used += 8;
      }
      return;
    }
    at += 4 + length;
  }
  fail(label, "entry " + quote_name(name) + ": sizes or offset need a ZIP64 extra field, which is missing");
}

}  // namespace

std::vector<ZipEntry> read_zip_directory(const uint8_t* bytes, size_t size, const std::string& label) {
  const Directory directory = find_directory(bytes, size, label);
  if (!fits(directory.offset, directory.bytes, directory.end)) {
    fail(label, "central directory (" + std::to_string(directory.bytes) + " bytes at " +
                    std::to_string(directory.offset) + ") lies outside the file");
  }
  if (directory.entries > directory.bytes / kCentralBytes) {
    fail(label, std::to_string(directory.entries) + " entries cannot fit in a central directory of " +
                    std::to_string(directory.bytes) + " bytes");
  }
  std::vector<ZipEntry> entries;
  entries.reserve(directory.entries);
  const uint64_t directory_end = directory.offset + directory.bytes;
  uint64_t at = directory.offset;
  for (uint64_t i = 0; i < directory.entries; ++i) {
    const std::string where = "central directory entry " + std::to_string(i);
    if (!fits(at, kCentralBytes, directory_end)) fail(label, where + " runs past the directory's end");
    const uint8_t* p = bytes + at;
    if (u32(p) != kCentralSignature) fail(label, where + " has no central header signature");
    const uint16_t flags = u16(p + 8), method = u16(p + 10);
    uint64_t compressed = u32(p + 20), uncompressed = u32(p + 24), local = u32(p + 42);
    const uint16_t name_bytes = u16(p + 28), extra_bytes = u16(p + 30), comment_bytes = u16(p + 32);
    const uint64_t record_bytes = kCentralBytes + uint64_t{name_bytes} + extra_bytes + comment_bytes;
    if (!fits(at, record_bytes, directory_end)) fail(label, where + " runs past the directory's end");
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(p + kCentralBytes), name_bytes);
    const std::string what = "entry " + quote_name(entry.name);
    if (entry.name.empty() || entry.name.find('\0') != std::string::npos) {
      fail(label, where + " has an empty name or one holding a NUL byte");
    }
    apply_zip64(p + kCentralBytes + name_bytes, extra_bytes, &uncompressed, &compressed, &local, label, entry.name);
    if (u16(p + 34) != 0 && u16(p + 34) != 0xFFFF) fail(label, what + " lies on another disk");
    if (flags & 0x41) fail(label, what + " is encrypted");
    if (method != 0) {
      fail(label, what + " is compressed (method " + std::to_string(method) +
                      "); only stored entries are read, as torch.save writes them");
    }
    if (compressed != uncompressed) fail(label, what + ": stored entry with compressed size != size");
    // The local header and the data it introduces lie before the central directory.
    if (!fits(local, kLocalBytes, directory.offset)) fail(label, what + ": local header lies outside the file");
    const uint8_t* header = bytes + local;
    if (u32(header) != kLocalSignature) fail(label, what + ": no local header where the directory points");
    if (u16(header + 8) != method) fail(label, what + ": local header's method differs from the directory's");
    const uint64_t local_name = u16(header + 26), local_extra = u16(header + 28);
    if (!fits(local, kLocalBytes + local_name + local_extra, directory.offset)) {
      fail(label, what + ": local header runs into the central directory");
    }
    if (local_name != name_bytes ||
        !std::equal(entry.name.begin(), entry.name.end(), reinterpret_cast<const char*>(header + kLocalBytes))) {
      fail(label, what + ": local header names another file");
    }
    entry.header_offset = local;
    entry.data_offset = local + kLocalBytes + local_name + local_extra;
    entry.size = uncompressed;
    if (!fits(entry.data_offset, entry.size, directory.offset)) {
      fail(label, what + ": its " + std::to_string(entry.size) + " bytes run past the central directory");
    }
    entries.push_back(std::move(entry));
    at += record_bytes;
  }

  std::vector<const ZipEntry*> sorted;
  sorted.reserve(entries.size());
  for (const auto& entry : entries) sorted.push_back(&entry);
  std::sort(sorted.begin(), sorted.end(), [](const ZipEntry* a, const ZipEntry* b) { return a->name < b->name; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->name == sorted[i - 1]->name) fail(label, "entry " + quote_name(sorted[i]->name) + " appears twice");
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const ZipEntry* a, const ZipEntry* b) { return a->header_offset < b->header_offset; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1]->data_offset + sorted[i - 1]->size > sorted[i]->header_offset) {
      fail(label, "entries " + quote_name(sorted[i - 1]->name) + " and " + quote_name(sorted[i]->name) + " overlap");
    }
  }
  return entries;
}

}  // namespace alloy::detail
