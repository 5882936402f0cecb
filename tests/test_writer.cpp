// The writer: round trips for every dtype, byte-for-byte determinism, sharding, failure paths, and
// acceptance by an independent reader that follows only the public spec (tests/spec_reader.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "alloy/error.h"
#include "alloy/model.h"
#include "alloy/sha256.h"
#include "alloy/writer.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::TempDir;

struct Tensors {
  std::vector<alloy::TensorSpec> specs;
  std::vector<std::string> bytes;
  std::vector<const void*> pointers() const {
    std::vector<const void*> p;
    for (const auto& b : bytes) p.push_back(b.data());
    return p;
  }
};

// One tensor of every dtype (shapes chosen so sub-byte types fill whole bytes), a scalar, and
// zero-size tensors, filled with seeded random bytes.
Tensors every_dtype(uint32_t seed) {
  Tensors t;
  std::mt19937 rng(seed);
  for (int i = 0; i < alloy::kDTypeCount; ++i) {
    const auto dtype = static_cast<alloy::DType>(i);
    t.specs.push_back({std::string("t.") + alloy::dtype_name(dtype), dtype, {4, 6}});
  }
  t.specs.push_back({"scalar", alloy::DType::F32, {}});
  t.specs.push_back({"empty", alloy::DType::BF16, {0}});
  t.specs.push_back({"empty2", alloy::DType::I64, {3, 0}});
  for (const auto& spec : t.specs) {
    std::string b(spec.nbytes(), '\0');
    for (auto& c : b) c = static_cast<char>(rng());
    t.bytes.push_back(b);
  }
  return t;
}

void write_model(const fs::path& dir, const Tensors& t, uint64_t shard_bytes, const std::vector<size_t>& order,
                 int threads = 1) {
  std::vector<alloy::TensorSpec> specs;
  for (size_t i : order) specs.push_back(t.specs[i]);
  alloy::ShardedWriter writer(dir, specs, shard_bytes, {{"source", "test"}});
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      for (size_t k = static_cast<size_t>(w); k < order.size(); k += static_cast<size_t>(threads)) {
        const size_t i = order[k];
        writer.write(t.specs[i].name, t.bytes[i].data(), t.bytes[i].size());
      }
    });
  }
  for (auto& th : pool) th.join();
  writer.finish();
}

std::vector<size_t> identity(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

void expect_round_trip(const fs::path& dir, const Tensors& t) {
  const auto model = alloy::Model::open(dir);
  ASSERT_EQ(model.tensors().size(), t.specs.size());
  for (size_t i = 0; i < t.specs.size(); ++i) {
    const auto* tensor = model.find(t.specs[i].name);
    ASSERT_NE(tensor, nullptr) << t.specs[i].name;
    EXPECT_EQ(tensor->info->dtype, t.specs[i].dtype);
    EXPECT_EQ(tensor->info->shape, t.specs[i].shape);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(tensor->data()), tensor->info->nbytes()), t.bytes[i])
        << t.specs[i].name;
  }
  for (const auto& shard : model.shards()) EXPECT_EQ(shard->metadata().at("format"), "pt");
}

size_t entries(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(Writer, RoundTripEveryDtypeSingleFile) {
  TempDir dir;
  const auto t = every_dtype(1);
  write_model(dir.path(), t, alloy::parse_byte_size("5B"), identity(t.specs.size()));
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_EQ(entries(dir.path()), 1u);
  expect_round_trip(dir.path(), t);
}

TEST(Writer, SameTensorsSameBytesWhateverTheOrderOrThreads) {
  TempDir a, b, c;
  const auto t = every_dtype(2);
  write_model(a.path(), t, 1000, identity(t.specs.size()));
  // The declaration order decides the sharding, so keep it and vary the writing threads.
  write_model(b.path(), t, 1000, identity(t.specs.size()), 2);
  write_model(c.path(), t, 1000, identity(t.specs.size()), 3);
  for (const auto& entry : fs::directory_iterator(a.path())) {
    const auto name = entry.path().filename();
    EXPECT_EQ(alloy::test::read_bytes(a.path() / name), alloy::test::read_bytes(b.path() / name)) << name;
    EXPECT_EQ(alloy::test::read_bytes(a.path() / name), alloy::test::read_bytes(c.path() / name)) << name;
  }
}

TEST(Writer, DeclarationOrderDoesNotChangeASingleFile) {
  TempDir a, b;
  const auto t = every_dtype(6);
  auto order = identity(t.specs.size());
  write_model(a.path(), t, 1 << 20, order);
  std::reverse(order.begin(), order.end());
  write_model(b.path(), t, 1 << 20, order, 2);
  EXPECT_EQ(alloy::test::read_bytes(a / "model.safetensors"), alloy::test::read_bytes(b / "model.safetensors"));
}

TEST(Writer, HeaderIsPaddedAndOrderedByAlignmentThenName) {
  TempDir dir;
  Tensors t;
  t.specs = {{"b16", alloy::DType::BF16, {3}}, {"a8", alloy::DType::U8, {1}}, {"z64", alloy::DType::F64, {1}},
             {"a64", alloy::DType::I64, {1}}};
  for (const auto& s : t.specs) t.bytes.emplace_back(s.nbytes(), 'x');
  write_model(dir.path(), t, 1 << 20, identity(4));
  const std::string raw = alloy::test::read_bytes(dir / "model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = raw.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"source\":\"test\"},\"a64\":", 0), 0u) << header;
  EXPECT_LT(header.find("\"a64\""), header.find("\"z64\""));
  EXPECT_LT(header.find("\"z64\""), header.find("\"b16\""));
  EXPECT_LT(header.find("\"b16\""), header.find("\"a8\""));
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
}

