// Races and hostile conditions around one alloy-merge run (issue 13; docs/security.md): another
// writer at OUT, --overwrite onto an input, inputs truncated, modified or swapped during the
// merge, signals, and a killed run's leftovers. Each race is made deterministic with the pause
// points of alloy/core/test_hooks.h: the run stops at a named point, the test acts, then resumes it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "alloy/core/model.h"
#include "hash_cache_utils.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::read_bytes;
using alloy::test::TempDir;
using alloy::test::write_bytes;

constexpr const char* kRecipe =
    "merge_method: linear\n"
    "models:\n"
    "  - model: ft_1\n"
    "    parameters: {weight: 0.6}\n"
    "  - model: ft_2\n"
    "    parameters: {weight: 0.4}\n"
    "dtype: bfloat16\n";

// A small dense family (base, ft_1, ft_2) with tokenizer files, and the recipe, in `dir`.
void make_family(const fs::path& dir) {
  alloy::BaseModelOptions base;
  base.arch.layers = 2;
  base.arch.hidden = 64;
  base.arch.intermediate = 96;
  base.output.overwrite = true;
  alloy::synth_family(dir, base, 2, 1, alloy::FineTuneOptions{});
  write_bytes(dir / "linear.yml", kRecipe);
  // Two passes over the sources, which the executor holds in memory between them: slerp's sums
  // and chunks, TIES's selection passes and chunks.
  write_bytes(dir / "slerp.yml",
              "merge_method: slerp\nbase_model: ft_1\nmodels: [ft_1, ft_2]\nparameters: {t: 0.4}\ndtype: bfloat16\n");
  write_bytes(dir / "ties.yml",
              "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.6, density: 0.5}\n"
              "  - model: ft_2\n    parameters: {weight: 0.4, density: 0.3}\ndtype: bfloat16\n");
}

std::string merge_command(const fs::path& dir, const fs::path& out, const std::string& flags = "",
                          const std::string& recipe = "linear.yml") {
  return "cd '" + dir.string() + "' && exec '" + alloy::test::bin("alloy-merge") + "' -q " + flags + " " + recipe +
         " '" + out.string() + "'";
}

// alloy-merge started in the background, paused at `point` (test_hooks.h) once running.
class PausedMerge {
 public:
  PausedMerge(const std::string& command, const std::string& point, const fs::path& scratch)
      : pause_file_(scratch / ("pause-" + point + "-" + std::to_string(next_id()))),
        log_(scratch / ("log-" + pause_file_.filename().string())) {
    const std::string full = "export ALLOY_TEST_PAUSE_AT=" + point + " ALLOY_TEST_PAUSE_FILE='" +
                             pause_file_.string() + "'; " + command;
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string redirected = "exec > '" + log_.string() + "' 2>&1; " + full;
      ::execl("/bin/sh", "sh", "-c", redirected.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~PausedMerge() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Waits until the run has reached its pause point.
  bool wait_paused() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!fs::exists(pause_file_)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
  void resume() const { fs::remove(pause_file_); }
  pid_t pid() const { return pid_; }
  // The raw wait status.
  int finish() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return status;
  }
  std::string log() const { return read_bytes(log_); }

 private:
  static int next_id() {
    static int id = 0;
    return id++;
  }

  fs::path pause_file_, log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
};

// Names in `dir` that a staging run leaves (".NAME.alloy-tmp-..." folders, ".NAME.alloy-lock").
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".alloy-tmp-") != std::string::npos || name.find(".alloy-lock") != std::string::npos)
      found.push_back(name);
  }
  return found;
}

class Races : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    family_ = new TempDir();
    make_family(family_->path());
  }
  static void TearDownTestSuite() {
    delete family_;
    family_ = nullptr;
  }
  static const fs::path& family() { return family_->path(); }
  static TempDir* family_;
  TempDir scratch_;
};
TempDir* Races::family_ = nullptr;

TEST_F(Races, DirectoryCreatedAtOutDuringTheMergeIsNotDeleted) {
  const fs::path out = scratch_ / "out";
  PausedMerge merge(merge_command(family(), out), "before-publish", scratch_.path());
  ASSERT_TRUE(merge.wait_paused()) << merge.log();
  fs::create_directory(out);
  write_bytes(out / "precious.txt", "user data");
  merge.resume();
  const int status = merge.finish();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(merge.log().find("was created by someone else"), std::string::npos) << merge.log();
  EXPECT_EQ(read_bytes(out / "precious.txt"), "user data");
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
}

