// alloy-inspect, run as a real executable.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_utils.h"

namespace {

using alloy::test::bin;
using alloy::test::run_command;

TEST(Inspect, GoldenBaseModelAsJson) {
  int status = -1;
  const std::string out =
      run_command("'" + bin("alloy-inspect") + "' --json '" + alloy::test::data_dir() + "/golden/models/base'", &status);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["total"]["tensors"], 39);
  EXPECT_EQ(j["dtypes"]["BF16"]["tensors"], 39);
  EXPECT_EQ(j["dtypes"]["BF16"]["bytes"], j["total"]["bytes"]);
  EXPECT_EQ(j["config"]["num_hidden_layers"], 4);
  EXPECT_EQ(j["config"]["hidden_size"], 64);
  EXPECT_EQ(j["shards"][0]["file"], "model.safetensors");
  bool found = false;
  for (const auto& t : j["tensors"]) {
    if (t["name"] == "model.layers.0.mlp.down_proj.weight") {
      found = true;
      EXPECT_EQ(t["shape"], nlohmann::json::array({64, 96}));
      EXPECT_EQ(t["bytes"], 64 * 96 * 2);
    }
  }
  EXPECT_TRUE(found);
}

TEST(Inspect, HumanTable) {
  int status = -1;
  const std::string out =
      run_command("'" + bin("alloy-inspect") + "' '" + alloy::test::data_dir() + "/golden/models/ft_a'", &status);
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

TEST(Inspect, CorruptFileExitsNonzeroNamingTheFile) {
  alloy::test::TempDir dir;
  alloy::test::write_bytes(dir / "bad.safetensors",
                           alloy::test::safetensors_bytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
                                                          "\"data_offsets\":[0,4]}}",
                                                          "abcd"));
  int status = -1;
  const std::string out = run_command("'" + bin("alloy-inspect") + "' '" + (dir / "bad.safetensors").string() + "' 2>&1",
                                      &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(out.find("alloy-inspect: error: "), std::string::npos) << out;
  EXPECT_NE(out.find("bad.safetensors"), std::string::npos) << out;
  EXPECT_NE(out.find("[size-mismatch]"), std::string::npos) << out;
}

}  // namespace
