// alloy-inspect, run as a real executable, on models written here, on the golden base model, and on
// broken inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/core/inspect.h"
#include "alloy/core/writer.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::bin;
using alloy::test::run_command;
using alloy::test::TempDir;

std::string inspect_command(const fs::path& path, const std::string& flags = "") {
  return "'" + bin("alloy-inspect") + "' " + flags + " '" + path.string() + "'";
}

// Runs alloy-inspect on a path that must be refused; returns its stderr (stdout must stay empty).
std::string expect_refused(const fs::path& path) {
  int status = -1;
  const std::string both = run_command(inspect_command(path) + " 2>&1", &status);
  EXPECT_EQ(status, 2) << both;
  const std::string out = run_command(inspect_command(path) + " 2>/dev/null", &status);
  EXPECT_EQ(out, "");
  return both;
}

// A small sharded MoE-like model: experts in BF16, norms in F32, a router in F16, plus config.json
// (summary keys and others) and a tokenizer file.
struct WrittenModel {
  std::vector<alloy::TensorSpec> specs;
  uint64_t bf16_bytes = 0, f32_bytes = 0, f16_bytes = 0;
  uint64_t bf16_count = 0, f32_count = 0, f16_count = 0;
};

WrittenModel write_moe_like(const fs::path& dir) {
  WrittenModel m;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    for (int expert = 0; expert < 4; ++expert) {
      m.specs.push_back({prefix + "mlp.experts." + std::to_string(expert) + ".up_proj.weight",
                         alloy::DType::BF16,
                         {16, 8}});
    }
    m.specs.push_back({prefix + "mlp.gate.weight", alloy::DType::F16, {4, 8}});
    m.specs.push_back({prefix + "input_layernorm.weight", alloy::DType::F32, {8}});
  }
  for (const auto& spec : m.specs) {
    const uint64_t bytes = spec.nbytes();
    if (spec.dtype == alloy::DType::BF16) m.bf16_bytes += bytes, ++m.bf16_count;
    if (spec.dtype == alloy::DType::F32) m.f32_bytes += bytes, ++m.f32_count;
    if (spec.dtype == alloy::DType::F16) m.f16_bytes += bytes, ++m.f16_count;
  }
  alloy::ShardedWriter writer(dir, m.specs, 700, {{"note", "inspect test"}});
  for (const auto& spec : m.specs) {
    const std::string bytes(spec.nbytes(), '\0');
    writer.write(spec.name, bytes.data(), bytes.size());
  }
  writer.finish();
  const nlohmann::json config = {{"architectures", {"Qwen2MoeForCausalLM"}},
                                 {"model_type", "qwen2_moe"},
                                 {"hidden_size", 8},
                                 {"num_hidden_layers", 2},
                                 {"num_experts", 4},
                                 {"num_experts_per_tok", 2},
                                 {"torch_dtype", "bfloat16"},
                                 {"tie_word_embeddings", false},
                                 {"rope_theta", 10000.0}};
  alloy::test::write_bytes(dir / "config.json", config.dump(2));
  alloy::test::write_bytes(dir / "tokenizer.json", "{}");
  return m;
}

