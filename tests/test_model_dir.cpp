// Model directories: single files, sharded models, and every defect of an untrusted index.
#include <gtest/gtest.h>

#include <filesystem>

#include "alloy/error.h"
#include "alloy/model.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::ErrorCode;
using alloy::test::safetensors_bytes;
using alloy::test::TempDir;
using alloy::test::write_bytes;

// A one-tensor shard holding U8 tensors with the given names, one byte each.
std::string shard(const std::vector<std::string>& names) {
  std::string header = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) header += ",";
    header += "\"" + names[i] + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(i) +
              "," + std::to_string(i + 1) + "]}";
  }
  return safetensors_bytes(header + "}", std::string(names.size(), '\x07'));
}

std::string index_json(const std::string& weight_map) {
  return "{\"metadata\":{\"total_size\":3},\"weight_map\":{" + weight_map + "}}";
}

// A valid two-shard model: a,b in shard 1 and c in shard 2.
void write_sharded(const fs::path& dir) {
  write_bytes(dir / "model-00001-of-00002.safetensors", shard({"a", "b"}));
  write_bytes(dir / "model-00002-of-00002.safetensors", shard({"c"}));
  write_bytes(dir / "model.safetensors.index.json",
              index_json("\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002.safetensors\","
                         "\"c\":\"model-00002-of-00002.safetensors\""));
}

void expect_refused(const fs::path& path, ErrorCode code, const std::string& mention) {
  try {
    alloy::Model::open(path);
    FAIL() << "accepted " << path;
  } catch (const alloy::Error& e) {
    EXPECT_STREQ(alloy::error_code_name(e.code()), alloy::error_code_name(code)) << e.what();
    EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
  }
}

TEST(ModelDir, SingleFileDirectoryWithConfigAndTokenizer) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", shard({"x", "y"}));
  write_bytes(dir / "config.json", "{\"num_hidden_layers\": 2}");
  write_bytes(dir / "tokenizer.json", "{}");
  write_bytes(dir / "generation_config.json", "{}");
  const auto model = alloy::Model::open(dir.path());
  EXPECT_TRUE(model.is_directory());
  EXPECT_EQ(model.tensors().size(), 2u);
  EXPECT_EQ(model.config()["num_hidden_layers"], 2);
  EXPECT_TRUE(model.has_config());
  EXPECT_EQ(model.auxiliary_files(), (std::vector<std::string>{"tokenizer.json", "generation_config.json"}));
  ASSERT_NE(model.find("y"), nullptr);
  EXPECT_EQ(model.find("y")->data()[0], 7);
  EXPECT_EQ(model.find("nope"), nullptr);
  EXPECT_EQ(model.total_bytes(), 2u);
}

TEST(ModelDir, LoneSafetensorsFile) {
  TempDir dir;
  write_bytes(dir / "weights.safetensors", shard({"x"}));
  const auto model = alloy::Model::open(dir / "weights.safetensors");
  EXPECT_FALSE(model.is_directory());
  EXPECT_FALSE(model.has_config());
  EXPECT_EQ(model.tensors().size(), 1u);
}

TEST(ModelDir, ShardedWithIndex) {
  TempDir dir;
  write_sharded(dir.path());
  const auto model = alloy::Model::open(dir.path());
  EXPECT_EQ(model.shards().size(), 2u);
  EXPECT_EQ(model.tensors().size(), 3u);
  EXPECT_NE(model.find("c"), nullptr);
}

TEST(ModelDir, SymlinkInsideDirectoryIsAccepted) {
  TempDir dir;
  write_sharded(dir.path());
  fs::create_directories(dir / "blobs");
  fs::rename(dir / "model-00002-of-00002.safetensors", dir / "blobs" / "c.bin");
  fs::create_symlink("blobs/c.bin", dir / "model-00002-of-00002.safetensors");
  EXPECT_EQ(alloy::Model::open(dir.path()).tensors().size(), 3u);
}

struct IndexCase {
  const char* name;
  std::function<void(const fs::path&)> corrupt;  // applied to a valid sharded model
  ErrorCode expected;
  std::string mention;
};

