// The safetensors reader: a table of handcrafted corrupt files, one defect each, every one refused
// with its own error code; and the valid edge cases that must be accepted.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/safetensors.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::ErrorCode;
using alloy::test::safetensors_bytes;

struct CorruptCase {
  const char* name;
  std::string bytes;
  ErrorCode expected;
  const char* must_mention;  // a tensor or key the message must name ("" = only the file)
};

std::string with_length(uint64_t length, const std::string& rest) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  return out + rest;
}

const std::string kFourBytes(4, '\x01');

std::vector<CorruptCase> corrupt_cases() {
  return {
      {"EmptyFile", "", ErrorCode::kFileTooSmall, ""},
      {"SevenBytes", std::string(7, '\0'), ErrorCode::kFileTooSmall, ""},
      {"HeaderLengthZero", with_length(0, ""), ErrorCode::kHeaderTooSmall, ""},
      {"HeaderLengthOne", with_length(1, "{"), ErrorCode::kHeaderTooSmall, ""},
      {"HeaderTooLarge", with_length(100'000'001, "{}"), ErrorCode::kHeaderTooLarge, ""},
      {"HeaderHugeLength", with_length(~uint64_t{0}, "{}"), ErrorCode::kHeaderTooLarge, ""},
      {"HeaderPastEnd", with_length(64, "{}"), ErrorCode::kHeaderOutOfBounds, ""},
      {"HeaderInvalidUtf8", safetensors_bytes("{\"a\xff\":1}", ""), ErrorCode::kHeaderNotUtf8, ""},
      {"HeaderOverlongUtf8", safetensors_bytes("{\"\xc0\xaf\":1}", ""), ErrorCode::kHeaderNotUtf8,
       ""},
      {"HeaderSurrogateUtf8", safetensors_bytes("{\"\xed\xa0\x80\":1}", ""),
       ErrorCode::kHeaderNotUtf8, ""},
      {"HeaderNotJson", safetensors_bytes("{\"a\": ", ""), ErrorCode::kHeaderNotJson, ""},
      {"HeaderTooDeep", safetensors_bytes("{\"a\":{\"shape\":[[[[1]]]]}}", ""),
       ErrorCode::kHeaderNotJson, ""},
      {"HeaderArray", safetensors_bytes("[1, 2]", ""), ErrorCode::kHeaderNotObject, ""},
      {"HeaderString", safetensors_bytes("\"hello\"", ""), ErrorCode::kHeaderNotObject, ""},
      {"TensorNotObject", safetensors_bytes("{\"w\":[1,2]}", ""), ErrorCode::kTensorNotObject,
       "'w'"},
      {"UnknownKey",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
                         kFourBytes),
       ErrorCode::kUnknownKey, "'x'"},
      {"RepeatedKeyInEntry",
       safetensors_bytes(
           "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
           kFourBytes),
       ErrorCode::kUnknownKey, "dtype"},
      {"MissingDtype",
       safetensors_bytes("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", kFourBytes),
       ErrorCode::kMissingKey, "'w'"},
      {"MissingOffsets", safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", kFourBytes),
       ErrorCode::kMissingKey, "data_offsets"},
      {"UnknownDtype",
       safetensors_bytes("{\"w\":{\"dtype\":\"F24\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kUnknownDtype, "F24"},
      {"LowercaseDtype",
       safetensors_bytes("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kUnknownDtype, "'w'"},
      {"DtypeNotString",
       safetensors_bytes("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", kFourBytes),
       ErrorCode::kBadDtypeType, "'w'"},
      {"ShapeNegative",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeFloat",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeNotArray",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeBool",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"OffsetsThree",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsNegative",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsReversed",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
                         kFourBytes),
       ErrorCode::kOffsetsReversed, "'w'"},
      {"ShapeOverflow",
       safetensors_bytes(
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
           kFourBytes),
       ErrorCode::kShapeOverflow, "'w'"},
      {"ByteSizeOverflow",
       safetensors_bytes(
           "{\"w\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}",
           kFourBytes),
       ErrorCode::kShapeOverflow, "'w'"},
      {"SubByteOddCount",
       safetensors_bytes("{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", "ab"),
       ErrorCode::kSubByteMisaligned, "'w'"},
      {"F6NotWholeBytes",
       safetensors_bytes("{\"w\":{\"dtype\":\"F6_E2M3\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                         "ab"),
       ErrorCode::kSubByteMisaligned, "'w'"},
      {"SizeMismatch",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kSizeMismatch, "'w'"},
      {"OffsetGapAtStart",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                         std::string(8, 'x')),
       ErrorCode::kOffsetGap, "'w'"},
      {"OffsetGapBetween",
       safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                         std::string(12, 'x')),
       ErrorCode::kOffsetGap, "'b'"},
      {"OffsetOverlap",
       safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                         std::string(8, 'x')),
       ErrorCode::kOffsetOverlap, "'b'"},
      {"DataPastEnd",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                         kFourBytes),
       ErrorCode::kDataOutOfBounds, "'w'"},
      {"TrailingBytes",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                         kFourBytes + "zz"),
       ErrorCode::kTrailingBytes, ""},
      {"TrailingBytesNoTensors", safetensors_bytes("{}", "z"), ErrorCode::kTrailingBytes, ""},
      {"DuplicateTensor",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                         std::string(8, 'x')),
       ErrorCode::kDuplicateTensor, "'w'"},
      {"TensorNamedMetadata",
       safetensors_bytes(
           "{\"__metadata__\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
           kFourBytes),
       ErrorCode::kReservedName, "__metadata__"},
      {"MetadataNotObject", safetensors_bytes("{\"__metadata__\":\"pt\"}", ""),
       ErrorCode::kBadMetadata, ""},
      {"MetadataNonString", safetensors_bytes("{\"__metadata__\":{\"format\":1}}", ""),
       ErrorCode::kBadMetadata, "format"},
      {"MetadataNested", safetensors_bytes("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", ""),
       ErrorCode::kBadMetadata, "'a'"},
      // Cases added for the rules past the reference's: one defect each, as above.
      {"HeaderLeadingSpace", safetensors_bytes(" {}     ", ""), ErrorCode::kHeaderNotObject, ""},
      {"HeaderUtf8AboveMax", safetensors_bytes("{\"\xf4\x90\x80\x80\":1}", ""),
       ErrorCode::kHeaderNotUtf8, ""},
      {"HeaderUtf8Truncated", safetensors_bytes("{}  \xe6\x9d", ""), ErrorCode::kHeaderNotUtf8, ""},
      {"HeaderUtf8OverlongThreeByte", safetensors_bytes("{\"\xe0\x80\xaf\":1}", ""),
       ErrorCode::kHeaderNotUtf8, ""},
      {"HeaderNulPadding", safetensors_bytes(std::string("{}\0\0\0\0\0\0", 8), ""),
       ErrorCode::kHeaderNotJson, ""},
      {"HeaderDeepNesting", safetensors_bytes("{\"a\":" + std::string(1'000'000, '[') + "}", ""),
       ErrorCode::kHeaderNotJson, "nests too deeply"},
      {"MetadataTwice",
       safetensors_bytes("{\"__metadata__\":{},\"__metadata__\":{\"a\":\"b\"}}", ""),
       ErrorCode::kBadMetadata, "__metadata__"},
      {"MetadataKeyTwice", safetensors_bytes("{\"__metadata__\":{\"a\":\"b\",\"a\":\"c\"}}", ""),
       ErrorCode::kBadMetadata, "'a'"},
      {"MetadataNestedKeyTwice",
       safetensors_bytes("{\"__metadata__\":{\"a\":{\"b\":\"c\",\"b\":\"d\"}}}", ""),
       ErrorCode::kBadMetadata, "'b'"},
      {"TensorNull", safetensors_bytes("{\"w\":null}", ""), ErrorCode::kTensorNotObject, "'w'"},
      {"MissingShape",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", kFourBytes),
       ErrorCode::kMissingKey, "shape"},
      {"DtypeNull",
       safetensors_bytes("{\"w\":{\"dtype\":null,\"shape\":[1],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadDtypeType, "'w'"},
      {"ShapeExponent",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeMinusZero",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[-0],\"data_offsets\":[0,0]}}", ""),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeBeyond64Bits",
       safetensors_bytes(
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}",
           kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"ShapeString",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kBadShape, "'w'"},
      {"OffsetsFloat",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsOne",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsObject",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"0\":4}}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsBool",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[false,4]}}",
                         kFourBytes),
       ErrorCode::kBadOffsets, "'w'"},
      {"OffsetsHuge",
       safetensors_bytes("{\"w\":{\"dtype\":\"U8\",\"shape\":[1152921504606846976],"
                         "\"data_offsets\":[0,1152921504606846976]}}",
                         kFourBytes),
       ErrorCode::kDataOutOfBounds, "'w'"},
      {"SizeMismatchZeroSize",
       safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kSizeMismatch, "'w'"},
      {"ZeroSizeInsideAnother",
       safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                         std::string(8, 'x')),
       ErrorCode::kOffsetOverlap, "'b'"},
      {"DuplicateTensorFarApart",
       safetensors_bytes("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                         "\"__metadata__\":{},"
                         "\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]}}",
                         "x"),
       ErrorCode::kDuplicateTensor, "'w'"},
      {"EmptyTensorName",
       safetensors_bytes("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                         kFourBytes),
       ErrorCode::kEmptyName, ""},
  };
}

