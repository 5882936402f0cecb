// IDX reader (alloy/lmc/idx.h): gzip via zlib's inflate, every size checked before use.
#include "alloy/lmc/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace alloy::lmc {

const char* idx_defect_name(IdxDefect defect) {
  switch (defect) {
    case IdxDefect::kUnreadable:
      return "unreadable";
    case IdxDefect::kGzipCorrupt:
      return "gzip-corrupt";
    case IdxDefect::kGzipTruncated:
      return "gzip-truncated";
    case IdxDefect::kGzipTrailing:
      return "gzip-trailing-bytes";
    case IdxDefect::kTooLarge:
      return "too-large";
    case IdxDefect::kTooShort:
      return "too-short";
    case IdxDefect::kBadMagic:
      return "bad-magic";
    case IdxDefect::kBadType:
      return "bad-type";
    case IdxDefect::kBadRank:
      return "bad-rank";
    case IdxDefect::kTruncatedHeader:
      return "truncated-header";
    case IdxDefect::kZeroDimension:
      return "zero-dimension";
    case IdxDefect::kSizeOverflow:
      return "size-overflow";
    case IdxDefect::kTruncatedData:
      return "truncated-data";
    case IdxDefect::kTrailingData:
      return "trailing-data";
    case IdxDefect::kBadLabel:
      return "bad-label";
    case IdxDefect::kCountMismatch:
      return "count-mismatch";
    case IdxDefect::kShapeMismatch:
      return "shape-mismatch";
    case IdxDefect::kMissingFile:
      return "missing-file";
  }
  return "unknown";
}

IdxError::IdxError(IdxDefect defect, const std::string& message)
    : Error(defect == IdxDefect::kUnreadable || defect == IdxDefect::kMissingFile
                ? ErrorCode::kIo
                : ErrorCode::kInvalidArgument,
            message + " [" + idx_defect_name(defect) + "]"),
      defect_(defect) {}

namespace {

[[noreturn]] void fail(IdxDefect defect, const std::filesystem::path& path,
                       const std::string& what) {
  throw IdxError(defect, path.string() + ": " + what);
}

std::string read_raw(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(IdxDefect::kUnreadable, path, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) fail(IdxDefect::kUnreadable, path, "cannot determine the size");
  if (static_cast<uint64_t>(size) > kIdxMaxBytes)
    fail(IdxDefect::kTooLarge, path, "file larger than " + std::to_string(kIdxMaxBytes) + " bytes");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (size > 0 && !in.read(bytes.data(), size)) fail(IdxDefect::kUnreadable, path, "read failed");
  return bytes;
}

// Inflates one gzip stream; refuses damage, early end, trailing bytes and output above the cap.
std::string gunzip(const std::filesystem::path& path, const std::string& compressed) {
  z_stream s{};
  if (inflateInit2(&s, 15 + 16) != Z_OK) fail(IdxDefect::kGzipCorrupt, path, "zlib init failed");
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  s.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    s.next_out = reinterpret_cast<Bytef*>(buffer);
    s.avail_out = sizeof buffer;
    rc = inflate(&s, Z_NO_FLUSH);
    const size_t produced = sizeof buffer - s.avail_out;
    if (out.size() + produced > kIdxMaxBytes) {
      inflateEnd(&s);
      fail(IdxDefect::kTooLarge, path,
           "inflates to more than " + std::to_string(kIdxMaxBytes) + " bytes");
    }
    out.append(buffer, produced);
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR || (rc == Z_OK && s.avail_in == 0 && produced == 0)) {
      inflateEnd(&s);
      fail(IdxDefect::kGzipTruncated, path, "the gzip stream ends early");
    }
    if (rc != Z_OK) {
      const std::string msg = s.msg ? s.msg : "inflate failed";
      inflateEnd(&s);
      fail(IdxDefect::kGzipCorrupt, path, "damaged gzip stream: " + msg);
    }
  }
  const size_t left = s.avail_in;
  inflateEnd(&s);
  if (left != 0)
    fail(IdxDefect::kGzipTrailing, path, std::to_string(left) + " bytes after the gzip stream");
  return out;
}

uint32_t be32(const std::string& b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 24) | (uint32_t(uint8_t(b[at + 1])) << 16) |
         (uint32_t(uint8_t(b[at + 2])) << 8) | uint32_t(uint8_t(b[at + 3]));
}

}  // namespace

