// alloy-merge --hash-cache (and ALLOY_HASH_CACHE): digests taken from the cache are marked in
// alloy_provenance.json, the outputs are the same bytes with and without it, and a file changed
// between runs is hashed again. (A file changed during a run: tests/merge/test_races.cpp.)
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "alloy/core/sha256.h"
#include "assay/test_assay_utils.h"
#include "hash_cache_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::read_bytes;
using alloy::test::run_command;
using nlohmann::json;

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

constexpr const char* kRecipe =
    "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.6}\n"
    "  - model: ft_2\n    parameters: {weight: 0.4}\ndtype: bfloat16\n";

class HashCacheMerge : public ::testing::Test {
 protected:
  HashCacheMerge() : family_(alloy::ModelFamily::kLlama, 47, 0.05) {
    alloy::test::write_bytes(work() / "r.yml", kRecipe);
  }
  fs::path work() const { return family_.temp.path(); }
  fs::path models() const { return family_.dir; }
  fs::path cache() const { return work() / "cache"; }

  // ENV alloy-merge FLAGS r.yml work/NAME (the same OUT name every time: the card names it), moved
  // to work/NAME.<run> afterwards; returns that folder.
  fs::path merge(const std::string& env, const std::string& flags, const std::string& run, std::string* log = nullptr) {
    int status = -1;
    const fs::path out = work() / "merged";
    const std::string text = run_command("cd " + quote(models()) + " && env SOURCE_DATE_EPOCH=1700000000 " + env + " " +
                                             quote(alloy::test::bin("alloy-merge")) + " -q --out-shard-size 20K " +
                                             flags + " " + quote(work() / "r.yml") + " " + quote(out) + " 2>&1",
                                         &status);
    EXPECT_EQ(status, 0) << text;
    if (log) *log = text;
    const fs::path kept = work() / ("merged." + run);
    fs::rename(out, kept);
    return kept;
  }

  // The provenance's dependencies by name.
  static std::map<std::string, json> dependencies(const fs::path& merged) {
    const json statement = json::parse(read_bytes(merged / "alloy_provenance.json"));
    std::map<std::string, json> found;
    for (const auto& d : statement["predicate"]["buildDefinition"]["resolvedDependencies"]) found[d["name"]] = d;
    return found;
  }

  alloy::test::AssayFamily family_;
};

// Every output file but the provenance: the same bytes.
void expect_same_outputs(const fs::path& a, const fs::path& b) {
  size_t compared = 0;
  for (const auto& e : fs::directory_iterator(a)) {
    const std::string name = e.path().filename().string();
    if (name == "alloy_provenance.json") continue;
    EXPECT_EQ(read_bytes(e.path()), read_bytes(b / name)) << name;
    ++compared;
  }
  EXPECT_GT(compared, 4u);
}

TEST_F(HashCacheMerge, CachedDigestsAreMarkedAndTheOutputsDoNotChange) {
  const fs::path plain = merge("", "", "plain");
  alloy::test::prime_hash_cache(cache(), {models() / "ft_1", models() / "ft_2"});
  const fs::path cached = merge("", "--hash-cache " + quote(cache()), "cached");
  const fs::path from_env = merge("ALLOY_HASH_CACHE=" + quote(cache()), "", "env");
  expect_same_outputs(plain, cached);
  expect_same_outputs(plain, from_env);
  const auto without = dependencies(plain);
  ASSERT_GT(without.size(), 4u);
  for (const fs::path& run : {cached, from_env}) {
    const auto with = dependencies(run);
    ASSERT_EQ(with.size(), without.size());
    for (const auto& [name, dependency] : with) {
      const json& plain_dependency = without.at(name);
      EXPECT_FALSE(plain_dependency["annotations"].contains("sha256_source")) << name;
      EXPECT_EQ(dependency["annotations"].value("sha256_source", ""), "cache") << run << " " << name;
      EXPECT_EQ(dependency["digest"], plain_dependency["digest"]) << name;
      json stripped = dependency;
      stripped["annotations"].erase("sha256_source");
      EXPECT_EQ(stripped, plain_dependency) << name;  // nothing else differs
      const std::string path = dependency["annotations"]["path"];
      EXPECT_EQ(dependency["digest"]["sha256"], alloy::sha256_file(models() / path)) << name;
    }
  }
}

// A miss (an empty cache; files too fresh to be stored) is marked nowhere: the record is the one
// written without the option.
TEST_F(HashCacheMerge, MissesLeaveTheRecordAsWithoutTheCache) {
  const fs::path plain = merge("", "", "plain");
  const fs::path missed = merge("", "--hash-cache " + quote(cache()), "missed");
  expect_same_outputs(plain, missed);
  EXPECT_EQ(read_bytes(plain / "alloy_provenance.json"), read_bytes(missed / "alloy_provenance.json"));
}

// A shard rewritten between two runs, same size and its mtime restored: its new ctime is a miss, and
// the record cites the new bytes.
TEST_F(HashCacheMerge, FileRewrittenBetweenRunsIsHashedAgain) {
  alloy::test::prime_hash_cache(cache(), {models() / "ft_1", models() / "ft_2"});
  const fs::path shard = models() / "ft_1" / "model.safetensors";
  const auto mtime = fs::last_write_time(shard);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the next clock tick, as a real rewrite
  {
    std::fstream file(shard, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-2, std::ios::end);
    file.write("\x01\x02", 2);  // the last bf16 value of the last tensor
  }
  fs::last_write_time(shard, mtime);
  const auto with = dependencies(merge("", "--hash-cache " + quote(cache()), "after"));
  size_t hits = 0;
  for (const auto& [name, dependency] : with) {
    const bool rewritten = name == "ft_1/model.safetensors";
    EXPECT_EQ(dependency["annotations"].contains("sha256_source"), !rewritten) << name;
    hits += !rewritten;
  }
  EXPECT_GT(hits, 2u);
  EXPECT_EQ(with.at("ft_1/model.safetensors")["digest"]["sha256"], alloy::sha256_file(shard));
}

TEST_F(HashCacheMerge, UnwritableCacheIsANote) {
  alloy::test::write_bytes(work() / "file", "x");
  std::string log;
  const fs::path plain = merge("", "", "plain");
  // Files changed in the last 2 seconds are not stored (HashCache's settle), so nothing would be written.
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  const fs::path noted = merge("", "--hash-cache " + quote(work() / "file" / "cache"), "noted", &log);
  EXPECT_NE(log.find("alloy-merge: note: the hash cache"), std::string::npos) << log;
  EXPECT_EQ(read_bytes(plain / "alloy_provenance.json"), read_bytes(noted / "alloy_provenance.json"));
}

}  // namespace
