// The writer: round trips for every dtype, byte-for-byte determinism, sharding, failure paths, and
// acceptance by an independent reader that follows only the public spec (tests/spec_reader.py).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/sha256.h"
#include "alloy/core/writer.h"
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

void write_model(const fs::path& dir, const Tensors& t, uint64_t shard_bytes,
                 const std::vector<size_t>& order, int threads = 1) {
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
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(tensor->data()), tensor->info->nbytes()),
              t.bytes[i])
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
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(a.path())) {
    const auto name = entry.path().filename();
    EXPECT_EQ(alloy::test::read_bytes(a.path() / name), alloy::test::read_bytes(b.path() / name))
        << name;
    EXPECT_EQ(alloy::test::read_bytes(a.path() / name), alloy::test::read_bytes(c.path() / name))
        << name;
    ++files;
  }
  EXPECT_GT(files, 2u);  // several shards and the index
  EXPECT_EQ(entries(b.path()), files);
  EXPECT_EQ(entries(c.path()), files);
}

TEST(Writer, ShardedBytesDoNotDependOnOrderWithinAShard) {
  // Four 400-byte tensors, budget 800: {w0, w1} | {w2, w3} whether declared in order or pairwise
  // swapped, and whichever thread writes which.
  Tensors t;
  for (int i = 0; i < 4; ++i) {
    t.specs.push_back({"w" + std::to_string(i), alloy::DType::F32, {100}});
    t.bytes.emplace_back(400, static_cast<char>('a' + i));
  }
  TempDir a, b;
  write_model(a.path(), t, 800, {0, 1, 2, 3});
  write_model(b.path(), t, 800, {1, 0, 3, 2}, 4);
  for (const char* name : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                           "model.safetensors.index.json"}) {
    EXPECT_EQ(alloy::test::read_bytes(a / name), alloy::test::read_bytes(b / name)) << name;
  }
}

// Hashing as written: each file's sha256 equals the hash of the file on disk, whether the tensors
// come in write_order() (hashed from the bytes given), reversed (every tensor read back from the
// file when its turn comes), or from several threads; in one file or in shards with an index.
// Modes 3 to 5 write each tensor in parts of `part` bytes (write_part), as the merge executor's
// output windows do: in order, in reverse order, and from 3 threads.
void expect_hashes_as_written(const Tensors& t, const std::vector<uint64_t>& budgets, size_t part) {
  for (const uint64_t budget : budgets) {
    for (const int mode : {0, 1, 2, 3, 4, 5}) {
      TempDir dir;
      alloy::ShardedWriter writer(dir.path(), t.specs, budget, {{"source", "test"}}, true);
      std::vector<size_t> order = writer.write_order();
      ASSERT_EQ(order.size(), t.specs.size());
      if (mode == 1 || mode == 4) std::reverse(order.begin(), order.end());
      const int threads = mode == 2 || mode == 5 ? 3 : 1;
      const auto put = [&](size_t i) {
        const std::string& bytes = t.bytes[i];
        if (mode < 3) return writer.write(t.specs[i].name, bytes.data(), bytes.size());
        // An empty tensor: one empty part.
        for (size_t at = 0; at == 0 || at < bytes.size(); at += part) {
          writer.write_part(t.specs[i].name, at, bytes.data() + at,
                            std::min(part, bytes.size() - at));
        }
      };
      std::vector<std::thread> pool;
      for (int w = 0; w < threads; ++w) {
        pool.emplace_back([&, w] {
          for (size_t k = static_cast<size_t>(w); k < order.size(); k += static_cast<size_t>(threads)) put(order[k]);
        });
      }
      for (auto& th : pool) th.join();
      const std::vector<std::string> names = writer.finish();
      const auto& files = writer.written_files();
      ASSERT_EQ(files.size(), names.size());
      EXPECT_EQ(files.size() > 1, budget == budgets.back());
      for (size_t f = 0; f < files.size(); ++f) {
        EXPECT_EQ(files[f].name, names[f]);
        EXPECT_EQ(files[f].size, fs::file_size(dir / names[f])) << names[f];
        EXPECT_EQ(files[f].sha256, alloy::sha256_file(dir / names[f])) << names[f] << " mode " << mode;
      }
    }
  }
}