IdxArray read_idx(const std::filesystem::path& path, size_t rank) {
  std::string bytes = read_raw(path);
  if (bytes.size() >= 2 && uint8_t(bytes[0]) == 0x1f && uint8_t(bytes[1]) == 0x8b)
    bytes = gunzip(path, bytes);
  if (bytes.size() < 4) fail(IdxDefect::kTooShort, path, "fewer than 4 bytes: no IDX magic number");
  if (bytes[0] != 0 || bytes[1] != 0)
    fail(IdxDefect::kBadMagic, path, "not an IDX file (the first two bytes are not zero)");
  if (uint8_t(bytes[2]) != 0x08)
    fail(IdxDefect::kBadType, path,
         "element type " + std::to_string(uint8_t(bytes[2])) + " is not 8 (unsigned byte)");
  const size_t file_rank = uint8_t(bytes[3]);
  if (file_rank != rank)
    fail(IdxDefect::kBadRank, path,
         std::to_string(file_rank) + " dimensions, expected " + std::to_string(rank));
  const size_t header = 4 + 4 * rank;
  if (bytes.size() < header)
    fail(IdxDefect::kTruncatedHeader, path,
         "the header needs " + std::to_string(header) + " bytes");
  IdxArray array;
  uint64_t total = 1;
  for (size_t d = 0; d < rank; ++d) {
    const uint32_t dim = be32(bytes, 4 + 4 * d);
    if (dim == 0) fail(IdxDefect::kZeroDimension, path, "dimension " + std::to_string(d) + " is 0");
    if (total > UINT64_MAX / dim)
      fail(IdxDefect::kSizeOverflow, path, "the product of the dimensions overflows 64 bits");
    total *= dim;
    array.dims.push_back(dim);
  }
  const uint64_t have = bytes.size() - header;
  if (have < total)
    fail(IdxDefect::kTruncatedData, path,
         "holds " + std::to_string(have) + " data bytes, the dimensions need " +
             std::to_string(total));
  if (have > total)
    fail(IdxDefect::kTrailingData, path,
         std::to_string(have - total) + " bytes after the data the dimensions describe");
  array.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return array;
}

Split read_split(const std::filesystem::path& images, const std::filesystem::path& labels) {
  IdxArray image_array = read_idx(images, 3);
  IdxArray label_array = read_idx(labels, 1);
  for (size_t i = 0; i < label_array.data.size(); ++i) {
    if (label_array.data[i] >= kIdxClasses)
      fail(IdxDefect::kBadLabel, labels,
           "label " + std::to_string(label_array.data[i]) + " of sample " + std::to_string(i) +
               " is not below " + std::to_string(kIdxClasses));
  }
  if (image_array.dims[0] != label_array.dims[0])
    fail(IdxDefect::kCountMismatch, labels,
         std::to_string(label_array.dims[0]) + " labels for " +
             std::to_string(image_array.dims[0]) + " images in " + images.string());
  Split split;
  split.count = image_array.dims[0];
  split.rows = image_array.dims[1];
  split.cols = image_array.dims[2];
  split.pixels = std::move(image_array.data);
  split.labels = std::move(label_array.data);
  return split;
}

namespace {
std::filesystem::path find_file(const std::filesystem::path& dir, const std::string& stem) {
  for (const std::string& name : {stem + ".gz", stem}) {
    if (std::filesystem::is_regular_file(dir / name)) return dir / name;
  }
  fail(IdxDefect::kMissingFile, dir,
       "no " + stem + ".gz or " + stem +
           (dir == kFashionMnistDir ? " (install Debian's dataset-fashion-mnist package)" : ""));
}
}  // namespace

Dataset load_dataset(const std::filesystem::path& dir) {
  Dataset data;
  data.dir = dir;
  data.train = read_split(find_file(dir, "train-images-idx3-ubyte"),
                          find_file(dir, "train-labels-idx1-ubyte"));
  data.test = read_split(find_file(dir, "t10k-images-idx3-ubyte"),
                         find_file(dir, "t10k-labels-idx1-ubyte"));
  if (data.train.rows != data.test.rows || data.train.cols != data.test.cols)
    fail(IdxDefect::kShapeMismatch, dir,
         "train images are " + std::to_string(data.train.rows) + "x" +
             std::to_string(data.train.cols) + ", test images " + std::to_string(data.test.rows) +
             "x" + std::to_string(data.test.cols));
  return data;
}

}  // namespace alloy::lmc