TEST_F(Races, OverwriteApprovedDirectorySwappedForAnotherIsNotDeleted) {
  const fs::path out = scratch_ / "out";
  fs::create_directory(out);
  write_bytes(out / "old.txt", "approved for replacement");
  PausedMerge merge(merge_command(family(), out, "--overwrite"), "before-publish", scratch_.path());
  ASSERT_TRUE(merge.wait_paused()) << merge.log();
  fs::rename(out, scratch_ / "moved");
  fs::create_directory(out);
  write_bytes(out / "new.txt", "someone else's");
  merge.resume();
  const int status = merge.finish();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(merge.log().find("was replaced by something else"), std::string::npos) << merge.log();
  EXPECT_EQ(read_bytes(out / "new.txt"), "someone else's");
  EXPECT_EQ(read_bytes(scratch_ / "moved" / "old.txt"), "approved for replacement");
}

TEST_F(Races, OverwriteReplacesTheApprovedDirectory) {
  const fs::path out = scratch_ / "out";
  fs::create_directory(out);
  write_bytes(out / "old.txt", "x");
  int status = -1;
  const std::string log = alloy::test::run_command(merge_command(family(), out, "--overwrite") + " 2>&1", &status);
  ASSERT_EQ(status, 0) << log;
  EXPECT_FALSE(fs::exists(out / "old.txt"));
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
}