TEST(Inspect, GoldenBaseModelAsJson) {
  int status = -1;
  const std::string out = run_command(
      inspect_command(alloy::test::data_dir() + "/golden/models/base", "--json"), &status);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["total"]["tensors"], 39);
  EXPECT_EQ(j["tensors"].size(), 39u);
  EXPECT_EQ(j["dtypes"].size(), 1u);
  EXPECT_EQ(j["dtypes"]["BF16"]["tensors"], 39);
  EXPECT_EQ(j["dtypes"]["BF16"]["bytes"], j["total"]["bytes"]);
  EXPECT_EQ(j["dtypes"]["BF16"]["bytes"], 2 * j["dtypes"]["BF16"]["elements"].get<uint64_t>());
  EXPECT_EQ(j["config"]["num_hidden_layers"], 4);
  EXPECT_EQ(j["config"]["hidden_size"], 64);
  EXPECT_EQ(j["config"]["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["config"]["torch_dtype"], "bfloat16");
  EXPECT_FALSE(j["config"].contains("rope_theta"));  // not a summary key
  EXPECT_EQ(j["shards"].size(), 1u);
  EXPECT_EQ(j["shards"][0]["file"], "model.safetensors");
  EXPECT_EQ(j["shards"][0]["bytes"], j["total"]["bytes"]);
  EXPECT_TRUE(j["shards"][0]["metadata"].is_object());
  EXPECT_NE(std::find(j["auxiliary_files"].begin(), j["auxiliary_files"].end(), "tokenizer.json"),
            j["auxiliary_files"].end());
  bool found = false;
  for (const auto& t : j["tensors"]) {
    if (t["name"] == "model.layers.0.mlp.down_proj.weight") {
      found = true;
      EXPECT_EQ(t["shape"], nlohmann::json::array({64, 96}));
      EXPECT_EQ(t["bytes"], 64 * 96 * 2);
      EXPECT_EQ(t["dtype"], "BF16");
      EXPECT_EQ(t["shard"], "model.safetensors");
    }
  }
  EXPECT_TRUE(found);
}

// A shard beside the index that the index does not name: refused by default (a glob loader and an
// index loader would see different models), listed from the index with a warning when allowed.
TEST(Inspect, UnindexedShardIsRefusedUnlessAllowed) {
  TempDir dir;
  write_moe_like(dir.path());
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  alloy::test::write_bytes(dir / "model-00009-of-00009.safetensors",
                           alloy::test::safetensors_bytes("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],"
                                                          "\"data_offsets\":[0,1]}}", "x"));
  int status = -1;
  std::string out = run_command(inspect_command(dir.path()) + " 2>&1", &status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("[index-unlisted-shard]"), std::string::npos) << out;
  EXPECT_NE(out.find("'model-00009-of-00009.safetensors'"), std::string::npos) << out;
  out = run_command(inspect_command(dir.path(), "--allow-unindexed-shards") + " 2>&1", &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("alloy-inspect: warning:"), std::string::npos) << out;
  EXPECT_EQ(out.find(" w "), std::string::npos) << "the unlisted shard's tensor is not listed: " << out;
}

TEST(Inspect, WrittenShardedModelAsJson) {
  TempDir dir;
  const auto m = write_moe_like(dir.path());
  int status = -1;
  const std::string out = run_command(inspect_command(dir.path(), "--json"), &status);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["total"]["tensors"], m.specs.size());
  EXPECT_EQ(j["total"]["bytes"], m.bf16_bytes + m.f32_bytes + m.f16_bytes);
  EXPECT_EQ(j["dtypes"]["BF16"], nlohmann::json({{"tensors", m.bf16_count},
                                                 {"elements", m.bf16_bytes / 2},
                                                 {"bytes", m.bf16_bytes}}));
  EXPECT_EQ(j["dtypes"]["F32"],
            nlohmann::json(
                {{"tensors", m.f32_count}, {"elements", m.f32_bytes / 4}, {"bytes", m.f32_bytes}}));
  EXPECT_EQ(j["dtypes"]["F16"],
            nlohmann::json(
                {{"tensors", m.f16_count}, {"elements", m.f16_bytes / 2}, {"bytes", m.f16_bytes}}));
  // 256-byte experts and 64-byte gates under a 700-byte budget: several shards, each named as HF
  // does.
  const auto index =
      nlohmann::json::parse(alloy::test::read_bytes(dir / "model.safetensors.index.json"));
  ASSERT_GT(j["shards"].size(), 1u);
  uint64_t shard_tensors = 0;
  for (const auto& shard : j["shards"]) {
    EXPECT_EQ(shard["metadata"], nlohmann::json({{"format", "pt"}, {"note", "inspect test"}}));
    EXPECT_TRUE(fs::exists(dir / shard["file"].get<std::string>()));
    shard_tensors += shard["tensors"].get<uint64_t>();
  }
  EXPECT_EQ(shard_tensors, m.specs.size());
  for (const auto& t : j["tensors"])
    EXPECT_EQ(t["shard"], index["weight_map"][t["name"].get<std::string>()]);
  EXPECT_EQ(j["config"], nlohmann::json({{"architectures", {"Qwen2MoeForCausalLM"}},
                                         {"model_type", "qwen2_moe"},
                                         {"hidden_size", 8},
                                         {"num_hidden_layers", 2},
                                         {"num_experts", 4},
                                         {"num_experts_per_tok", 2},
                                         {"torch_dtype", "bfloat16"},
                                         {"tie_word_embeddings", false}}));
  EXPECT_EQ(j["auxiliary_files"], nlohmann::json::array({"tokenizer.json"}));
}