TEST(Writer, HashesEveryFileAsWritten) {
  const auto t = every_dtype(7);
  expect_hashes_as_written(t, {alloy::parse_byte_size("5B"), uint64_t{300}}, 5);
  // Without hashing: sizes, no digests.
  TempDir dir;
  alloy::ShardedWriter writer(dir.path(), t.specs, 300);
  for (size_t i : writer.write_order()) writer.write(t.specs[i].name, t.bytes[i].data(), t.bytes[i].size());
  writer.finish();
  for (const auto& f : writer.written_files()) {
    EXPECT_EQ(f.sha256, "");
    EXPECT_EQ(f.size, fs::file_size(dir / f.name));
  }
}

// Parts of the merge's sizes (its 2 MiB output windows; here 300 KiB) of tensors of 0.3 to 1.5
// MiB: the same digests in order, reversed (read back in windows of 1 MiB) and from several
// threads. Odd sizes, so that parts straddle the sha256 blocks and the read-back windows.
TEST(Writer, HashesLargePartsAsWritten) {
  Tensors t;
  std::mt19937 rng(11);
  for (const size_t n : {size_t{1} << 20, (size_t{3} << 19) + 7, size_t{300} << 10}) {
    t.specs.push_back({"w" + std::to_string(t.specs.size()), alloy::DType::U8, {n}});
    std::string bytes(n, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    t.bytes.push_back(bytes);
  }
  expect_hashes_as_written(t, {uint64_t{1} << 30, uint64_t{2} << 20}, (size_t{300} << 10) + 3);
}

TEST(Writer, ExactBytesOfASmallFile) {
  TempDir dir;
  const float values[2] = {1.0f, 2.0f};
  alloy::write_safetensors_file(dir / "one.safetensors", {{"a", alloy::DType::F32, {2}}}, {values});
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_"
      "offsets\":[0,8]}}";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  std::string expected = alloy::test::safetensors_bytes(padded, "");
  expected.append(reinterpret_cast<const char*>(values), sizeof values);
  EXPECT_EQ(alloy::test::read_bytes(dir / "one.safetensors"), expected);
}

TEST(Writer, DeclarationOrderDoesNotChangeASingleFile) {
  TempDir a, b;
  const auto t = every_dtype(6);
  auto order = identity(t.specs.size());
  write_model(a.path(), t, 1 << 20, order);
  std::reverse(order.begin(), order.end());
  write_model(b.path(), t, 1 << 20, order, 2);
  EXPECT_EQ(alloy::test::read_bytes(a / "model.safetensors"),
            alloy::test::read_bytes(b / "model.safetensors"));
}

TEST(Writer, HeaderIsPaddedAndOrderedByAlignmentThenName) {
  TempDir dir;
  Tensors t;
  t.specs = {{"b16", alloy::DType::BF16, {3}},
             {"a8", alloy::DType::U8, {1}},
             {"z64", alloy::DType::F64, {1}},
             {"a64", alloy::DType::I64, {1}}};
  for (const auto& s : t.specs) t.bytes.emplace_back(s.nbytes(), 'x');
  write_model(dir.path(), t, 1 << 20, identity(4));
  const std::string raw = alloy::test::read_bytes(dir / "model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = raw.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"source\":\"test\"},\"a64\":", 0),
            0u)
      << header;
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
  for (const char* name :
       {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir / name)) << name;
  }
  const auto index =
      nlohmann::json::parse(alloy::test::read_bytes(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 6000);
  EXPECT_EQ(index["weight_map"]["w3"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(entries(dir.path()), 5u);
  expect_round_trip(dir.path(), t);
}

TEST(Writer, ShardCountAroundTheBudget) {
  Tensors t;
  for (int i = 0; i < 4; ++i) {
    t.specs.push_back({"w" + std::to_string(i), alloy::DType::F32, {100}});  // 400 bytes each
    t.bytes.emplace_back(400, static_cast<char>('a' + i));
  }
  struct Case {
    uint64_t budget;
    size_t per_shard;  // tensors that fit in one shard
  };
  for (const Case c : {Case{1, 1}, Case{399, 1}, Case{400, 1}, Case{799, 1}, Case{800, 2},
                       Case{801, 2}, Case{1199, 2}, Case{1200, 3}, Case{1599, 3}, Case{1600, 4},
                       Case{alloy::parse_byte_size("5B"), 4}}) {
    const size_t shards = (4 + c.per_shard - 1) / c.per_shard;
    TempDir dir;
    {
      std::vector<alloy::TensorSpec> specs = t.specs;
      alloy::ShardedWriter writer(dir.path(), specs, c.budget);
      EXPECT_EQ(writer.shard_count(), shards) << c.budget;
    }
    EXPECT_EQ(entries(dir.path()), 0u);
    write_model(dir.path(), t, c.budget, identity(t.specs.size()));
    if (shards == 1) {
      EXPECT_EQ(entries(dir.path()), 1u);
      EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
      continue;
    }
    EXPECT_EQ(entries(dir.path()), shards + 1) << c.budget;
    const auto index =
        nlohmann::json::parse(alloy::test::read_bytes(dir / "model.safetensors.index.json"));
    EXPECT_EQ(index["metadata"]["total_size"], 1600);
    const std::string suffix = "-of-0000" + std::to_string(shards) + ".safetensors";
    for (size_t i = 0; i < 4; ++i) {
      const std::string shard = "model-0000" + std::to_string(i / c.per_shard + 1) + suffix;
      EXPECT_EQ(index["weight_map"]["w" + std::to_string(i)], shard) << c.budget;
      EXPECT_TRUE(fs::exists(dir / shard));
    }
    expect_round_trip(dir.path(), t);
  }
}

TEST(Writer, IndexTextIsHuggingFaceStyle) {
  TempDir dir;
  Tensors t;
  for (const char* name : {"z", "a", "m"}) {
    t.specs.push_back({name, alloy::DType::U8, {10}});
    t.bytes.emplace_back(10, 'x');
  }
  write_model(dir.path(), t, 10, identity(3));
  EXPECT_EQ(alloy::test::read_bytes(dir / "model.safetensors.index.json"),
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 30\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"a\": \"model-00002-of-00003.safetensors\",\n"
            "    \"m\": \"model-00003-of-00003.safetensors\",\n"
            "    \"z\": \"model-00001-of-00003.safetensors\"\n"
            "  }\n"
            "}\n");
}

TEST(Writer, ParseByteSize) {
  EXPECT_EQ(alloy::parse_byte_size("5B"), 5'000'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("500M"), 500'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("1K"), 1000u);
  EXPECT_EQ(alloy::parse_byte_size("2G"), 2'000'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("123"), 123u);
  EXPECT_EQ(alloy::parse_byte_size("3T"), 3'000'000'000'000u);
  EXPECT_EQ(alloy::parse_byte_size("18446744073709551615"), 18446744073709551615u);
  try {
    alloy::parse_byte_size("5X");
    FAIL();
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'5X'"), std::string::npos) << e.what();
  }
  for (const char* bad : {"", "5X", "-1", "1.5B", "B", "0", "0M", " 5B", "5B ", "5BB", "+5",
                          "99999999999T", "18446744073709551616", "18446744073709552K"}) {
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
  { alloy::ShardedWriter writer(dir.path(), t.specs, 100, {}); }
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
  const std::vector<alloy::ErrorCode> codes = {
      alloy::ErrorCode::kDuplicateTensor, alloy::ErrorCode::kEmptyName,
      alloy::ErrorCode::kReservedName,    alloy::ErrorCode::kSubByteMisaligned,
      alloy::ErrorCode::kShapeOverflow,   alloy::ErrorCode::kShapeOverflow,
      alloy::ErrorCode::kShapeOverflow,   alloy::ErrorCode::kSubByteMisaligned,
      alloy::ErrorCode::kInvalidArgument,
  };
  const std::vector<std::vector<alloy::TensorSpec>> more = {
      {{"many", DType::U8, {1ull << 40, 1ull << 40}}},
      {{"half", DType::U8, {1ull << 61}}, {"other_half", DType::U8, {1ull << 61}}},
      {{"six", DType::F6_E2M3, {5}}},
      {{"bad\xff", DType::F32, {1}}},
  };
  auto all = bad;
  all.insert(all.end(), more.begin(), more.end());
  ASSERT_EQ(all.size(), codes.size());
  for (size_t c = 0; c < all.size(); ++c) {
    try {
      alloy::ShardedWriter writer(dir.path(), all[c], 100);
      ADD_FAILURE() << "accepted case " << c;
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), codes[c]) << "case " << c << ": " << e.what();
    }
    EXPECT_EQ(entries(dir.path()), 0u);
  }
  EXPECT_THROW(alloy::ShardedWriter(dir.path(), {{"a", DType::F32, {1}}}, 0), alloy::Error);
  EXPECT_THROW(alloy::ShardedWriter(dir.path(), {{"a", DType::F32, {1}}}, 100, {{"k", "bad\xff"}}),
               alloy::Error);
  EXPECT_EQ(entries(dir.path()), 0u);

  alloy::ShardedWriter writer(dir.path(), {{"a", DType::F32, {2}}}, 100);
  const float values[2] = {1, 2};
  auto expect_refusal = [&](const std::string& name, uint64_t nbytes, const char* why) {
    try {
      writer.write(name, values, nbytes);
      ADD_FAILURE() << why;
    } catch (const alloy::Error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + name + "'"), std::string::npos) << e.what();
    }
  };
  expect_refusal("a", 4, "wrong size");
  expect_refusal("b", 8, "undeclared");
  // Parts: in order from 0, within the declared size.
  const auto expect_part_refusal = [&](uint64_t offset, uint64_t nbytes, const char* why) {
    try {
      writer.write_part("a", offset, values, nbytes);
      ADD_FAILURE() << why;
    } catch (const alloy::Error& e) {
      EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
    }
  };
  expect_part_refusal(4, 4, "a part before the first");
  expect_part_refusal(0, 12, "past the declared size");
  writer.write_part("a", 0, values, 2);
  expect_part_refusal(4, 4, "a gap");
  expect_part_refusal(0, 2, "the first part again");
  writer.write_part("a", 2, reinterpret_cast<const uint8_t*>(values) + 2, 6);
  expect_refusal("a", 8, "written twice");
  expect_part_refusal(8, 0, "a part after the last");
  EXPECT_EQ(writer.finish(), std::vector<std::string>{"model.safetensors"});
  EXPECT_THROW(writer.finish(), alloy::Error);
  expect_refusal("a", 8, "after finish");
  EXPECT_EQ(entries(dir.path()), 1u);
}