TEST_F(Races, SecondWriterOfTheSameOutIsRefused) {
  const fs::path out = scratch_ / "out";
  PausedMerge first(merge_command(family(), out), "before-publish", scratch_.path());
  ASSERT_TRUE(first.wait_paused()) << first.log();
  int status = -1;
  const std::string log = alloy::test::run_command(merge_command(family(), out) + " 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(log.find("another alloy process is writing this output"), std::string::npos) << log;
  first.resume();
  const int first_status = first.finish();
  ASSERT_TRUE(WIFEXITED(first_status) && WEXITSTATUS(first_status) == 0) << first.log();
  EXPECT_NO_THROW(alloy::Model::open(out));
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
}

TEST_F(Races, OverwriteOntoAnInputOrItsParentIsRefused) {
  TempDir copy;
  make_family(copy.path());
  const std::string before = read_bytes(copy / "ft_1" / "model.safetensors");
  for (const fs::path& out : {copy / "ft_1", copy.path(), copy / "ft_1" / "."}) {
    int status = -1;
    const std::string log = alloy::test::run_command(merge_command(copy.path(), out, "--overwrite") + " 2>&1", &status);
    EXPECT_NE(status, 0) << out;
    EXPECT_NE(log.find("alloy never replaces its own inputs"), std::string::npos) << log;
  }
  EXPECT_EQ(read_bytes(copy / "ft_1" / "model.safetensors"), before);
}

TEST_F(Races, TruncatedInputIsAnErrorNotASignal) {
  for (const char* recipe : {"linear.yml", "slerp.yml", "ties.yml"}) {
    SCOPED_TRACE(recipe);
    TempDir copy;
    make_family(copy.path());
    const fs::path out = scratch_ / "out";
    PausedMerge merge(merge_command(copy.path(), out, "", recipe), "after-first-tensor", scratch_.path());
    ASSERT_TRUE(merge.wait_paused()) << merge.log();
    fs::resize_file(copy / "ft_2" / "model.safetensors", 4096);
    merge.resume();
    const int status = merge.finish();
    ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
    EXPECT_NE(WEXITSTATUS(status), 0);
    EXPECT_NE(merge.log().find("changed while alloy was reading it"), std::string::npos) << merge.log();
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(leftovers(scratch_.path()).empty());
  }
}

// Runs alloy-merge FLAGS on a copy of the family (with `prime`: its digests cached in DIR, passed
// as --hash-cache DIR), overwrites ft_1's last bytes after the first tensor, and expects the run
// refused with nothing published.
void expect_modified_in_place_refused(const fs::path& scratch, bool prime) {
  TempDir copy;
  make_family(copy.path());
  const fs::path cache = scratch / "cache";
  if (prime) alloy::test::prime_hash_cache(cache, {copy / "ft_1", copy / "ft_2"});
  const fs::path out = scratch / "out";
  PausedMerge merge(merge_command(copy.path(), out, prime ? "--hash-cache '" + cache.string() + "'" : ""),
                    "after-first-tensor", scratch);
  ASSERT_TRUE(merge.wait_paused()) << merge.log();
  {
    // Same size, other bytes at the end (a tensor the merge may already have read or not).
    std::fstream file(copy / "ft_1" / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-16, std::ios::end);
    file.write("sixteen  bytes!!", 16);
  }
  merge.resume();
  const int status = merge.finish();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(merge.log().find("was modified while alloy was reading it"), std::string::npos) << merge.log();
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Races, InputModifiedInPlaceIsRefused) { expect_modified_in_place_refused(scratch_.path(), false); }

// With --hash-cache the shard's digest comes from the cache (it is never read for hashing), and the
// end-of-run fstat check still catches the change.
TEST_F(Races, InputModifiedInPlaceIsRefusedWhenItsDigestWasCached) {
  expect_modified_in_place_refused(scratch_.path(), true);
}

TEST_F(Races, TokenizerSwappedForASymlinkIsNotPublished) {
  TempDir copy;
  make_family(copy.path());
  write_bytes(scratch_ / "secret", "id_rsa contents");
  const fs::path tokenizer = copy / "ft_1" / "tokenizer.json";
  ASSERT_TRUE(fs::exists(tokenizer));
  const std::string original = read_bytes(tokenizer);
  const fs::path out = scratch_ / "out";
  PausedMerge merge(merge_command(copy.path(), out), "after-first-tensor", scratch_.path());
  ASSERT_TRUE(merge.wait_paused()) << merge.log();
  fs::remove(tokenizer);
  fs::create_symlink(scratch_ / "secret", tokenizer);
  merge.resume();
  const int status = merge.finish();
  ASSERT_TRUE(WIFEXITED(status));
  // The copy reads the descriptor opened at the start, so the secret cannot be what is copied;
  // the file named by the path changed, so the run refuses rather than record a false hash.
  EXPECT_NE(WEXITSTATUS(status), 0) << merge.log();
  EXPECT_NE(merge.log().find("tokenizer.json"), std::string::npos) << merge.log();
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
  (void)original;
}

TEST_F(Races, HardLinkedTokenizerIsNotCopied) {
  TempDir copy;
  make_family(copy.path());
  write_bytes(scratch_ / "secret", "id_rsa contents");
  const fs::path tokenizer = copy / "ft_1" / "tokenizer.json";
  fs::remove(tokenizer);
  fs::create_hard_link(scratch_ / "secret", tokenizer);
  int status = -1;
  const std::string log = alloy::test::run_command(merge_command(copy.path(), scratch_ / "out") + " 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(log.find("hard links"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(scratch_ / "out"));
  // Without the tokenizer copy the same merge runs.
  const std::string ok =
      alloy::test::run_command(merge_command(copy.path(), scratch_ / "out", "--no-copy-tokenizer") + " 2>&1", &status);
  EXPECT_EQ(status, 0) << ok;
}

TEST_F(Races, SignalsRemoveTheStagingFolder) {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    const fs::path out = scratch_ / ("out-" + std::to_string(sig));
    PausedMerge merge(merge_command(family(), out), "before-publish", scratch_.path());
    ASSERT_TRUE(merge.wait_paused()) << merge.log();
    ASSERT_EQ(leftovers(scratch_.path()).size(), 2u);  // the staging folder and the lock
    ::kill(merge.pid(), sig);
    const int status = merge.finish();
    ASSERT_TRUE(WIFSIGNALED(status)) << merge.log();
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(leftovers(scratch_.path()).empty()) << "signal " << sig;
  }
}

TEST_F(Races, StagingLeftByAKilledRunIsSweptWithANotice) {
  const fs::path out = scratch_ / "out";
  {
    PausedMerge merge(merge_command(family(), out), "before-publish", scratch_.path());
    ASSERT_TRUE(merge.wait_paused()) << merge.log();
    ::kill(merge.pid(), SIGKILL);
    merge.finish();
  }
  bool staging_left = false;
  for (const auto& name : leftovers(scratch_.path())) staging_left |= name.find(".alloy-tmp-") != std::string::npos;
  ASSERT_TRUE(staging_left);
  int status = -1;
  const std::string log = alloy::test::run_command(merge_command(family(), out) + " 2>&1", &status);
  ASSERT_EQ(status, 0) << log;
  EXPECT_NE(log.find("a staging folder left by process"), std::string::npos) << log;
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
}

TEST_F(Races, OutputNameOfNameMaxBytesIsWritten) {
  const fs::path out = scratch_ / std::string(255, 'm');
  int status = -1;
  const std::string log = alloy::test::run_command(merge_command(family(), out) + " 2>&1", &status);
  ASSERT_EQ(status, 0) << log;
  EXPECT_NO_THROW(alloy::Model::open(out));
  EXPECT_TRUE(leftovers(scratch_.path()).empty());
}

}  // namespace