TEST(Inspect, LoneSafetensorsFile) {
  TempDir dir;
  const uint8_t values[3] = {1, 2, 3};
  alloy::write_safetensors_file(dir / "lone.safetensors", {{"x", alloy::DType::U8, {3}}}, {values});
  int status = -1;
  const std::string out = run_command(inspect_command(dir / "lone.safetensors", "--json"), &status);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["total"], nlohmann::json({{"tensors", 1}, {"elements", 3}, {"bytes", 3}}));
  EXPECT_EQ(j["shards"][0]["file"], "lone.safetensors");
  EXPECT_EQ(j["config"], nlohmann::json::object());
}

TEST(Inspect, HumanTableHasAlignedColumns) {
  TempDir dir;
  const auto m = write_moe_like(dir.path());
  int status = -1;
  const std::string out = run_command(inspect_command(dir.path()), &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find(": valid, " + std::to_string(m.specs.size()) + " tensors"), std::string::npos)
      << out;
  // Every tensor row puts dtype, shape and shard at the heading's columns; bytes end where the
  // heading's "bytes" ends.
  std::istringstream lines(out);
  std::string line, heading;
  size_t rows = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("name ", 0) == 0) {
      heading = line;
      continue;
    }
    if (heading.empty() || line.empty()) {
      if (!heading.empty() && line.empty()) break;
      continue;
    }
    ++rows;
    for (const char* column : {"dtype", "shape", "shard"}) {
      const size_t at = heading.find(column);
      ASSERT_GT(at, 0u);
      EXPECT_EQ(line[at - 1], ' ') << line;
      EXPECT_NE(line[at], ' ') << column << " in: " << line;
    }
    const size_t bytes_end = heading.find("bytes") + 5;
    EXPECT_NE(line[bytes_end - 1], ' ') << line;
    EXPECT_EQ(line[bytes_end], ' ') << line;
  }
  EXPECT_EQ(rows, m.specs.size()) << out;
  EXPECT_NE(out.find("BF16"), std::string::npos);
  EXPECT_NE(out.find("\ntotal "), std::string::npos) << out;
  EXPECT_NE(out.find("num_experts:"), std::string::npos) << out;
  EXPECT_NE(out.find("tokenizer.json"), std::string::npos) << out;
  EXPECT_NE(out.find("\"note\":\"inspect test\""), std::string::npos) << out;
}

TEST(Inspect, HumanTableGoldenFineTune) {
  int status = -1;
  const std::string out =
      run_command(inspect_command(alloy::test::data_dir() + "/golden/models/ft_a"), &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("valid, 39 tensors"), std::string::npos) << out;
  const size_t row = out.find("\nmodel.embed_tokens.weight ");
  ASSERT_NE(row, std::string::npos) << out;
  const std::string line = out.substr(row + 1, out.find('\n', row + 1) - row - 1);
  EXPECT_NE(line.find(" BF16 "), std::string::npos) << line;
  EXPECT_NE(line.find("[128, 64]"), std::string::npos) << line;
  EXPECT_NE(line.find(" 16384 "), std::string::npos) << line;
  EXPECT_NE(out.find("tokenizer.json"), std::string::npos);
}