void PrintTo(const CorruptCase& c, std::ostream* os) {
  *os << c.name;
}

class SafetensorsCorrupt : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(SafetensorsCorrupt, IsRefusedWithItsOwnCode) {
  const CorruptCase& c = GetParam();
  const std::string label = std::string("corrupt/") + c.name + ".safetensors";
  try {
    alloy::parse_safetensors(reinterpret_cast<const uint8_t*>(c.bytes.data()), c.bytes.size(),
                             label);
    FAIL() << c.name << " was accepted";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(alloy::error_code_name(e.code()), std::string(alloy::error_code_name(c.expected)))
        << c.name << ": " << e.what();
    const std::string message = e.what();
    EXPECT_NE(message.find(label), std::string::npos)
        << "message does not name the file: " << message;
    EXPECT_NE(message.find(c.must_mention), std::string::npos)
        << "message lacks '" << c.must_mention << "': " << message;
  }
}

INSTANTIATE_TEST_SUITE_P(Safetensors, SafetensorsCorrupt, ::testing::ValuesIn(corrupt_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SafetensorsCorruptTable, CoversEveryFileStructureCode) {
  const auto cases = corrupt_cases();
  std::set<ErrorCode> codes;
  for (const auto& c : cases) codes.insert(c.expected);
  EXPECT_GE(cases.size(), 30u);
  // The file-structure codes are contiguous in error.h, from kFileTooSmall to kEmptyName.
  for (int code = static_cast<int>(ErrorCode::kFileTooSmall);
       code <= static_cast<int>(ErrorCode::kEmptyName); ++code) {
    EXPECT_TRUE(codes.count(static_cast<ErrorCode>(code)))
        << "no corrupt case for " << alloy::error_code_name(static_cast<ErrorCode>(code));
  }
}

alloy::SafetensorsHeader parse(const std::string& bytes) {
  return alloy::parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                  "valid");
}

