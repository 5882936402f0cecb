// The tools' shared command line (every mergekit-yaml flag accepted by alloy-merge, --version on
// every tool, the exit statuses of tools/common/cli.h) and the recipe's chat_template (auto, a
// known name, Jinja text, anything else refused).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;

fs::path golden() {
  return fs::path(alloy::test::data_dir()) / "golden";
}

std::string merge(const fs::path& cwd, const std::string& args, int* status) {
  return run_command(
      "cd '" + cwd.string() + "' && '" + alloy::test::bin("alloy-merge") + "' " + args + " 2>&1",
      status);
}

// mergekit-yaml --help (mergekit/options.py at a6e4028): each flag in its positive and its
// negative spelling, and each option with a value.
TEST(MergeCli, AcceptsEveryMergekitYamlFlag) {
  const std::string positive =
      "--allow-crimes --transformers-cache /nowhere --lora-merge-cache /nowhere --lora-merge-dtype "
      "bfloat16 "
      "--cuda --device cuda --low-cpu-memory --out-shard-size 5B --copy-tokenizer --clone-tensors "
      "--trust-remote-code --random-seed 3 --lazy-unpickle --write-model-card --safe-serialization "
      "-vv --quiet "
      "--read-to-gpu --multi-gpu --num-threads 2 --gpu-rich --async-write --write-threads 2";
  const std::string negative =
      "--no-allow-crimes --no-cuda --no-low-cpu-memory --no-copy-tokenizer --no-clone-tensors "
      "--no-trust-remote-code --no-lazy-unpickle --no-write-model-card --no-safe-serialization -v "
      "--no-quiet "
      "--no-read-to-gpu --no-multi-gpu -j 1 --no-async-write";
  for (const std::string& flags : {positive, negative}) {
    alloy::test::TempDir out;
    int status = -1;
    const std::string log =
        merge(golden(), flags + " recipes/linear.yml '" + (out / "m").string() + "'", &status);
    EXPECT_EQ(status, 0) << flags << "\n" << log;
    EXPECT_TRUE(fs::exists(out / "m" / "model.safetensors")) << log;
    if (flags == positive) {
      for (const char* noted : {"--cuda", "--device cuda", "--write-threads 2"})
        EXPECT_NE(log.find(std::string("note: ") + noted + " has no effect"), std::string::npos)
            << noted << log;
      // .bin inputs are always read lazily: the note says so instead of "no effect".
      EXPECT_NE(log.find("note: --lazy-unpickle changes nothing"), std::string::npos) << log;
    }
  }
}

TEST(ToolCli, VersionOnEveryToolAndUsageErrorsExitTwo) {
  for (const char* tool :
       {"alloy-merge", "alloy-assay", "alloy-inspect", "alloy-synth", "alloy-lmc"}) {
    int status = -1;
    const std::string out = run_command("'" + alloy::test::bin(tool) + "' --version 2>&1", &status);
    EXPECT_EQ(status, 0) << tool << out;
    EXPECT_EQ(out, std::string(tool) + " (alloy " ALLOY_VERSION ")\n");
    const std::string bad =
        run_command("'" + alloy::test::bin(tool) + "' --no-such-flag x y 2>&1", &status);
    EXPECT_EQ(status, 2) << tool << bad;
  }
  int status = -1;
  merge(golden(), "recipes/linear.yml", &status);  // missing OUT_DIR
  EXPECT_EQ(status, 2);
  merge(golden(), "--help", &status);
  EXPECT_EQ(status, 0);
}

// ---------------------------------------------------------------------------------------------
// chat_template

alloy::Recipe recipe_with(const std::string& chat_template) {
  return alloy::parse_recipe(
      "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
      "chat_template: " +
          chat_template + "\n",
      "r.yml");
}

