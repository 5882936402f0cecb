// alloy/lmc/idx.h: a validating reader of IDX files (the MNIST / Fashion-MNIST format), gzip or
// raw.
//
// Byte layout (all integers big-endian):
//   offset 0: 0x00 0x00                 two zero bytes
//   offset 2: type                      0x08 = unsigned byte (the only type accepted)
//   offset 3: rank                      number of dimensions: 1 for labels, 3 for images
//   offset 4: rank x uint32             the dimensions (count, then rows, cols for images)
//   then:     prod(dims) bytes          the data, row-major, nothing after it
// A file whose first two bytes are 0x1f 0x8b is a gzip stream and is inflated first (zlib), with a
// cap on the inflated size; anything after the gzip stream is refused. Every dimension must be
// non-zero; their product is computed with overflow checks before anything is allocated; the data
// must end exactly at the end of the file; labels must be below kIdxClasses; the image and label
// counts of a split must agree. Each refusal is an IdxError (an alloy::Error, code
// kInvalidArgument, or kIo when the file cannot be read) with its own IdxDefect and a message that
// names the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "alloy/core/error.h"

namespace alloy::lmc {

inline constexpr size_t kIdxClasses = 10;
// Largest inflated IDX file accepted (a gzip bomb guard): 1 GiB.
inline constexpr uint64_t kIdxMaxBytes = uint64_t{1} << 30;
// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

enum class IdxDefect {
  kUnreadable,       // cannot open or read the file
  kGzipCorrupt,      // the gzip stream is damaged (bad header, bad data, bad checksum)
  kGzipTruncated,    // the gzip stream ends early
  kGzipTrailing,     // bytes after the end of the gzip stream
  kTooLarge,         // inflated size above kIdxMaxBytes
  kTooShort,         // fewer than 4 bytes: no magic number
  kBadMagic,         // the first two bytes are not zero
  kBadType,          // element type is not 0x08 (unsigned byte)
  kBadRank,          // rank differs from what the file is for (1: labels, 3: images)
  kTruncatedHeader,  // fewer bytes than the dimensions need
  kZeroDimension,    // a dimension is 0
  kSizeOverflow,     // the product of the dimensions overflows 64 bits
  kTruncatedData,    // fewer data bytes than the dimensions say
  kTrailingData,     // more data bytes than the dimensions say
  kBadLabel,         // a label >= kIdxClasses
  kCountMismatch,    // images and labels of one split differ in count
  kShapeMismatch,    // train and test images differ in size
  kMissingFile,      // a data directory lacks one of the four files
};
const char* idx_defect_name(IdxDefect defect);

class IdxError : public Error {
 public:
  IdxError(IdxDefect defect, const std::string& message);
  IdxDefect defect() const { return defect_; }

 private:
  IdxDefect defect_;
};

// The decoded content of one IDX file: its dimensions and its bytes.
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads and validates one IDX file of unsigned bytes with `rank` dimensions.
IdxArray read_idx(const std::filesystem::path& path, size_t rank);

// One split of a data set: `count` images of rows x cols bytes, and their labels.
struct Split {
  size_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count x rows x cols
  std::vector<uint8_t> labels;  // count, each < kIdxClasses
  size_t features() const { return rows * cols; }
};

// Reads an images file and a labels file and checks they agree.
Split read_split(const std::filesystem::path& images, const std::filesystem::path& labels);

struct Dataset {
  std::filesystem::path dir;
  Split train, test;
};

// Reads DIR/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte}, each with or without a ".gz" suffix (the gzip one first).
Dataset load_dataset(const std::filesystem::path& dir = kFashionMnistDir);

}  // namespace alloy::lmc