TEST(SafetensorsValid, ScalarZeroSizeAndOrdering) {
  // Written out of offset order on purpose: the reader sorts by offset.
  const auto header =
      parse(safetensors_bytes("{\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                              "\"z\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[4,4]},"
                              "\"e\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
                              "\"a\":{\"dtype\":\"U8\",\"shape\":[2,1],\"data_offsets\":[4,6]}}   ",
                              std::string(6, 'q')));
  ASSERT_EQ(header.tensors.size(), 4u);
  EXPECT_EQ(header.tensors[0].name, "b");
  EXPECT_TRUE(header.tensors[0].shape.empty());
  EXPECT_EQ(header.tensors[0].numel(), 1u);
  EXPECT_EQ(header.tensors.back().name, "a");
  EXPECT_EQ(header.find("z") >= 0, true);
  EXPECT_EQ(header.tensors[header.find("e")].numel(), 0u);
  EXPECT_EQ(header.data_bytes(), 6u);
  EXPECT_TRUE(header.metadata.empty());
}

TEST(SafetensorsValid, EveryDtype) {
  std::string header = "{";
  uint64_t offset = 0;
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto& info = alloy::dtype_info(static_cast<alloy::DType>(i));
    const uint64_t count = 8;  // 8 elements fill whole bytes for every width, 4 and 6 bits included
    const uint64_t bytes = count * info.bits / 8;
    if (i) header += ",";
    header += std::string("\"t_") + info.name + "\":{\"dtype\":\"" + info.name +
              "\",\"shape\":[2,4]," + "\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  const auto parsed = parse(safetensors_bytes(header, std::string(offset, '\x5a')));
  ASSERT_EQ(parsed.tensors.size(), static_cast<size_t>(alloy::kDTypeCount));
  std::set<alloy::DType> seen;
  for (const auto& t : parsed.tensors) seen.insert(t.dtype);
  EXPECT_EQ(seen.size(), static_cast<size_t>(alloy::kDTypeCount));
}

