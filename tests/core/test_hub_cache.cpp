// Models by Hub id, offline, through a Hugging Face cache tree the tests build themselves:
// models--ORG--NAME/{refs/main, snapshots/HASH/<links into ../../blobs>, blobs/}.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "alloy/core/error.h"
#include "alloy/core/hub_cache.h"
#include "alloy/core/model.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"
#include "tiny_model.h"

namespace {

namespace fs = std::filesystem;

// Sets an environment variable for one test and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) ::setenv(name_, old_.c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Moves every file of `model` into CACHE/models--ORG--NAME/blobs/ (named by position, as the Hub
// names them by hash) and links them from snapshots/COMMIT/, with refs/main -> COMMIT.
fs::path put_in_cache(const fs::path& model, const fs::path& cache, const std::string& repo, const std::string& commit) {
  std::string folder = "models--" + repo;
  folder.replace(folder.find('/'), 1, "--");
  const fs::path root = cache / folder, snapshot = root / "snapshots" / commit;
  fs::create_directories(root / "blobs");
  fs::create_directories(root / "refs");
  fs::create_directories(snapshot);
  int n = 0;
  for (const auto& entry : fs::directory_iterator(model)) {
    const std::string blob = commit + "-blob" + std::to_string(n++);
    fs::copy_file(entry.path(), root / "blobs" / blob);
    fs::create_symlink(fs::path("../../blobs") / blob, snapshot / entry.path().filename());
  }
  std::ofstream(root / "refs" / "main") << commit;
  return snapshot;
}

alloy::BaseModelOptions tiny(uint64_t seed) { return alloy::test::tiny_model(seed); }

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

alloy::MergePlan plan(const std::string& yaml) {
  return alloy::plan_merge(alloy::parse_recipe(yaml, "hub test recipe"), alloy::PlanOptions{});
}

TEST(HubCache, IdsAreRecognisedAndPathsAreNot) {
  for (const char* id : {"gpt2", "mistralai/Mistral-7B-v0.1", "org/name@main", "org/name@refs/pr/1", "a.b/c_d-e@v1.0"}) {
    EXPECT_TRUE(alloy::looks_like_hub_id(id)) << id;
  }
  for (const char* name : {"", "../x", "a/b/c", "/abs/path", "./local", "org/..", "org/name@../x", "org/name@", ".hidden/x",
                           "org/-x", "org/na me"}) {
    EXPECT_FALSE(alloy::looks_like_hub_id(name)) << name;
  }
}

TEST(HubCache, CacheDirectoryFollowsTheEnvironment) {
  ScopedEnv hub("HF_HUB_CACHE", "/somewhere/hub");
  EXPECT_EQ(alloy::hub_cache_dir(), fs::path("/somewhere/hub"));
  ::unsetenv("HF_HUB_CACHE");
  ScopedEnv home("HF_HOME", "/hf");
  EXPECT_EQ(alloy::hub_cache_dir(), fs::path("/hf/hub"));
}

TEST(HubCache, MergesModelsByHubIdWithSymlinkedBlobs) {
  alloy::test::TempDir dir;
  alloy::synth_base_model(dir / "a", tiny(1));
  alloy::synth_base_model(dir / "b", tiny(2));
  const fs::path cache = dir / "hub";
  put_in_cache(dir / "a", cache, "acme/tiny-a", "0123abcd");
  const fs::path b_snapshot = put_in_cache(dir / "b", cache, "acme/tiny-b", "feedbeef");
  std::ofstream(cache / "models--acme--tiny-b" / "refs" / "v1") << "feedbeef";
  ScopedEnv hub("HF_HUB_CACHE", cache.string());

  const std::string by_id = "merge_method: linear\nmodels:\n  - model: acme/tiny-a\n    parameters: {weight: 0.3}\n"
                            "  - model: acme/tiny-b@v1\n    parameters: {weight: 0.7}\ndtype: bfloat16\n";
  const std::string local = "merge_method: linear\nmodels:\n  - model: " + (dir / "a").string() +
                            "\n    parameters: {weight: 0.3}\n  - model: " + (dir / "b").string() +
                            "\n    parameters: {weight: 0.7}\ndtype: bfloat16\n";
  alloy::MergeOptions options;
  options.out_dir = dir / "by_id";
  alloy::MergePlan p = plan(by_id);
  EXPECT_EQ(p.model_paths[1], b_snapshot);
  alloy::run_merge(p, options);
  options.out_dir = dir / "local";
  alloy::run_merge(plan(local), options);
  EXPECT_EQ(read_text(dir / "by_id" / "model.safetensors"), read_text(dir / "local" / "model.safetensors"));
  // The tokenizer, a link into blobs/, is copied; the card names the Hub ids.
  EXPECT_EQ(read_text(dir / "by_id" / "tokenizer.json"), read_text(dir / "a" / "tokenizer.json"));
  const std::string card = read_text(dir / "by_id" / "README.md");
  EXPECT_NE(card.find("acme/tiny-a"), std::string::npos) << card;
  EXPECT_NE(card.find("acme/tiny-b@v1"), std::string::npos) << card;
}

TEST(HubCache, ALinkLeavingTheModelsCacheFolderIsRefused) {
  alloy::test::TempDir dir;
  alloy::synth_base_model(dir / "a", tiny(1));
  const fs::path cache = dir / "hub";
  const fs::path snapshot = put_in_cache(dir / "a", cache, "acme/tiny-a", "0123abcd");
  // Another model's blob is outside this model's folder, as is any other file.
  fs::create_directories(cache / "models--acme--other" / "blobs");
  std::ofstream(cache / "models--acme--other" / "blobs" / "secret") << "{\"secret\": 1}";
  fs::remove(snapshot / "tokenizer.json");
  fs::create_symlink("../../../models--acme--other/blobs/secret", snapshot / "tokenizer.json");
  try {
    alloy::Model::open(snapshot);
    FAIL() << "a link out of the model's cache folder was followed";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kSymlinkEscape) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST(HubCache, AMissingModelSaysWhereItLookedAndHowToFetchIt) {
  alloy::test::TempDir dir;
  fs::create_directories(dir / "hub");
  ScopedEnv hub("HF_HUB_CACHE", (dir / "hub").string());
  try {
    alloy::resolve_hub_model("acme/missing@v2");
    FAIL() << "resolved a model that is not in the cache";
  } catch (const alloy::Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.code(), alloy::ErrorCode::kNotAModel);
    EXPECT_NE(what.find((dir / "hub").string()), std::string::npos) << what;
    EXPECT_NE(what.find("huggingface-cli download acme/missing --revision v2"), std::string::npos) << what;
  }
  // Through a recipe: the recipe error names the model.
  try {
    plan("merge_method: linear\nmodels:\n  - model: acme/missing\n    parameters: {weight: 1}\n");
    FAIL() << "planned a recipe with a missing Hub model";
  } catch (const alloy::Error& e) {
    EXPECT_NE(std::string(e.what()).find("acme/missing"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("huggingface-cli download acme/missing"), std::string::npos) << e.what();
  }
}

}  // namespace