TEST(ChatTemplate, NamesBecomeTheirPublishedTemplates) {
  const auto chatml = recipe_with("chatml").chat_template.value();
  EXPECT_NE(
      chatml.find("'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"),
      std::string::npos)
      << chatml;
  EXPECT_NE(chatml.find("add_generation_prompt"), std::string::npos);
  EXPECT_NE(recipe_with("llama3").chat_template->find("<|start_header_id|>"), std::string::npos);
  EXPECT_NE(recipe_with("mistral").chat_template->find("[INST]"), std::string::npos);
  EXPECT_NE(recipe_with("alpaca").chat_template->find("### Instruction:"), std::string::npos);
  EXPECT_NE(recipe_with("exaone").chat_template->find("[|endofturn|]"), std::string::npos);
  EXPECT_EQ(recipe_with("auto").chat_template, "auto");  // resolved when the models are open
  const std::string jinja = "\"{% for m in messages %}{{ m['content'] }}{% endfor %}\"";
  EXPECT_EQ(recipe_with(jinja).chat_template,
            "{% for m in messages %}{{ m['content'] }}{% endfor %}");
}

TEST(ChatTemplate, AnythingElseIsARecipeError) {
  for (const char* value :
       {"nonsense", "chatml2", "ChatML", "\"{{ short }}\"", "\"a long text without braces\""}) {
    try {
      recipe_with(value);
      ADD_FAILURE() << value << " was accepted";
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), alloy::ErrorCode::kRecipe) << value;
      EXPECT_NE(std::string(e.what()).find("r.yml:5:"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(
                    "neither auto, a known template (alpaca, chatml, exaone, llama3, mistral)"),
                std::string::npos)
          << e.what();
    }
  }
}

// Copies the golden models base, ft_a, ft_b into dir, with the given chat templates.
void models_with_templates(const fs::path& dir, const std::vector<std::string>& templates) {
  const char* names[] = {"base", "ft_a", "ft_b"};
  for (size_t i = 0; i < 3; ++i) {
    fs::copy(golden() / "models" / names[i], dir / names[i], fs::copy_options::recursive);
    if (templates[i].empty()) continue;
    nlohmann::json config =
        nlohmann::json::parse(alloy::test::read_bytes(dir / names[i] / "tokenizer_config.json"));
    config["chat_template"] = templates[i];
    alloy::test::write_bytes(dir / names[i] / "tokenizer_config.json", config.dump(2));
  }
}

TEST(ChatTemplate, WrittenByAlloyMergeAndAutoTakesTheMostCommon) {
  alloy::test::TempDir dir;
  const std::string a = "{% for m in messages %}A{{ m['content'] }}{% endfor %}";
  const std::string b = "{% for m in messages %}B{{ m['content'] }}{% endfor %}";
  models_with_templates(dir.path(), {a, b + "\n", b});  // b twice (trailing space trimmed)
  auto run = [&](const std::string& value, const std::string& out) {
    alloy::test::write_bytes(dir.path() / "r.yml",
                             "merge_method: linear\nbase_model: base\nmodels:\n"
                             "  - model: base\n    parameters: {weight: 0.5}\n"
                             "  - model: ft_a\n    parameters: {weight: 0.5}\n"
                             "  - model: ft_b\n    parameters: {weight: 0.5}\n"
                             "chat_template: " +
                                 value + "\n");
    int status = -1;
    const std::string log = merge(dir.path(), "-q r.yml " + out, &status);
    EXPECT_EQ(status, value == "nonsense" ? 2 : 0) << log;
    return log;
  };
  run("chatml", "chatml");
  EXPECT_EQ(alloy::test::read_bytes(dir.path() / "chatml" / "chat_template.jinja"),
            recipe_with("chatml").chat_template.value());
  run("auto", "auto");
  EXPECT_EQ(alloy::test::read_bytes(dir.path() / "auto" / "chat_template.jinja"), b);
  const std::string log = run("nonsense", "nonsense");
  EXPECT_NE(log.find("chat_template 'nonsense' is neither"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir.path() / "nonsense"));
}

}  // namespace