// Runs `body` with the file size limit lowered to `limit` bytes (writes past it fail with EFBIG
// instead of raising SIGXFSZ), restoring both afterwards.
template <typename Body>
void with_file_size_limit(rlim_t limit, Body body) {
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max < limit)
    GTEST_SKIP() << "file size limit too low";
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit lowered = old;
  lowered.rlim_cur = limit;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lowered), 0);
  body();
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
}

TEST(Writer, FailedTensorWriteLeavesNothing) {
  TempDir dir;
  Tensors t;
  t.specs = {{"small", alloy::DType::U8, {16}}, {"large", alloy::DType::U8, {1 << 20}}};
  t.bytes = {std::string(16, 's'), std::string(1 << 20, 'L')};
  {
    alloy::ShardedWriter writer(dir.path(), t.specs, 1 << 30);
    with_file_size_limit(4096, [&] {
      // "large" is stored first (same alignment, name order) but lies mostly beyond the limit.
      try {
        writer.write("large", t.bytes[1].data(), t.bytes[1].size());
        ADD_FAILURE() << "write past the file size limit succeeded";
      } catch (const alloy::Error& e) {
        EXPECT_EQ(e.code(), alloy::ErrorCode::kIo);
        EXPECT_NE(std::string(e.what()).find("'large'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
      }
    });
    writer.write("small", t.bytes[0].data(), t.bytes[0].size());
    // The failed tensor counts as unwritten: finish() refuses and removes the temporary.
    EXPECT_THROW(writer.finish(), alloy::Error);
    EXPECT_EQ(entries(dir.path()), 0u);
  }
  EXPECT_EQ(entries(dir.path()), 0u);
}

// A write that fails leaves the file's hash as it was: written again, the tensor is hashed once,
// with the bytes written the second time (the failed attempt's bytes differ, so a hash fed before
// the copy succeeded would show).
TEST(Writer, HashAfterAFailedWriteCountsTheRewrittenBytesOnce) {
  TempDir dir;
  Tensors t;
  t.specs = {{"small", alloy::DType::U8, {16}}, {"large", alloy::DType::U8, {1 << 20}}};
  t.bytes = {std::string(16, 's'), std::string(1 << 20, 'L')};
  alloy::ShardedWriter writer(dir.path(), t.specs, 1 << 30, {}, true);
  const std::string failed(1 << 20, 'X');
  with_file_size_limit(4096, [&] {
    EXPECT_THROW(writer.write("large", failed.data(), failed.size()), alloy::Error);
  });
  writer.write("large", t.bytes[1].data(), t.bytes[1].size());
  writer.write("small", t.bytes[0].data(), t.bytes[0].size());
  ASSERT_EQ(writer.finish(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(writer.written_files().at(0).sha256, alloy::sha256_file(dir / "model.safetensors"));
}

TEST(Writer, FileThatCannotBeSizedLeavesNothing) {
  TempDir dir;
  const auto t = every_dtype(7);
  with_file_size_limit(64, [&] {
    try {
      alloy::ShardedWriter writer(dir.path(), t.specs, 150);
      ADD_FAILURE() << "files larger than the size limit were created";
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), alloy::ErrorCode::kIo) << e.what();
      EXPECT_NE(std::string(e.what()).find(dir.path().string()), std::string::npos) << e.what();
    }
    EXPECT_THROW(alloy::write_safetensors_file(dir / "x.safetensors", t.specs, t.pointers()),
                 alloy::Error);
  });
  EXPECT_EQ(entries(dir.path()), 0u);
}

TEST(Writer, UnwritableDirectoryIsAnIoError) {
  TempDir dir;
  alloy::test::write_bytes(dir / "a_file", "x");
  std::vector<fs::path> unwritable = {"/nonexistent/alloy-out", dir / "a_file"};
  if (::geteuid() != 0) {  // root writes into read-only directories anyway
    fs::create_directory(dir / "read_only");
    fs::permissions(dir / "read_only", fs::perms::owner_read | fs::perms::owner_exec);
    unwritable.push_back(dir / "read_only");
  }
  for (const auto& target : unwritable) {
    try {
      alloy::ShardedWriter writer(target, {{"a", alloy::DType::F32, {1}}}, 100);
      ADD_FAILURE() << target;
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), alloy::ErrorCode::kIo);
      EXPECT_NE(std::string(e.what()).find(target.string()), std::string::npos) << e.what();
    }
    const float value = 1;
    EXPECT_THROW(alloy::write_safetensors_file(target / "x.safetensors",
                                               {{"a", alloy::DType::F32, {1}}}, {&value}),
                 alloy::Error);
  }
  if (fs::exists(dir / "read_only")) {
    EXPECT_TRUE(fs::is_empty(dir / "read_only"));
    fs::permissions(dir / "read_only", fs::perms::owner_all);
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
  for (size_t i = 0; i < t.specs.size(); ++i) {
    const auto* info = file.find(t.specs[i].name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(file.data(*info)), info->nbytes()),
              t.bytes[i]);
  }
  // Rewriting replaces the file; a mismatched data list is refused and leaves the old file alone.
  const std::string before = alloy::test::read_bytes(dir / "x.safetensors");
  alloy::write_safetensors_file(dir / "x.safetensors", t.specs, t.pointers(), {{"k", "v"}});
  EXPECT_EQ(alloy::test::read_bytes(dir / "x.safetensors"), before);
  auto too_few = t.pointers();
  too_few.pop_back();
  EXPECT_THROW(alloy::write_safetensors_file(dir / "x.safetensors", t.specs, too_few),
               alloy::Error);
  EXPECT_EQ(alloy::test::read_bytes(dir / "x.safetensors"), before);
  EXPECT_EQ(entries(dir.path()), 1u);
}

