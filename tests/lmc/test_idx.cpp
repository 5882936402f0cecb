// The IDX reader: valid files (raw and gzip), the real Fashion-MNIST files, and a table of corrupt
// files, one defect each, each refused with its own IdxDefect and a message naming the file.
#include <gtest/gtest.h>

#include "alloy/lmc/idx.h"
#include "lmc/lmc_test_utils.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

using lmc::IdxDefect;

std::string images(uint32_t count, uint32_t rows, uint32_t cols) {
  return idx_bytes({count, rows, cols}, std::string(size_t(count) * rows * cols, '\x07'));
}
std::string labels(uint32_t count, char value = 3) {
  return idx_bytes({count}, std::string(count, value));
}

TEST(IdxReader, ReadsRawAndGzipFiles) {
  TempDir dir;
  write_bytes(dir / "raw", images(3, 2, 4));
  write_bytes(dir / "gz", gzip_bytes(images(3, 2, 4)));
  for (const char* name : {"raw", "gz"}) {
    const lmc::IdxArray a = lmc::read_idx(dir / name, 3);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{3, 2, 4}));
    EXPECT_EQ(a.data.size(), 24u);
    EXPECT_EQ(a.data[5], 7);
  }
}

TEST(IdxReader, ReadsADataDirectoryWithOrWithoutGz) {
  TempDir dir;
  write_bytes(dir / "train-images-idx3-ubyte.gz", gzip_bytes(images(4, 2, 2)));
  write_bytes(dir / "train-labels-idx1-ubyte", labels(4));
  write_bytes(dir / "t10k-images-idx3-ubyte", images(2, 2, 2));
  write_bytes(dir / "t10k-labels-idx1-ubyte.gz", gzip_bytes(labels(2, 9)));
  const lmc::Dataset d = lmc::load_dataset(dir.path());
  EXPECT_EQ(d.train.count, 4u);
  EXPECT_EQ(d.test.count, 2u);
  EXPECT_EQ(d.test.labels[1], 9);
  EXPECT_EQ(d.train.features(), 4u);
}

TEST(IdxReader, ReadsFashionMnist) {
  const lmc::Dataset* d = fashion_mnist();
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->train.count, 60000u);
  EXPECT_EQ(d->test.count, 10000u);
  EXPECT_EQ(d->train.rows, 28u);
  EXPECT_EQ(d->train.cols, 28u);
  std::vector<size_t> per_class(10, 0);
  for (uint8_t l : d->test.labels) per_class[l]++;
  for (size_t c : per_class) EXPECT_EQ(c, 1000u);  // Fashion-MNIST's test set is balanced
}

struct CorruptCase {
  const char* name;
  std::string images;  // written as the images file of a split
  std::string labels;  // its labels file
  IdxDefect defect;
};

TEST(IdxReader, RefusesCorruptFiles) {
  const std::string good_images = images(4, 3, 3), good_labels = labels(4);
  std::string bad_gzip = gzip_bytes(good_images);
  for (size_t i = 12; i < bad_gzip.size() - 8; i += 3) bad_gzip[i] = char(bad_gzip[i] ^ 0x5A);
  const std::string gz = gzip_bytes(good_images);
  std::string type9 = good_images;
  type9[2] = 0x09;
  std::string magic = good_images;
  magic[0] = 0x01;
  const std::vector<CorruptCase> cases = {
      {"empty file", "", good_labels, IdxDefect::kTooShort},
      {"three bytes", std::string("\0\0\x08", 3), good_labels, IdxDefect::kTooShort},
      {"non-zero magic", magic, good_labels, IdxDefect::kBadMagic},
      {"element type 9", type9, good_labels, IdxDefect::kBadType},
      {"images of rank 2", idx_bytes({4, 9}, std::string(36, '\0')), good_labels,
       IdxDefect::kBadRank},
      {"labels of rank 3", good_images, images(4, 1, 1), IdxDefect::kBadRank},
      {"header cut in the dimensions", good_images.substr(0, 10), good_labels,
       IdxDefect::kTruncatedHeader},
      {"zero rows", idx_bytes({4, 0, 3}, ""), good_labels, IdxDefect::kZeroDimension},
      {"zero images", idx_bytes({0, 3, 3}, ""), labels(0), IdxDefect::kZeroDimension},
      {"dimensions overflow", idx_bytes({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, ""), good_labels,
       IdxDefect::kSizeOverflow},
      {"data cut short", good_images.substr(0, good_images.size() - 1), good_labels,
       IdxDefect::kTruncatedData},
      {"bytes after the data", good_images + "x", good_labels, IdxDefect::kTrailingData},
      {"label 10", good_images, idx_bytes({4}, std::string("\x01\x02\x0A\x03", 4)),
       IdxDefect::kBadLabel},
      {"5 labels for 4 images", good_images, labels(5), IdxDefect::kCountMismatch},
      {"damaged gzip data", bad_gzip, good_labels, IdxDefect::kGzipCorrupt},
      {"gzip cut short", gz.substr(0, gz.size() / 2), good_labels, IdxDefect::kGzipTruncated},
      {"bytes after the gzip stream", gz + "garbage", good_labels, IdxDefect::kGzipTrailing},
  };
  ASSERT_GE(cases.size(), 10u);
  TempDir dir;
  for (const CorruptCase& c : cases) {
    SCOPED_TRACE(c.name);
    write_bytes(dir / "images", c.images);
    write_bytes(dir / "labels", c.labels);
    try {
      lmc::read_split(dir / "images", dir / "labels");
      ADD_FAILURE() << "accepted: " << c.name;
    } catch (const lmc::IdxError& e) {
      EXPECT_EQ(lmc::idx_defect_name(e.defect()), std::string(lmc::idx_defect_name(c.defect)));
      EXPECT_NE(std::string(e.what()).find((dir / "").string()), std::string::npos) << e.what();
    }
  }
}

TEST(IdxReader, RefusesMissingFilesAndMismatchedSplits) {
  TempDir dir;
  try {
    lmc::read_idx(dir / "absent", 1);
    ADD_FAILURE() << "read a missing file";
  } catch (const lmc::IdxError& e) {
    EXPECT_EQ(e.defect(), IdxDefect::kUnreadable);
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
  write_bytes(dir / "train-images-idx3-ubyte", images(4, 2, 2));
  write_bytes(dir / "train-labels-idx1-ubyte", labels(4));
  write_bytes(dir / "t10k-images-idx3-ubyte", images(2, 3, 3));
  try {
    lmc::load_dataset(dir.path());
    ADD_FAILURE() << "loaded a directory without test labels";
  } catch (const lmc::IdxError& e) {
    EXPECT_EQ(e.defect(), IdxDefect::kMissingFile);
  }
  write_bytes(dir / "t10k-labels-idx1-ubyte", labels(2));
  try {
    lmc::load_dataset(dir.path());
    ADD_FAILURE() << "loaded train and test images of different sizes";
  } catch (const lmc::IdxError& e) {
    EXPECT_EQ(e.defect(), IdxDefect::kShapeMismatch);
  }
}

}  // namespace
}  // namespace alloy::test