TEST(Writer, ShardsByBudgetWithIndex) {
  TempDir dir;
  Tensors t;
  for (int i = 0; i < 5; ++i) {
    t.specs.push_back({"w" + std::to_string(i), alloy::DType::F32, {100}});  // 400 bytes each
    t.bytes.emplace_back(400, static_cast<char>('a' + i));
  }
  t.specs.push_back({"big", alloy::DType::F32, {1000}});  // 4000 bytes: larger than the budget
  t.bytes.emplace_back(4000, 'B');
  write_model(dir.path(), t, 1000, identity(t.specs.size()));
  // w0,w1 | w2,w3 | w4 | big
  for (const char* name : {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                           "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir / name)) << name;
  }
  const auto index = nlohmann::json::parse(alloy::test::read_bytes(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 6000);
  EXPECT_EQ(index["weight_map"]["w3"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(entries(dir.path()), 5u);
  expect_round_trip(dir.path(), t);
}

TEST(Writer, ParseByteSize) {
  EXPECT_EQ(alloy::parse_byte_size("5B"), 5'000'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("500M"), 500'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("1K"), 1000u);
  EXPECT_EQ(alloy::parse_byte_size("2G"), 2'000'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("123"), 123u);
  for (const char* bad : {"", "5X", "-1", "1.5B", "B", "0", "99999999999T", "18446744073709551616"}) {
    EXPECT_THROW(alloy::parse_byte_size(bad), alloy::Error) << bad;
  }
}

TEST(Writer, UnfinishedWriterLeavesNothing) {
  TempDir dir;
  const auto t = every_dtype(3);
  {
    alloy::ShardedWriter writer(dir.path(), t.specs, 100, {});
    writer.write(t.specs[0].name, t.bytes[0].data(), t.bytes[0].size());
    EXPECT_THROW(writer.finish(), alloy::Error);
  }
  EXPECT_EQ(entries(dir.path()), 0u);
  {
    alloy::ShardedWriter writer(dir.path(), t.specs, 100, {});
  }
  EXPECT_EQ(entries(dir.path()), 0u);
}

TEST(Writer, RefusesBadSpecsAndWrites) {
  TempDir dir;
  using alloy::DType;
  const std::vector<std::vector<alloy::TensorSpec>> bad = {
      {{"a", DType::F32, {1}}, {"a", DType::F32, {1}}},
      {{"", DType::F32, {1}}},
      {{"__metadata__", DType::F32, {1}}},
      {{"odd", DType::F4, {3}}},
      {{"huge", DType::F64, {1ull << 62, 8}}},
  };
  for (const auto& specs : bad) {
    EXPECT_THROW(alloy::ShardedWriter(dir.path(), specs, 100), alloy::Error) << specs[0].name;
  }
  alloy::ShardedWriter writer(dir.path(), {{"a", DType::F32, {2}}}, 100);
  const float values[2] = {1, 2};
  EXPECT_THROW(writer.write("a", values, 4), alloy::Error);
  EXPECT_THROW(writer.write("b", values, 8), alloy::Error);
  writer.write("a", values, 8);
  EXPECT_THROW(writer.write("a", values, 8), alloy::Error);
  EXPECT_EQ(writer.finish(), std::vector<std::string>{"model.safetensors"});
}

TEST(Writer, UnwritableDirectoryIsAnIoError) {
  try {
    alloy::ShardedWriter writer("/nonexistent/alloy-out", {{"a", alloy::DType::F32, {1}}}, 100);
    FAIL();
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/alloy-out"), std::string::npos);
  }
}

TEST(Writer, SingleFileConvenience) {
  TempDir dir;
  const auto t = every_dtype(4);
  alloy::write_safetensors_file(dir / "x.safetensors", t.specs, t.pointers(), {{"k", "v"}});
  EXPECT_EQ(entries(dir.path()), 1u);
  alloy::SafetensorsFile file((dir / "x.safetensors").string());
  EXPECT_EQ(file.metadata().at("k"), "v");
  EXPECT_EQ(file.tensors().size(), t.specs.size());
}

TEST(WriterSpec, IndependentSpecReaderAcceptsAlloyOutput) {
  int status = 0;
  alloy::test::run_command("python3 -c 'import json' 2>/dev/null", &status);
  if (status != 0) GTEST_SKIP() << "python3 not available";
  TempDir single, sharded;
  const auto t = every_dtype(5);
  write_model(single.path(), t, alloy::parse_byte_size("5B"), identity(t.specs.size()));
  write_model(sharded.path(), t, 200, identity(t.specs.size()));
  for (const fs::path& dir : {single.path(), sharded.path()}) {
    std::string files;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".safetensors") files += " '" + entry.path().string() + "'";
    }
    const std::string out = alloy::test::run_command(
        "python3 '" + std::string(ALLOY_SOURCE_DIR) + "/tests/spec_reader.py'" + files, &status);
    ASSERT_EQ(status, 0) << out;
    const auto report = nlohmann::json::parse(out);
    ASSERT_EQ(report["tensors"].size(), t.specs.size());
    for (size_t i = 0; i < t.specs.size(); ++i) {
      const auto& entry = report["tensors"][t.specs[i].name];
      EXPECT_EQ(entry["sha256"], alloy::sha256_hex(t.bytes[i].data(), t.bytes[i].size())) << t.specs[i].name;
      EXPECT_EQ(entry["dtype"], alloy::dtype_name(t.specs[i].dtype));
      EXPECT_EQ(entry["shape"].get<std::vector<uint64_t>>(), t.specs[i].shape);
    }
    EXPECT_EQ(report["metadata"]["format"], "pt");
  }
}

}  // namespace
