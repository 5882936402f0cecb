// Model directories: single files, sharded models, and every defect of an untrusted index.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <set>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
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
    header += "\"" + names[i] + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
              std::to_string(i) + "," + std::to_string(i + 1) + "]}";
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
  write_bytes(
      dir / "model.safetensors.index.json",
      index_json(
          "\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002.safetensors\","
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
  EXPECT_EQ(model.auxiliary_files(),
            (std::vector<std::string>{"tokenizer.json", "generation_config.json"}));
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
  std::string file;     // the file the message must name
  std::string mention;  // and the tensor, shard or rule it must name
};

// Moves `name` out of the model directory (into the test's temp dir) and leaves a symlink to it.
void move_out_and_link(const fs::path& dir, const std::string& name) {
  const fs::path outside = dir.parent_path() / ("outside-" + name);
  fs::rename(dir / name, outside);
  fs::create_symlink(fs::path("..") / outside.filename(), dir / name);
}

std::vector<IndexCase> index_cases() {
  const std::string s1 = "model-00001-of-00002.safetensors",
                    s2 = "model-00002-of-00002.safetensors";
  const std::string idx = "model.safetensors.index.json";
  const std::string valid_map = "\"a\":\"" + s1 + "\",\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\"";
  auto set_index = [](std::string text) {
    return [text](const fs::path& dir) { write_bytes(dir / "model.safetensors.index.json", text); };
  };
  return {
      {"IndexNotJson", set_index("{\"weight_map\": "), ErrorCode::kIndexNotJson, idx,
       "not valid JSON"},
      {"IndexNotObject", set_index("[]"), ErrorCode::kIndexNotJson, idx, "not a JSON object"},
      {"IndexNoWeightMap", set_index("{\"metadata\":{}}"), ErrorCode::kIndexNotJson, idx,
       "weight_map"},
      {"IndexWeightMapArray", set_index("{\"weight_map\":[\"" + s1 + "\"]}"),
       ErrorCode::kIndexNotJson, idx, "weight_map"},
      {"IndexMetadataNotObject", set_index("{\"metadata\":3,\"weight_map\":{" + valid_map + "}}"),
       ErrorCode::kIndexNotJson, idx, "metadata"},
      {"IndexValueNotString", set_index(index_json("\"a\":1")), ErrorCode::kIndexNotJson, idx,
       "'a'"},
      {"IndexTensorListedTwice", set_index(index_json("\"a\":\"" + s1 + "\",\"a\":\"" + s2 + "\"")),
       ErrorCode::kIndexNotJson, idx, "'a'"},
      {"IndexWeightMapTwice",
       set_index("{\"weight_map\":{\"a\":\"" + s1 + "\"},\"weight_map\":{" + valid_map + "}}"),
       ErrorCode::kIndexNotJson, idx, "'weight_map' appears twice"},
      {"IndexNulThenGarbage", set_index(index_json(valid_map) + std::string(1, '\0') + "{[garbage"),
       ErrorCode::kIndexNotJson, idx, "NUL"},
      {"IndexNestsTooDeeply", set_index("{\"metadata\":{\"x\":" + std::string(100'000, '[') + "}}"),
       ErrorCode::kIndexNotJson, idx, "nests too deeply"},
      {"IndexIsADirectory",
       [](const fs::path& dir) {
         fs::remove(dir / "model.safetensors.index.json");
         fs::create_directories(dir / "model.safetensors.index.json");
       },
       ErrorCode::kIndexNotJson, idx, "not a regular file"},
      {"IndexSymlinkEscapes",
       [](const fs::path& dir) { move_out_and_link(dir, "model.safetensors.index.json"); },
       ErrorCode::kSymlinkEscape, idx, "outside the model directory"},
      {"ShardAbsolute", set_index(index_json("\"a\":\"/etc/passwd\"")),
       ErrorCode::kIndexBadShardName, idx, "/etc/passwd"},
      {"ShardDotDot", set_index(index_json("\"a\":\"../x.safetensors\"")),
       ErrorCode::kIndexBadShardName, idx, "../x.safetensors"},
      {"ShardDotDotInside", set_index(index_json("\"a\":\"sub/../../x.safetensors\"")),
       ErrorCode::kIndexBadShardName, idx, "sub/../../x"},
      {"ShardDotDotLast", set_index(index_json("\"a\":\"sub/..\"")), ErrorCode::kIndexBadShardName,
       idx, "'..'"},
      {"ShardBackslash", set_index(index_json("\"a\":\"..\\\\x.safetensors\"")),
       ErrorCode::kIndexBadShardName, idx, "backslash"},
      {"ShardNul", set_index(index_json("\"a\":\"" + s1 + "\\u0000.txt\"")),
       ErrorCode::kIndexBadShardName, idx, "NUL"},
      {"ShardEmptyName", set_index(index_json("\"a\":\"\"")), ErrorCode::kIndexBadShardName, idx,
       "empty"},
      {"ShardMissing", [s2](const fs::path& dir) { fs::remove(dir / s2); },
       ErrorCode::kIndexMissingShard, idx, s2},
      {"ShardSymlinkEscapes", [s2](const fs::path& dir) { move_out_and_link(dir, s2); },
       ErrorCode::kIndexShardSymlinkEscape, idx, s2},
      {"ShardAbsoluteSymlinkEscapes",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         fs::create_symlink("/etc/hostname", dir / s2);
       },
       ErrorCode::kIndexShardSymlinkEscape, idx, s2},
      {"ShardThroughEscapingDirectoryLink",
       [s1](const fs::path& dir) {
         fs::create_directories(dir.parent_path() / "elsewhere");
         fs::create_directory_symlink("../elsewhere", dir / "sub");
         write_bytes(
             dir / "model.safetensors.index.json",
             index_json("\"a\":\"" + s1 + "\",\"b\":\"" + s1 + "\",\"c\":\"sub/c.safetensors\""));
         fs::rename(dir / "model-00002-of-00002.safetensors", dir / "sub" / "c.safetensors");
       },
       ErrorCode::kIndexShardSymlinkEscape, idx, "sub/c.safetensors"},
      {"ShardDanglingSymlink",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         fs::create_symlink("nowhere.safetensors", dir / s2);
       },
       ErrorCode::kIndexMissingShard, idx, s2},
      {"ShardSymlinkLoop",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         fs::create_symlink(s2, dir / s2);
       },
       ErrorCode::kIo, idx, s2},
      {"ShardIsAFifo",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         ASSERT_EQ(::mkfifo((dir / s2).c_str(), 0600), 0);
       },
       ErrorCode::kIo, s2, "not a regular file"},
      {"ShardIsADirectory",
       [s2](const fs::path& dir) {
         fs::remove(dir / s2);
         fs::create_directories(dir / s2);
       },
       ErrorCode::kIo, s2, "not a regular file"},
      {"TensorMissingFromShard", set_index(index_json(valid_map + ",\"d\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorMissing, idx, "'d'"},
      {"TensorMappedToWrongShard",
       set_index(index_json("\"a\":\"" + s2 + "\",\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorMissing, idx, "'a'"},
      {"TensorNotInIndex", set_index(index_json("\"a\":\"" + s1 + "\",\"c\":\"" + s2 + "\"")),
       ErrorCode::kIndexTensorUnlisted, idx, "'b'"},
      {"TensorInTwoShards",
       [s2](const fs::path& dir) {
         write_bytes(dir / s2, shard({"c", "a"}));
       },
       ErrorCode::kIndexTensorInTwoShards, idx, "'a'"},
      // The orphan-shard family: the index and a *.safetensors glob would load different weights.
      {"UnlistedShardBesideTheIndex",
       [](const fs::path& dir) { write_bytes(dir / "model-00003-of-00003.safetensors", shard({"a"})); },
       ErrorCode::kIndexUnlistedShard, idx, "'model-00003-of-00003.safetensors' lies beside the index"},
      {"SingleFileBesideTheIndex",
       [](const fs::path& dir) { write_bytes(dir / "model.safetensors", shard({"a", "b", "c"})); },
       ErrorCode::kIndexUnlistedShard, idx, "'model.safetensors' lies beside the index"},
      {"TotalSizeDisagrees",
       set_index("{\"metadata\":{\"total_size\":4},\"weight_map\":{\"a\":\"" + s1 + "\",\"b\":\"" + s1 +
                 "\",\"c\":\"" + s2 + "\"}}"),
       ErrorCode::kIndexTotalSize, idx, "total_size is 4 but the shards hold 3 tensor bytes"},
      {"CorruptShard", [s2](const fs::path& dir) { write_bytes(dir / s2, "garbage"); },
       ErrorCode::kFileTooSmall, s2, "8-byte"},
      {"ShardWithTrailingBytes",
       [s2](const fs::path& dir) { write_bytes(dir / s2, shard({"c"}) + "!"); },
       ErrorCode::kTrailingBytes, s2, "after the last tensor"},
      {"ConfigNotJson", [](const fs::path& dir) { write_bytes(dir / "config.json", "{"); },
       ErrorCode::kBadConfig, "config.json", "not valid JSON"},
      {"ConfigNotObject", [](const fs::path& dir) { write_bytes(dir / "config.json", "[1]"); },
       ErrorCode::kBadConfig, "config.json", "not a JSON object"},
      {"ConfigNestsTooDeeply",
       [](const fs::path& dir) {
         write_bytes(dir / "config.json", "{\"a\":" + std::string(100'000, '['));
       },
       ErrorCode::kBadConfig, "config.json", "nests too deeply"},
      {"ConfigNulThenGarbage",
       [](const fs::path& dir) {
         write_bytes(dir / "config.json", std::string("{}\0garbage", 10));
       },
       ErrorCode::kBadConfig, "config.json", "NUL"},
      {"ConfigIsAFifo",
       [](const fs::path& dir) { ASSERT_EQ(::mkfifo((dir / "config.json").c_str(), 0600), 0); },
       ErrorCode::kBadConfig, "config.json", "not a regular file"},
      {"ConfigSymlinkEscapes",
       [](const fs::path& dir) {
         write_bytes(dir / "config.json", "{}");
         move_out_and_link(dir, "config.json");
       },
       ErrorCode::kSymlinkEscape, "config.json", "outside the model directory"},
      {"TokenizerSymlinkEscapes",
       [](const fs::path& dir) {
         write_bytes(dir / "tokenizer.json", "{}");
         move_out_and_link(dir, "tokenizer.json");
       },
       ErrorCode::kSymlinkEscape, "tokenizer.json", "outside the model directory"},
      {"SingleFileSymlinkEscapes",
       [s1, s2](const fs::path& dir) {
         fs::remove(dir / "model.safetensors.index.json");
         fs::remove(dir / s2);
         fs::rename(dir / s1, dir / "model.safetensors");
         move_out_and_link(dir, "model.safetensors");
       },
       ErrorCode::kSymlinkEscape, "model.safetensors", "outside the model directory"},
      {"NoWeights",
       [s1, s2](const fs::path& dir) {
         fs::remove(dir / s1);
         fs::remove(dir / s2);
         fs::remove(dir / "model.safetensors.index.json");
       },
       ErrorCode::kNotAModel, "model", "no model.safetensors"},
  };
}

void PrintTo(const IndexCase& c, std::ostream* os) {
  *os << c.name;
}

class ModelDirCorrupt : public ::testing::TestWithParam<IndexCase> {};

TEST_P(ModelDirCorrupt, IsRefusedWithItsOwnCode) {
  TempDir dir;
  const fs::path model_dir = dir / "model";
  fs::create_directories(model_dir);
  write_sharded(model_dir);
  GetParam().corrupt(model_dir);
  try {
    alloy::Model::open(model_dir);
    FAIL() << GetParam().name << " was accepted";
  } catch (const alloy::Error& e) {
    const std::string message = e.what();
    EXPECT_STREQ(alloy::error_code_name(e.code()), alloy::error_code_name(GetParam().expected))
        << message;
    EXPECT_NE(message.find(GetParam().file), std::string::npos)
        << "message does not name the file: " << message;
    EXPECT_NE(message.find(GetParam().mention), std::string::npos)
        << "message lacks '" << GetParam().mention << "': " << message;
  }
}

INSTANTIATE_TEST_SUITE_P(ModelDir, ModelDirCorrupt, ::testing::ValuesIn(index_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ModelDirCorruptTable, CoversEveryDirectoryCode) {
  std::set<ErrorCode> codes;
  for (const auto& c : index_cases()) codes.insert(c.expected);
  for (ErrorCode code :
       {ErrorCode::kNotAModel, ErrorCode::kIndexNotJson, ErrorCode::kIndexBadShardName,
        ErrorCode::kIndexShardSymlinkEscape, ErrorCode::kIndexMissingShard,
        ErrorCode::kIndexTensorMissing, ErrorCode::kIndexTensorUnlisted,
        ErrorCode::kIndexTensorInTwoShards, ErrorCode::kIndexUnlistedShard, ErrorCode::kIndexTotalSize,
        ErrorCode::kBadConfig, ErrorCode::kSymlinkEscape}) {
    EXPECT_TRUE(codes.count(code)) << "no corrupt case for " << alloy::error_code_name(code);
  }
}

// With --allow-unindexed-shards the index wins (as transformers does): the unlisted files are never
// read, and the model says what it set aside.
TEST(ModelDir, UnindexedShardsAllowedUseTheIndexAndWarn) {
  TempDir dir;
  write_sharded(dir.path());
  write_bytes(dir / "model.safetensors", "not even a safetensors file");  // never read
  alloy::ModelOpenOptions options;
  options.allow_unindexed_shards = true;
  const auto model = alloy::Model::open(dir.path(), options);
  EXPECT_EQ(model.shards().size(), 2u);
  EXPECT_EQ(model.tensors().size(), 3u);
  ASSERT_EQ(model.warnings().size(), 1u);
  EXPECT_NE(model.warnings()[0].find("'model.safetensors' lies beside the index"), std::string::npos);
  EXPECT_NE(model.warnings()[0].find("using the weights the index names"), std::string::npos);
  expect_refused(dir.path(), ErrorCode::kIndexUnlistedShard, "--allow-unindexed-shards");
}

TEST(ModelDir, AuxiliaryFilesAreRegularFilesInsideTheDirectory) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", shard({"x"}));
  for (const char* name : {"tokenizer.model", "merges.txt", "vocab.json", "chat_template.jinja",
                           "special_tokens_map.json", "README.md"}) {
    write_bytes(dir / name, "x");
  }
  fs::create_directories(dir / "blobs");
  write_bytes(dir / "blobs" / "tok", "{}");
  fs::create_symlink("blobs/tok", dir / "tokenizer_config.json");     // stays inside: listed
  fs::create_directories(dir / "vocab.txt");                          // a directory: not listed
  ASSERT_EQ(::mkfifo((dir / "added_tokens.json").c_str(), 0600), 0);  // a FIFO: not listed
  const auto model = alloy::Model::open(dir.path());
  EXPECT_EQ(model.auxiliary_files(),
            (std::vector<std::string>{"tokenizer_config.json", "tokenizer.model",
                                      "special_tokens_map.json", "vocab.json", "merges.txt",
                                      "chat_template.jinja"}));
  EXPECT_FALSE(model.has_config());
  EXPECT_TRUE(model.config().is_object());
}

TEST(ModelDir, EmptyWeightMapIsAModelWithoutTensors) {
  TempDir dir;
  write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\":{}}");
  const auto model = alloy::Model::open(dir.path());
  EXPECT_TRUE(model.tensors().empty());
  EXPECT_EQ(model.total_bytes(), 0u);
}

TEST(ModelDir, FifoPathIsNotAModel) {
  TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "m.safetensors").c_str(), 0600), 0);
  expect_refused(dir / "m.safetensors", ErrorCode::kNotAModel, "m.safetensors");
}

struct ShardNameCase {
  const char* shard;
  bool accepted;
};

TEST(ModelDirShardIndex, ShardNamesWithoutTheFilesystem) {
  // Only whole ".." components escape; names that merely contain dots are fine.
  const ShardNameCase cases[] = {
      {"model-00001-of-00002.safetensors", true},
      {"sub/dir/x.safetensors", true},
      {"./x.safetensors", true},
      {"..x.safetensors", true},
      {"x..safetensors", true},
      {"x/..", false},
      {"..", false},
      {"/abs.safetensors", false},
      {"a\\\\b", false},
      {"", false},
  };
  for (const auto& c : cases) {
    const std::string text = "{\"weight_map\":{\"w\":\"" + std::string(c.shard) + "\"}}";
    try {
      const auto index = alloy::parse_shard_index(text, "idx.json");
      EXPECT_TRUE(c.accepted) << c.shard;
      EXPECT_EQ(index.weight_map.at("w"), c.shard);
    } catch (const alloy::Error& e) {
      EXPECT_FALSE(c.accepted) << c.shard << ": " << e.what();
      EXPECT_EQ(e.code(), ErrorCode::kIndexBadShardName) << e.what();
      EXPECT_NE(std::string(e.what()).find("idx.json"), std::string::npos) << e.what();
    }
  }
}

TEST(ModelDir, MissingPath) {
  expect_refused("/nonexistent/alloy-model", ErrorCode::kNotAModel, "alloy-model");
}

TEST(ModelDir, ParseShardIndexAlone) {
  const auto index = alloy::parse_shard_index(
      index_json("\"w\":\"s.safetensors\",\"v\":\"s.safetensors\""), "idx");
  EXPECT_EQ(index.weight_map.size(), 2u);
  EXPECT_EQ(index.shard_names(), std::vector<std::string>{"s.safetensors"});
  EXPECT_EQ(index.metadata["total_size"], 3);
}

}  // namespace