TEST(WriterSpec, IndependentSpecReaderAcceptsAlloyOutput) {
  int status = 0;
  alloy::test::run_command("python3 -c 'import json' 2>/dev/null", &status);
  if (status != 0) GTEST_SKIP() << "python3 not available";
  const std::string reader = "python3 '" + std::string(ALLOY_SOURCE_DIR) + "/tests/spec_reader.py'";
  TempDir single, sharded;
  const auto t = every_dtype(5);
  write_model(single.path(), t, alloy::parse_byte_size("5B"), identity(t.specs.size()));
  write_model(sharded.path(), t, 200, identity(t.specs.size()));
  ASSERT_GT(entries(sharded.path()), 3u);
  for (const fs::path& dir : {single.path(), sharded.path()}) {
    std::string files;
    size_t file_count = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".safetensors") {
        files += " '" + entry.path().string() + "'";
        ++file_count;
      }
    }
    const std::string out = alloy::test::run_command(reader + files, &status);
    ASSERT_EQ(status, 0) << out;
    const auto report = nlohmann::json::parse(out);
    ASSERT_EQ(report["tensors"].size(), t.specs.size());
    const bool has_index = fs::exists(dir / "model.safetensors.index.json");
    const auto index =
        has_index
            ? nlohmann::json::parse(alloy::test::read_bytes(dir / "model.safetensors.index.json"))
            : nullptr;
    for (size_t i = 0; i < t.specs.size(); ++i) {
      const auto& entry = report["tensors"][t.specs[i].name];
      EXPECT_EQ(entry["sha256"], alloy::sha256_hex(t.bytes[i].data(), t.bytes[i].size()))
          << t.specs[i].name;
      EXPECT_EQ(entry["dtype"], alloy::dtype_name(t.specs[i].dtype));
      EXPECT_EQ(entry["shape"].get<std::vector<uint64_t>>(), t.specs[i].shape);
      EXPECT_EQ(entry["file"],
                has_index ? index["weight_map"][t.specs[i].name] : "model.safetensors");
    }
    ASSERT_EQ(report["metadata"].size(), file_count);
    for (const auto& [file, metadata] : report["metadata"].items()) {
      EXPECT_EQ(metadata, nlohmann::json({{"format", "pt"}, {"source", "test"}})) << file;
    }
  }
}

