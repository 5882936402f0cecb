// Tokenizers and vocabularies (docs/methods.md, "Tokenizers and vocabularies"): the output
// vocabulary (base, union, a model; tokenizer.tokens; pad_to_multiple_of) and embed_tokens /
// lm_head rows mapped token by token, with every expected row worked out by hand from mergekit's
// rules (mergekit/tokenizer/build.py and embed.py). A mapping by id gives other values.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/merge/merge.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Rows = std::vector<std::vector<float>>;

struct TinyModel {
  std::vector<std::string> vocab;              // model.vocab, ids 0..
  std::vector<std::pair<std::string, bool>> added;  // added tokens (content, special), ids after vocab
  Rows embed;                                  // one row of 2 per token
  bool lm_head = true;                         // lm_head = -embed; else tied (no lm_head tensor)
  int64_t vocab_size = -1;                     // config.json's vocab_size (-1: the row count)
};

std::string floats(const Rows& rows, float scale) {
  std::string out;
  for (const auto& row : rows) {
    for (float v : row) {
      const float x = v * scale;
      out.append(reinterpret_cast<const char*>(&x), 4);
    }
  }
  return out;
}

// A one-layer Llama-style model with a BPE tokenizer.json and tokenizer_config.json.
void write_model(const fs::path& dir, const TinyModel& m) {
  using alloy::test::tensor_entry;
  fs::create_directories(dir);
  const uint64_t v = m.embed.size(), eb = v * 8;
  std::string header = "{" + tensor_entry("model.embed_tokens.weight", "F32", {v, 2}, 0, eb) + "," +
                       tensor_entry("model.layers.0.mlp.up_proj.weight", "F32", {2, 2}, eb, eb + 16) + "," +
                       tensor_entry("model.norm.weight", "F32", {2}, eb + 16, eb + 24);
  std::string data = floats(m.embed, 1) + floats({{1, 2}, {3, 4}, {5, 6}}, 1);
  if (m.lm_head) {
    header += "," + tensor_entry("lm_head.weight", "F32", {v, 2}, eb + 24, 2 * eb + 24);
    data += floats(m.embed, -1);
  }
  alloy::test::write_safetensors(dir / "model.safetensors", header + "}", data);
  json config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"num_hidden_layers", 1},
                 {"hidden_size", 2}, {"vocab_size", m.vocab_size >= 0 ? m.vocab_size : static_cast<int64_t>(v)}, {"tie_word_embeddings", !m.lm_head}};
  alloy::test::write_bytes(dir / "config.json", config.dump());
  json vocab = json::object(), added = json::array(), decoder = json::object();
  for (size_t i = 0; i < m.vocab.size(); ++i) vocab[m.vocab[i]] = i;
  for (size_t i = 0; i < m.added.size(); ++i) {
    const json entry = {{"id", m.vocab.size() + i}, {"content", m.added[i].first}, {"single_word", false},
                        {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", m.added[i].second}};
    added.push_back(entry);
    json info = entry;
    info.erase("id");
    decoder[std::to_string(m.vocab.size() + i)] = info;
  }
  json tok = {{"version", "1.0"}, {"added_tokens", added},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  alloy::test::write_bytes(dir / "tokenizer.json", tok.dump());
  alloy::test::write_bytes(dir / "tokenizer_config.json", json{{"added_tokens_decoder", decoder}}.dump());
}

// a: base, 4 tokens; b: other ids, one more added token; c: two tokens, tied lm_head.
const TinyModel kA{{"a", "b", "c"}, {{"<s>", true}}, {{1, 2}, {3, 4}, {5, 6}, {7, 8}}};
const TinyModel kB{{"b", "d", "a"}, {{"<s>", true}, {"<x>", true}},
                   {{100, 200}, {300, 400}, {500, 600}, {700, 800}, {900, 1000}}};
const TinyModel kC{{"d", "e"}, {}, {{11, 13}, {17, 19}}, false};

class TokenizerMerge : public ::testing::Test {
 protected:
  void SetUp() override {
    write_model(dir_ / "a", kA);
    write_model(dir_ / "b", kB);
    write_model(dir_ / "c", kC);
  }
  alloy::MergePlan plan(const std::string& recipe) {
    alloy::PlanOptions options;
    options.base_dir = dir_.path();
    return alloy::plan_merge(alloy::parse_recipe(recipe, "t.yml"), options);
  }
  // Merges and returns the output's rows of `tensor`.
  Rows merge(const std::string& recipe, const std::string& tensor = "model.embed_tokens.weight") {
    const alloy::MergePlan p = plan(recipe);
    alloy::MergeOptions options;
    options.out_dir = out();
    options.overwrite = true;
    alloy::run_merge(p, options);
    const alloy::Model model = alloy::Model::open(out());
    const auto* t = model.find(tensor);
    EXPECT_NE(t, nullptr) << tensor;
    Rows rows(t->info->shape[0], std::vector<float>(2));
    const float* values = reinterpret_cast<const float*>(t->data());
    for (size_t r = 0; r < rows.size(); ++r) rows[r] = {values[2 * r], values[2 * r + 1]};
    return rows;
  }
  fs::path out() const { return dir_ / "out"; }
  json out_json(const std::string& name) const { return json::parse(alloy::test::read_bytes(out() / name)); }

  alloy::test::TempDir dir_;
};

void expect_rows(const Rows& actual, const Rows& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t r = 0; r < expected.size(); ++r) {
    EXPECT_NEAR(actual[r][0], expected[r][0], 1e-4) << "row " << r;
    EXPECT_NEAR(actual[r][1], expected[r][1], 1e-4) << "row " << r;
  }
}

const std::string kLinear3 = "merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                             "  - model: b\n    parameters: {weight: 1}\n  - model: c\n    parameters: {weight: 1}\n";

TEST_F(TokenizerMerge, UnionMapsRowsTokenByToken) {
  // Union: a's [a b c <s>], then b's and c's plain tokens in id order (d, e), then the added
  // tokens not yet in (<x>). A model lacking a token gets: the only model's row (c, e, <x>), the
  // base's where it has it (a, b, <s>), else the mean of those that have it (d: b's and c's).
  const Rows rows = merge(kLinear3 + "tokenizer_source: union\n");
  const float d0 = (300 + 11) / 2.0f, d1 = (400 + 13) / 2.0f;
  expect_rows(rows, {{(1 + 500 + 1) / 3.0f, (2 + 600 + 2) / 3.0f},   // a: c takes a's
                     {(3 + 100 + 3) / 3.0f, (4 + 200 + 4) / 3.0f},   // b
                     {5, 6},                                         // c: only a has it
                     {(7 + 700 + 7) / 3.0f, (8 + 800 + 8) / 3.0f},   // <s>
                     {(d0 + 300 + 11) / 3.0f, (d1 + 400 + 13) / 3.0f},  // d: a takes the mean
                     {17, 19},                                       // e: only c
                     {900, 1000}});                                  // <x>: only b
  EXPECT_EQ(out_json("config.json")["vocab_size"], 7);
  const json tok = out_json("tokenizer.json");
  ASSERT_EQ(tok["added_tokens"].size(), 4u);
  EXPECT_EQ(tok["added_tokens"][1]["content"], "d");
  EXPECT_EQ(tok["added_tokens"][1]["id"], 4);
  EXPECT_EQ(tok["added_tokens"][1]["special"], false);
  EXPECT_EQ(tok["added_tokens"][2]["content"], "e");
  EXPECT_EQ(tok["added_tokens"][3]["content"], "<x>");
  EXPECT_EQ(tok["added_tokens"][3]["id"], 6);
  EXPECT_EQ(tok["added_tokens"][3]["special"], true);  // b's settings
  EXPECT_EQ(tok["model"]["vocab"].size(), 3u);
  EXPECT_EQ(out_json("tokenizer_config.json")["added_tokens_decoder"]["6"]["content"], "<x>");
  const json internal = out_json("alloy_provenance.json")["predicate"]["buildDefinition"]["internalParameters"];
  EXPECT_EQ(internal["tokenizer"]["rows"], 7);
  EXPECT_EQ(internal["tokenizer"]["rewrites_files"], true);
  bool c_reported = false;
  for (const auto& n : internal["notices"]) c_reported |= n.get<std::string>().find("model 'c' lacks 5 of the 7") != std::string::npos;
  EXPECT_TRUE(c_reported) << internal["notices"].dump();
}

TEST_F(TokenizerMerge, UnionLmHeadUsesTiedEmbeddings) {
  // c has no lm_head: its tied embeddings stand in (e's row is c's embedding, not negated).
  const Rows rows = merge(kLinear3 + "tokenizer_source: union\n", "lm_head.weight");
  ASSERT_EQ(rows.size(), 7u);
  EXPECT_FLOAT_EQ(rows[2][0], -5);  // c: a's lm_head row, everywhere
  EXPECT_FLOAT_EQ(rows[5][0], 17);  // e
  EXPECT_FLOAT_EQ(rows[5][1], 19);
  EXPECT_FLOAT_EQ(rows[6][0], -900);
}

TEST_F(TokenizerMerge, ModelSourcedTokenizerKeepsEveryRow) {
  // b's vocabulary [b d a <s> <x>]: a has b, a, <s> at other ids and lacks d and <x> (b's rows).
  const alloy::MergePlan p = plan("merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: "
                                  "{weight: 1}\n  - model: b\n    parameters: {weight: 1}\ntokenizer_source: b\n");
  EXPECT_EQ(p.tokenizer_donor, 1);
  const Rows rows = merge("merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                          "  - model: b\n    parameters: {weight: 1}\ntokenizer_source: b\n");
  expect_rows(rows, {{51.5f, 102}, {300, 400}, {250.5f, 301}, {353.5f, 404}, {900, 1000}});
  EXPECT_EQ(out_json("config.json")["vocab_size"], 5);
  EXPECT_EQ(alloy::test::read_bytes(out() / "tokenizer.json"), alloy::test::read_bytes(dir_ / "b" / "tokenizer.json"));
}

TEST_F(TokenizerMerge, PadToMultipleOfAddsMeanRows) {
  const Rows rows = merge(kLinear3 + "tokenizer:\n  source: union\n  pad_to_multiple_of: 4\n");
  ASSERT_EQ(rows.size(), 8u);
  EXPECT_EQ(out_json("config.json")["vocab_size"], 8);
  // Each model's padding row is the mean of its 7 mapped rows; linear, so the merged padding row
  // is the mean of the 7 merged rows.
  float m0 = 0, m1 = 0;
  for (size_t r = 0; r < 7; ++r) m0 += rows[r][0] / 7, m1 += rows[r][1] / 7;
  EXPECT_NEAR(rows[7][0], m0, 1e-3);
  EXPECT_NEAR(rows[7][1], m1, 1e-3);
  EXPECT_NEAR(rows[7][0], (502 / 3.0 + 106 / 3.0 + 5 + 238 + (155.5 + 311) / 3 + 17 + 900) / 7, 1e-3);
}

TEST_F(TokenizerMerge, TokensOverrides) {
  const Rows rows = merge(
      "merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
      "  - model: b\n    parameters: {weight: 1}\ntokenizer:\n  tokens:\n"
      "    a:\n      source: {kind: model_token, model: b, token: d}\n      force: true\n"
      "    b:\n      source: b\n      force: true\n"
      "    <x>:\n      source: {kind: zero}\n"
      "    <new>:\n      source: {kind: zero}\n");
  // union (the tokenizer block's default) [a b c <s> d <x>] + <new>.
  expect_rows(rows, {{300, 400},     // a: b's d row, forced on both
                     {100, 200},     // b: b's row, forced
                     {5, 6},         // c
                     {353.5f, 404},  // <s>
                     {300, 400},     // d: only b
                     {450, 500},     // <x>: b keeps its own, a gets zero
                     {0, 0}});       // <new>: in no model
  EXPECT_EQ(out_json("tokenizer.json")["added_tokens"].back()["content"], "<new>");
}

TEST_F(TokenizerMerge, CropWithoutTokenizerIsAWarning) {
  const alloy::MergePlan p = plan("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                                  "  - model: b\n    parameters: {weight: 1}\n");
  ASSERT_FALSE(p.warnings.empty());
  EXPECT_NE(p.warnings[0].find("vocabularies differ"), std::string::npos) << p.warnings[0];
  EXPECT_NE(p.warnings[0].find("cropped to 4 rows"), std::string::npos) << p.warnings[0];
  const alloy::MergePlan sourced = plan("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                                        "  - model: b\n    parameters: {weight: 1}\ntokenizer_source: b\n");
  for (const auto& w : sourced.warnings) EXPECT_EQ(w.find("cropped"), std::string::npos) << w;
  bool reported = false;
  for (const auto& n : sourced.notices) reported |= n.find("model 'a' lacks 2 of the 5 output tokens") != std::string::npos;
  EXPECT_TRUE(reported);
}

TEST_F(TokenizerMerge, BaseIsStrippedOfIdsPastItsVocabSize) {
  // a's config says 3 tokens: '<s>' (id 3) is stripped from the output vocabulary and its files;
  // b's '<s>' then has no counterpart in the base, and b's a, b map to their ids in a.
  TinyModel a = kA;
  a.vocab_size = 3;
  write_model(dir_ / "a", a);
  const std::string recipe = "merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                             "  - model: b\n    parameters: {weight: 1}\ntokenizer_source: base\n";
  const alloy::MergePlan p = plan(recipe);
  ASSERT_FALSE(p.warnings.empty());
  EXPECT_NE(p.warnings[0].find("1 token(s) of 'a' have ids >= its config's vocab_size"), std::string::npos)
      << p.warnings[0];
  expect_rows(merge(recipe), {{250.5f, 301}, {51.5f, 102}, {5, 6}});
  EXPECT_EQ(out_json("config.json")["vocab_size"], 3);
  EXPECT_TRUE(out_json("tokenizer.json")["added_tokens"].empty());
  EXPECT_TRUE(out_json("tokenizer_config.json")["added_tokens_decoder"].empty());
}

TEST_F(TokenizerMerge, BadTokenizerJsonNamesTheFile) {
  const std::string recipe = kLinear3 + "tokenizer_source: union\n";
  for (const std::string& bad : {std::string("{not json"), std::string(R"({"model":{"vocab":7}})"),
                                  std::string(R"({"model":{"vocab":{"a":0,"b":0}}})"),
                                  std::string(R"({"model":{"vocab":{"a":-1}}})")}) {
    alloy::test::write_bytes(dir_ / "b" / "tokenizer.json", bad);
    try {
      plan(recipe);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const alloy::Error& e) {
      EXPECT_NE(std::string(e.what()).find("b/tokenizer.json: "), std::string::npos) << e.what();
    }
  }
}

TEST_F(TokenizerMerge, RecipeErrors) {
  const std::string head = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tokenizer_source: base\ntokenizer: {source: union}\n", "not both"},
      {"tokenizer:\n  tokens:\n    x: {force: true}\n", "has no source"},
      {"tokenizer:\n  pad_to_multiple_of: 0\n", "pad_to_multiple_of must be"},
      {"tokenizer:\n  tokens:\n    x:\n      source: {kind: model_token, model: a}\n", "exactly one of token"},
      {"tokenizer:\n  tokens:\n    x:\n      source: {kind: one}\n", "kind: zero or kind: model_token"},
  };
  for (const auto& [yaml, message] : cases) {
    try {
      alloy::parse_recipe(head + yaml, "t.yml");
      ADD_FAILURE() << yaml;
    } catch (const alloy::Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
  try {
    plan(head + "tokenizer:\n  tokens:\n    d: {source: a}\n");
    ADD_FAILURE();
  } catch (const alloy::Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 'd' is not in model 'a'"), std::string::npos) << e.what();
  }
}

}  // namespace