TEST(Inspect, LibraryFormatsWhatItInspects) {
  TempDir dir;
  write_moe_like(dir.path());
  const alloy::Model model = alloy::Model::open(dir.path());
  const auto inspection = alloy::inspect_model(model);
  const std::string text = alloy::format_inspection(inspection);
  for (const auto& t : inspection["tensors"]) {
    EXPECT_NE(text.find(t["name"].get<std::string>() + " "), std::string::npos) << t["name"];
  }
  // The table straight from the model (alloy-inspect's path) is the same text, byte for byte.
  EXPECT_EQ(alloy::format_model(model), text);
  EXPECT_FALSE(alloy::inspect_model(model, false).contains("tensors"));
  EXPECT_EQ(alloy::inspect_model(model, false)["total"], inspection["total"]);
}

TEST(Inspect, CorruptFileExitsNonzeroNamingTheFile) {
  TempDir dir;
  alloy::test::write_bytes(dir / "bad.safetensors",
                           alloy::test::safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                                                          "\"data_offsets\":[0,4]}}",
                                                          "abcd"));
  const std::string err = expect_refused(dir / "bad.safetensors");
  EXPECT_EQ(err.rfind("alloy-inspect: error: ", 0), 0u) << err;
  EXPECT_NE(err.find("bad.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("[size-mismatch]"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;  // one line
}

TEST(Inspect, BrokenModelDirectoriesExitNonzero) {
  struct Case {
    const char* what;
    std::function<void(const fs::path&)> damage;
    alloy::ErrorCode code;
    const char* names;  // a file name the message must mention
  };
  const std::vector<Case> cases = {
      {"missing shard",
       [](const fs::path& d) { fs::remove(d / "model-00002-of-00003.safetensors"); },
       alloy::ErrorCode::kIndexMissingShard, "model-00002-of-00003.safetensors"},
      {"truncated shard",
       [](const fs::path& d) { fs::resize_file(d / "model-00003-of-00003.safetensors", 20); },
       alloy::ErrorCode::kHeaderOutOfBounds, "model-00003-of-00003.safetensors"},
      {"index not json",
       [](const fs::path& d) { alloy::test::write_bytes(d / "model.safetensors.index.json", "{"); },
       alloy::ErrorCode::kIndexNotJson, "model.safetensors.index.json"},
      {"config not json",
       [](const fs::path& d) { alloy::test::write_bytes(d / "config.json", "[1,"); },
       alloy::ErrorCode::kBadConfig, "config.json"},
  };
  for (const auto& c : cases) {
    TempDir dir;
    alloy::test::write_bytes(dir / "config.json", "{}");
    alloy::ShardedWriter writer(
        dir.path(),
        {{"a", alloy::DType::U8, {8}}, {"b", alloy::DType::U8, {8}}, {"c", alloy::DType::U8, {8}}},
        8);
    for (const char* name : {"a", "b", "c"}) writer.write(name, "12345678", 8);
    writer.finish();
    c.damage(dir.path());
    const std::string err = expect_refused(dir.path());
    EXPECT_EQ(err.rfind("alloy-inspect: error: ", 0), 0u) << c.what << ": " << err;
    EXPECT_NE(err.find(c.names), std::string::npos) << c.what << ": " << err;
    EXPECT_NE(err.find(std::string("[") + alloy::error_code_name(c.code) + "]"), std::string::npos)
        << c.what << ": " << err;
  }
  TempDir empty;
  const std::string err = expect_refused(empty.path());
  EXPECT_NE(err.find("[not-a-model]"), std::string::npos) << err;
  expect_refused(empty / "does-not-exist");
}

TEST(Inspect, BadFlagsAreRefused) {
  int status = -1;
  run_command("'" + bin("alloy-inspect") + "' 2>/dev/null", &status);
  EXPECT_NE(status, 0);
  run_command("'" + bin("alloy-inspect") + "' --no-such-flag x 2>/dev/null", &status);
  EXPECT_NE(status, 0);
  run_command("'" + bin("alloy-inspect") + "' --help >/dev/null", &status);
  EXPECT_EQ(status, 0);
}

}  // namespace