TEST(SafetensorsValid, MetadataEmptyAndPresent) {
  EXPECT_TRUE(parse(safetensors_bytes("{\"__metadata__\":{}}", "")).metadata.empty());
  const auto header =
      parse(safetensors_bytes("{\"__metadata__\":{\"format\":\"pt\",\"x\":\"\xc3\xa9\"}}", ""));
  EXPECT_EQ(header.metadata.at("format"), "pt");
  EXPECT_EQ(header.metadata.at("x"), "\xc3\xa9");
  EXPECT_TRUE(header.tensors.empty());
}

TEST(SafetensorsValid, EmptyModel) {
  // The reference accepts a header with no tensors (it writes "{}" plus 6 spaces for one).
  for (const std::string header : {"{}", "{}      "}) {
    const auto parsed = parse(safetensors_bytes(header, ""));
    EXPECT_TRUE(parsed.tensors.empty());
    EXPECT_EQ(parsed.data_bytes(), 0u);
    EXPECT_EQ(parsed.data_start(), 8 + header.size());
  }
}

TEST(SafetensorsValid, ZeroSizeTensorsSharingAnOffsetAreOrderedByName) {
  const auto header =
      parse(safetensors_bytes("{\"c\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                              "\"a\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                              "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                              "x"));
  ASSERT_EQ(header.tensors.size(), 3u);
  EXPECT_EQ(header.tensors[0].name, "a");
  EXPECT_EQ(header.tensors[1].name, "c");
  EXPECT_EQ(header.tensors[2].name, "b");
}

TEST(SafetensorsValid, MetadataThatLooksLikeATensorButIsAllStrings) {
  // An object of strings under "__metadata__" is metadata, whatever its keys are called.
  const auto header =
      parse(safetensors_bytes("{\"__metadata__\":{\"dtype\":\"F32\",\"shape\":\"[1]\"}}", ""));
  EXPECT_EQ(header.metadata.at("shape"), "[1]");
  EXPECT_TRUE(header.tensors.empty());
}

TEST(SafetensorsValid, UnicodeNames) {
  const auto header =
      parse(safetensors_bytes("{\"\xe6\x9d\x83\xe9\x87\x8d.\xf0\x9f\x98\x80\":{\"dtype\":\"U8\","
                              "\"shape\":[1],\"data_offsets\":[0,1]}}",
                              "x"));
  EXPECT_EQ(header.tensors.at(0).name, "\xe6\x9d\x83\xe9\x87\x8d.\xf0\x9f\x98\x80");
}

TEST(SafetensorsFile, MapsAndViewsTensorBytes) {
  alloy::test::TempDir dir;
  const std::string data = "\x01\x02\x03\x04\x05\x06";
  alloy::test::write_bytes(
      dir / "m.safetensors",
      safetensors_bytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                        "\"b\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[2,6]}}",
                        data));
  alloy::SafetensorsFile file((dir / "m.safetensors").string());
  const auto* b = file.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(file.data(*b)[0], 3);
  EXPECT_EQ(file.data(*b)[3], 6);
  EXPECT_EQ(file.find("missing"), nullptr);
  file.release(*b);  // dropping pages must not change what a later read sees
  EXPECT_EQ(file.data(*b)[1], 4);
}