std::vector<IndexCase> index_cases() {
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  auto set_index = [](std::string text) {
    return [text](const fs::path& dir) { write_bytes(dir / "model.safetensors.index.json", text); };
  };
  return {
      {"IndexNotJson", set_index("{\"weight_map\": "), ErrorCode::kIndexNotJson, "index.json"},
      {"IndexNotObject", set_index("[]"), ErrorCode::kIndexNotJson, "index.json"},
      {"IndexNoWeightMap", set_index("{\"metadata\":{}}"), ErrorCode::kIndexNotJson, "weight_map"},
      {"IndexValueNotString", set_index(index_json("\"a\":1")), ErrorCode::kIndexNotJson, "'a'"},
      {"IndexTensorListedTwice",
       set_index(index_json("\"a\":\"" + s1 + "\",\"a\":\"" + s2 + "\"")), ErrorCode::kIndexNotJson, "'a'"},
      {"ShardAbsolute", set_index(index_json("\"a\":\"/etc/passwd\"")), ErrorCode::kIndexBadShardName,
       "/etc/passwd"},
      {"ShardDotDot", set_index(index_json("\"a\":\"../x.safetensors\"")), ErrorCode::kIndexBadShardName,
       "../x.safetensors"},
      {"ShardDotDotInside", set_index(index_json("\"a\":\"sub/../../x.safetensors\"")),
       ErrorCode::kIndexBadShardName, "sub/../../x"},
      {"ShardBackslash", set_index(index_json("\"a\":\"..\\\\x.safetensors\"")), ErrorCode::kIndexBadShardName,
       "backslash"},
      {"ShardEmptyName", set_index(index_json("\"a\":\"\"")), ErrorCode::kIndexBadShardName, "empty"},
      {"ShardMissing",
       [s2](const fs::path& dir) { fs::remove(dir / s2); }, ErrorCode::kIndexMissingShard, s2},
      {"ShardSymlinkEscapes",
       [s2](const fs::path& dir) {
         fs::rename(dir / s2, dir.parent_path() / (dir.filename().string() + "-outside.safetensors"));
         fs::create_symlink(fs::path("..") / (dir.filename().string() + "-outside.safetensors"), dir / s2);
       },
       ErrorCode::kIndexShardSymlinkEscape, s2},
      {"ShardDanglingSymlink",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         fs::create_symlink("nowhere.safetensors", dir / s2);
       },
       ErrorCode::kIndexMissingShard, s2},
      {"TensorMissingFromShard",
       set_index(index_json("\"a\":\"" + s1 + "\",\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\",\"d\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorMissing, "'d'"},
      {"TensorMappedToWrongShard",
       set_index(index_json("\"a\":\"" + s2 + "\",\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorMissing, "'a'"},
      {"TensorNotInIndex", set_index(index_json("\"a\":\"" + s1 + "\",\"c\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorUnlisted, "'b'"},
      {"TensorInTwoShards",
       [s2](const fs::path& dir) { write_bytes(dir / s2, shard({"c", "a"})); }, ErrorCode::kIndexTensorInTwoShards,
       "'a'"},
      {"CorruptShard",
       [s2](const fs::path& dir) { write_bytes(dir / s2, "garbage"); }, ErrorCode::kFileTooSmall, s2},
      {"ConfigNotJson", [](const fs::path& dir) { write_bytes(dir / "config.json", "{"); }, ErrorCode::kBadConfig,
       "config.json"},
      {"ConfigNotObject", [](const fs::path& dir) { write_bytes(dir / "config.json", "[1]"); },
       ErrorCode::kBadConfig, "config.json"},
      {"NoWeights",
       [s1, s2](const fs::path& dir) {
         fs::remove(dir / s1);
         fs::remove(dir / s2);
         fs::remove(dir / "model.safetensors.index.json");
       },
       ErrorCode::kNotAModel, "no model.safetensors"},
  };
}

void PrintTo(const IndexCase& c, std::ostream* os) { *os << c.name; }

class ModelDirCorrupt : public ::testing::TestWithParam<IndexCase> {};

TEST_P(ModelDirCorrupt, IsRefused) {
  TempDir dir;
  const fs::path model_dir = dir / "model";
  fs::create_directories(model_dir);
  write_sharded(model_dir);
  GetParam().corrupt(model_dir);
  expect_refused(model_dir, GetParam().expected, GetParam().mention);
}

INSTANTIATE_TEST_SUITE_P(Table, ModelDirCorrupt, ::testing::ValuesIn(index_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ModelDir, MissingPath) { expect_refused("/nonexistent/alloy-model", ErrorCode::kNotAModel, "alloy-model"); }

TEST(ModelDir, ParseShardIndexAlone) {
  const auto index = alloy::parse_shard_index(index_json("\"w\":\"s.safetensors\",\"v\":\"s.safetensors\""), "idx");
  EXPECT_EQ(index.weight_map.size(), 2u);
  EXPECT_EQ(index.shard_names(), std::vector<std::string>{"s.safetensors"});
  EXPECT_EQ(index.metadata["total_size"], 3);
}

}  // namespace
