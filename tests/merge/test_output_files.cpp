// Tests for the output helpers: atomic files, staging directories, the model card.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/merge/model_card.h"

namespace fs = std::filesystem;

namespace {

class OutputFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("alloy-output-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  size_t entry_count(const fs::path& dir) {
    return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
  }
  fs::path root_;
};

TEST_F(OutputFiles, AtomicWriteLeavesOnlyTheFinalFile) {
  alloy::write_file_atomic(root_ / "a.txt", "hello");
  alloy::write_file_atomic(root_ / "a.txt", "replaced");
  EXPECT_EQ(alloy::read_text_file(root_ / "a.txt"), "replaced");
  EXPECT_EQ(entry_count(root_), 1u);
}

TEST_F(OutputFiles, AtomicWriteIntoMissingDirectoryFailsWithPath) {
  try {
    alloy::write_file_atomic(root_ / "missing" / "a.txt", "x");
    FAIL() << "expected an error";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("missing/a.txt"), std::string::npos) << e.what();
  }
}

TEST_F(OutputFiles, StagingDirectoryIsRemovedUnlessPublished) {
  fs::path staged;
  {
    alloy::StagingDirectory staging(root_ / "out", false);
    staged = staging.path();
    alloy::write_file_atomic(staged / "x", "1");
    EXPECT_FALSE(fs::exists(root_ / "out"));
  }
  EXPECT_FALSE(fs::exists(staged));
  EXPECT_EQ(entry_count(root_), 0u);
}

TEST_F(OutputFiles, PublishRenamesIntoPlace) {
  alloy::StagingDirectory staging(root_ / "out", false);
  alloy::write_file_atomic(staging.path() / "x", "1");
  staging.publish();
  EXPECT_EQ(alloy::read_text_file(root_ / "out" / "x"), "1");
  EXPECT_EQ(entry_count(root_), 1u);
}

TEST_F(OutputFiles, ExistingNonEmptyOutputNeedsOverwrite) {
  fs::create_directories(root_ / "out");
  alloy::write_file_atomic(root_ / "out" / "old", "old");
  try {
    alloy::StagingDirectory staging(root_ / "out", false);
    FAIL() << "expected an error";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kOutputExists);
  }
  alloy::StagingDirectory staging(root_ / "out", true);
  alloy::write_file_atomic(staging.path() / "new", "new");
  staging.publish();
  EXPECT_TRUE(fs::exists(root_ / "out" / "new"));
  EXPECT_FALSE(fs::exists(root_ / "out" / "old"));
  EXPECT_EQ(entry_count(root_), 1u);
}

TEST_F(OutputFiles, EmptyExistingDirectoryIsReused) {
  fs::create_directories(root_ / "out");
  alloy::StagingDirectory staging(root_ / "out", false);
  staging.publish();
  EXPECT_TRUE(fs::is_directory(root_ / "out"));
}

TEST(ModelCard, CreditsEveryModelOnceWithTagsAndRecipe) {
  alloy::ModelCardInfo info;
  info.merge_method = "ties";
  info.base_model = "models/base";
  info.models = {"models/ft_a", "models/base", "models/ft_b: weird"};
  info.recipe_yaml = "merge_method: ties\n";
  info.tool_version = "0.1.0";
  const std::string card = alloy::render_model_card(info);
  EXPECT_EQ(card.rfind("---\nbase_model:\n- models/base\n- models/ft_a\n- \"models/ft_b: weird\"\n", 0),
            0u)
      << card;
  EXPECT_NE(card.find("tags:\n- merge\n- mergekit\n- alloy\n"), std::string::npos);
  EXPECT_NE(card.find("[TIES](https://arxiv.org/abs/2306.01708)"), std::string::npos);
  EXPECT_NE(card.find("using models/base as a base"), std::string::npos);
  EXPECT_NE(card.find("```yaml\nmerge_method: ties\n```"), std::string::npos);
  EXPECT_EQ(card.find("* models/base\n"), std::string::npos) << "base is not listed as merged";
}

// Names from recipes are untrusted text: a newline and "---" in a model path must not end the
// front matter or start a Markdown line, and a recipe holding ``` must not close its code fence.
TEST(ModelCard, UntrustedNamesCannotBreakTheCard) {
  alloy::ModelCardInfo info;
  info.merge_method = "linear";
  info.name = "merged\n# injected heading";
  info.models = {"models/a\n---\nlicense: stolen", "models/b"};
  info.recipe_yaml = "merge_method: linear\n# ```\n";
  info.tool_version = "0.1.0";
  const std::string card = alloy::render_model_card(info);
  EXPECT_EQ(card.rfind("---\nbase_model:\n- \"models/a\\x0A---\\x0Alicense: stolen\"\n- models/b\n", 0), 0u) << card;
  size_t fences = 0, position = 0;
  while ((position = card.find("\n---\n", position)) != std::string::npos) ++fences, ++position;
  EXPECT_EQ(fences, 1u) << "only the end of the front matter: " << card;
  EXPECT_EQ(card.find("\nlicense: stolen"), std::string::npos) << card;
  EXPECT_NE(card.find("\nlicense: other\n"), std::string::npos) << card;
  EXPECT_NE(card.find("# merged\\x0A# injected heading\n"), std::string::npos) << card;
  EXPECT_NE(card.find("* models/a\\x0A---\\x0Alicense: stolen\n"), std::string::npos) << card;
  EXPECT_NE(card.find("````yaml\nmerge_method: linear\n# ```\n````\n"), std::string::npos) << card;
}

}  // namespace
