// StagingDirectory's publishing rules (alloy/core/file_util.h), in-process: the lock, the state of
// OUT decided at the start, inputs never replaced, stale folders swept, long names.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/notice.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::ErrorCode;
using alloy::StagingDirectory;
using alloy::test::read_bytes;
using alloy::test::TempDir;
using alloy::test::write_bytes;

ErrorCode code_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const alloy::Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no alloy::Error thrown";
  return ErrorCode::kInternal;
}

size_t entries(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(Staging, PublishesIntoAnAbsentPathAndLeavesNothingElse) {
  TempDir dir;
  {
    StagingDirectory staging(dir / "out", false);
    write_bytes(staging.path() / "a.txt", "a");
    EXPECT_EQ(entries(dir.path()), 2u);  // the staging folder and the lock
    staging.publish();
  }
  EXPECT_EQ(read_bytes(dir / "out" / "a.txt"), "a");
  EXPECT_EQ(entries(dir.path()), 1u);
}

TEST(Staging, ASecondWriterIsRefusedUntilTheFirstIsDone) {
  TempDir dir;
  {
    StagingDirectory first(dir / "out", false);
    EXPECT_EQ(code_of([&] { StagingDirectory second(dir / "out", false); }), ErrorCode::kOutputLocked);
    EXPECT_NO_THROW(StagingDirectory other(dir / "other", false));  // another OUT in the same folder
  }
  EXPECT_NO_THROW(StagingDirectory again(dir / "out", false));
  EXPECT_EQ(entries(dir.path()), 0u);
}

TEST(Staging, ADirectoryCreatedMeanwhileIsNotReplaced) {
  TempDir dir;
  StagingDirectory staging(dir / "out", false);
  fs::create_directory(dir / "out");
  EXPECT_EQ(code_of([&] { staging.publish(); }), ErrorCode::kOutputChanged);
  EXPECT_TRUE(fs::is_empty(dir / "out"));
}

TEST(Staging, AnEmptyOutFilledMeanwhileIsNotReplacedWithoutOverwrite) {
  TempDir dir;
  fs::create_directory(dir / "out");
  StagingDirectory staging(dir / "out", false);
  write_bytes(dir / "out" / "user.txt", "u");
  EXPECT_EQ(code_of([&] { staging.publish(); }), ErrorCode::kOutputChanged);
  EXPECT_EQ(read_bytes(dir / "out" / "user.txt"), "u");
}

TEST(Staging, TheApprovedDirectoryIsReplacedAndNoOther) {
  TempDir dir;
  fs::create_directory(dir / "out");
  write_bytes(dir / "out" / "old.txt", "old");
  {
    StagingDirectory staging(dir / "out", true);
    write_bytes(staging.path() / "new.txt", "new");
    staging.publish();
  }
  EXPECT_FALSE(fs::exists(dir / "out" / "old.txt"));
  EXPECT_EQ(read_bytes(dir / "out" / "new.txt"), "new");
  EXPECT_EQ(entries(dir.path()), 1u);

  StagingDirectory staging(dir / "out", true);
  fs::rename(dir / "out", dir / "aside");
  fs::create_directory(dir / "out");
  write_bytes(dir / "out" / "theirs.txt", "t");
  EXPECT_EQ(code_of([&] { staging.publish(); }), ErrorCode::kOutputChanged);
  EXPECT_EQ(read_bytes(dir / "out" / "theirs.txt"), "t");
  EXPECT_EQ(read_bytes(dir / "aside" / "new.txt"), "new");
}

TEST(Staging, AnOutputThatIsOrContainsAnInputIsRefusedEvenWithOverwrite) {
  TempDir dir;
  fs::create_directories(dir / "models" / "a");
  write_bytes(dir / "models" / "a" / "model.safetensors", "x");
  const std::vector<fs::path> inputs{dir / "models" / "a"};
  for (const fs::path& out : {dir / "models" / "a", dir / "models", dir / "models" / ".." / "models" / "a" / ""}) {
    EXPECT_EQ(code_of([&] { StagingDirectory s(out, true, inputs); }), ErrorCode::kOutputIsInput) << out;
  }
  EXPECT_NO_THROW(StagingDirectory s(dir / "models" / "b", true, inputs));
  EXPECT_TRUE(fs::exists(dir / "models" / "a" / "model.safetensors"));
}

TEST(Staging, FoldersOfDeadProcessesAreSweptWithANotice) {
  TempDir dir;
  const pid_t child = ::fork();
  if (child == 0) {
    StagingDirectory left(dir / "out", false);  // never destroyed: _exit skips destructors
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_EQ(entries(dir.path()), 2u);  // the dead run's staging folder and lock file
  std::vector<std::string> notices;
  auto previous = alloy::set_notice_sink([&](const std::string& m) { notices.push_back(m); });
  {
    StagingDirectory staging(dir / "out", false);
    staging.publish();
  }
  alloy::set_notice_sink(previous);
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_NE(notices[0].find("process " + std::to_string(child)), std::string::npos) << notices[0];
  EXPECT_EQ(entries(dir.path()), 1u);
}

TEST(Staging, ALiveProcessesFolderIsKept) {
  TempDir dir;
  StagingDirectory live(dir / "out", false);
  EXPECT_EQ(code_of([&] { StagingDirectory second(dir / "out", false); }), ErrorCode::kOutputLocked);
  EXPECT_TRUE(fs::exists(live.path()));
}

TEST(Staging, NamesUpToNameMaxFit) {
  TempDir dir;
  for (size_t length : {size_t{96}, size_t{97}, size_t{200}, size_t{255}}) {
    const fs::path out = dir / std::string(length, 'n');
    StagingDirectory staging(out, false);
    EXPECT_LE(staging.path().filename().string().size(), 255u);
    staging.publish();
    EXPECT_TRUE(fs::is_directory(out));
  }
}

}  // namespace