TEST(SafetensorsFile, EmptyFileIsTooSmallNotAMapFailure) {
  alloy::test::TempDir dir;
  alloy::test::write_bytes(dir / "empty.safetensors", "");
  try {
    alloy::SafetensorsFile file((dir / "empty.safetensors").string());
    FAIL();
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFileTooSmall);
    EXPECT_NE(std::string(e.what()).find("empty.safetensors"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsFile, FifoAndDirectoryAreRefusedWithoutBlocking) {
  alloy::test::TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo.safetensors").c_str(), 0600), 0);
  fs::create_directories(dir / "dir.safetensors");
  for (const char* name : {"fifo.safetensors", "dir.safetensors"}) {
    try {
      alloy::SafetensorsFile file((dir / name).string());
      FAIL() << name;
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kIo) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

TEST(SafetensorsFile, ReleaseAndPrefetchKeepContentAcrossPages) {
  // A tensor spanning several pages, released in odd pieces and wholesale (with lengths past the
  // end of the file): every later read still sees the file's bytes.
  alloy::test::TempDir dir;
  const uint64_t count = 5000;  // 20,000 bytes: several 4 KiB pages, not page aligned
  std::string data(count * 4, '\0');
  for (uint64_t i = 0; i < count; ++i) {
    const uint32_t v = static_cast<uint32_t>(i * 2654435761u);
    std::memcpy(&data[i * 4], &v, 4);
  }
  alloy::test::write_safetensors(
      dir / "big.safetensors",
      "{" + alloy::test::tensor_entry("u", "U8", {3}, 0, 3) + "," +
          alloy::test::tensor_entry("w", "U32", {count}, 3, 3 + count * 4) + "}",
      "abc" + data);
  alloy::SafetensorsFile file((dir / "big.safetensors").string());
  const auto& w = *file.find("w");
  file.prefetch(w);
  const alloy::MappedFile mapped((dir / "big.safetensors").string());
  mapped.release(0, ~uint64_t{0});
  mapped.prefetch(5, ~uint64_t{0});
  mapped.release(mapped.size(), 10);
  mapped.release(4095, 2);
  file.release(w);
  file.release(*file.find("u"));
  EXPECT_EQ(std::memcmp(file.data(w), data.data(), data.size()), 0);
  EXPECT_EQ(std::memcmp(mapped.data() + file.header().data_start() + 3, data.data(), data.size()),
            0);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file.data(*file.find("u"))), 3), "abc");
}

TEST(SafetensorsFile, MissingFileIsAnIoError) {
  try {
    alloy::SafetensorsFile file("/nonexistent/alloy/x.safetensors");
    FAIL();
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/alloy/x.safetensors"), std::string::npos);
  }
}

}  // namespace

namespace {

// A header of `count` one-element F32 tensors in file order, optionally repeating the first name
// at the end. Returns the whole file's bytes.
using alloy::test::TempDir;
using alloy::test::tensor_entry;
using alloy::test::write_bytes;

std::string many_tensors(size_t count, bool repeat_first) {
  std::string header = "{";
  for (size_t i = 0; i < count; ++i) {
    if (i) header += ",";
    header += tensor_entry("model.layers." + std::to_string(i / 10) + ".p" + std::to_string(i % 10), "F32", {1},
                           4 * i, 4 * i + 4);
  }
  if (repeat_first) header += "," + tensor_entry("model.layers.0.p0", "F32", {1}, 4 * count, 4 * count + 4);
  header += "}";
  return safetensors_bytes(header, std::string(4 * (count + repeat_first), '\0'));
}

}  // namespace

// A header with 200,000 tensors: parsed in one pass (the former callback parser rescanned the
// whole object per tensor, about an hour for this size), a repeated name is still caught, and
// every tensor is found by name through the file's hash index.
TEST(SafetensorsValid, TwoHundredThousandTensorsParseAndIndex) {
  const size_t count = 200000;
  const alloy::SafetensorsHeader header = parse(many_tensors(count, false));
  ASSERT_EQ(header.tensors.size(), count);
  EXPECT_EQ(header.tensors[123456].name, "model.layers.12345.p6");
  EXPECT_EQ(header.tensors[123456].data_begin, 4u * 123456);
  try {
    parse(many_tensors(count, true));
    FAIL() << "a repeated tensor name was accepted";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kDuplicateTensor);
    EXPECT_NE(std::string(e.what()).find("'model.layers.0.p0' appears twice"), std::string::npos) << e.what();
  }
  TempDir dir;
  write_bytes(dir.path() / "big.safetensors", many_tensors(count, false));
  const alloy::SafetensorsFile file((dir.path() / "big.safetensors").string());
  const alloy::Model model = alloy::Model::open(dir.path() / "big.safetensors");
  for (size_t i = 0; i < count; i += 997) {
    const std::string& name = header.tensors[i].name;
    ASSERT_EQ(file.index_of(name), long(i));
    ASSERT_EQ(file.find(name)->data_begin, 4u * i);
    ASSERT_EQ(model.find(name)->info->data_begin, 4u * i);
  }
  EXPECT_EQ(file.find("model.layers.0.p"), nullptr);
  EXPECT_EQ(model.find("model.layers.99999999.p0"), nullptr);
}