TEST(WriterSpec, IndependentSpecReaderRefusesDamagedFiles) {
  // The checker is only evidence if it can say no: damage a file alloy wrote in a few ways.
  int status = 0;
  alloy::test::run_command("python3 -c 'import json' 2>/dev/null", &status);
  if (status != 0) GTEST_SKIP() << "python3 not available";
  const std::string reader = "python3 '" + std::string(ALLOY_SOURCE_DIR) + "/tests/spec_reader.py'";
  TempDir dir;
  const auto t = every_dtype(8);
  write_model(dir.path(), t, alloy::parse_byte_size("5B"), identity(t.specs.size()));
  const std::string good = alloy::test::read_bytes(dir / "model.safetensors");
  auto replace_once = [](std::string text, const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) text.replace(at, from.size(), to);
    return text;
  };
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {"truncated", good.substr(0, good.size() - 1)},
      {"trailing byte", good + "x"},
      {"length past the end",
       replace_once(good, good.substr(0, 8), std::string("\xff\xff\xff\x00\x00\x00\x00\x00", 8))},
      {"unknown dtype", replace_once(good, "\"dtype\":\"U8\"", "\"dtype\":\"U9\"")},
      {"wrong shape", replace_once(good, "\"shape\":[4,6]", "\"shape\":[4,7]")},
      {"metadata not strings", replace_once(good, "\"source\":\"test\"", "\"source\":12345 ")},
  };
  for (const auto& [what, bytes] : damaged) {
    alloy::test::write_bytes(dir / "bad.safetensors", bytes);
    alloy::test::run_command(reader + " '" + (dir / "bad.safetensors").string() + "' 2>/dev/null",
                             &status);
    EXPECT_EQ(status, 1) << what;
  }
  alloy::test::run_command(reader + " '" + (dir / "model.safetensors").string() + "' >/dev/null",
                           &status);
  EXPECT_EQ(status, 0);
}

}  // namespace
