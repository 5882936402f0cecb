// Citable evidence and automation (issue 16): the audit record of assay.json (tool version, time,
// command line, every file examined with its size and sha256, Hub id and revision inside a Hugging
// Face cache) and alloy-assay --fail-on's exit status for each verdict.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "alloy/core/error.h"
#include "alloy/core/evidence.h"
#include "alloy/core/sha256.h"
#include "hash_cache_utils.h"
#include "test_assay_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;
using nlohmann::json;

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

std::string assay_command(const fs::path& suspect, const std::vector<std::string>& candidates, const std::string& flags) {
  std::string command = quote(alloy::test::bin("alloy-assay")) + " " + quote(suspect);
  for (const auto& c : candidates) command += " " + quote(c);
  return command + " " + flags + " 2>&1";
}

// A model folder laid out as in a Hugging Face cache: .../models--ORG--NAME/snapshots/REV/. (The Hub
// client makes the files links into blobs/, which Model::open refuses as leaving the folder, so the
// files are copied.)
fs::path hub_copy(const fs::path& model, const fs::path& cache, const std::string& folder, const std::string& revision) {
  const fs::path snapshot = cache / folder / "snapshots" / revision;
  fs::create_directories(snapshot.parent_path());
  fs::copy(model, snapshot, fs::copy_options::recursive);
  return snapshot;
}

TEST(AssayAudit, HubReferenceFromCachePaths) {
  const auto ref = alloy::hub_reference("/home/u/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B/snapshots/"
                                        "0e9e39f249a16976918f6564b8830bc894c89659");
  EXPECT_EQ(ref.id, "meta-llama/Llama-3.1-8B");
  EXPECT_EQ(ref.revision, "0e9e39f249a16976918f6564b8830bc894c89659");
  EXPECT_EQ(alloy::hub_reference("hub/models--gpt2/snapshots/abc/model.safetensors").id, "gpt2");  // unscoped
  EXPECT_EQ(alloy::hub_reference("hub/models--gpt2/snapshots/abc/model.safetensors").revision, "abc");
  EXPECT_TRUE(alloy::hub_reference("/data/models--x--y/refs/main").id.empty());
  EXPECT_TRUE(alloy::hub_reference("/data/models/llama").id.empty());
}

TEST(AssayAudit, RecordsVersionTimeCommandLineAndEveryFileExamined) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 21, 0.05);
  const fs::path work = f.temp.path();
  alloy::test::merge_linear_blend(f, "0.4", "0.6", work / "suspect");
  // One candidate from a Hub cache: its id and revision are recorded.
  const fs::path cached = hub_copy(f.dir / "ft_2", work / "hub", "models--acme--ft-two", "5d2c0ffee");
  const std::vector<std::string> candidates = {(f.dir / "base").string(), (f.dir / "ft_1").string(), cached.string()};
  int status = -1;
  std::string out = run_command(assay_command(work / "suspect", candidates, "-q -j 1 --json " + quote(work / "a.json")), &status);
  ASSERT_EQ(status, 0) << out;
  const json audit = json::parse(alloy::test::read_bytes(work / "a.json"))["audit"];
  EXPECT_EQ(audit["alloy_version"], ALLOY_VERSION);
  EXPECT_TRUE(std::regex_match(audit["time"].get<std::string>(), std::regex("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ")))
      << audit["time"];
  const std::vector<std::string> expected_line = {"alloy-assay", (work / "suspect").string(), candidates[0], candidates[1],
                                                  candidates[2], "-q", "-j", "1", "--json", (work / "a.json").string()};
  EXPECT_EQ(audit["command_line"].get<std::vector<std::string>>(), expected_line);
  ASSERT_EQ(audit["models"].size(), 4u);
  EXPECT_EQ(audit["models"][0]["role"], "suspect");
  EXPECT_EQ(audit["models"][0]["path"], (work / "suspect").string());
  EXPECT_TRUE(audit["models"][0]["hub"].is_null());
  EXPECT_EQ(audit["models"][3]["role"], "candidate");
  EXPECT_EQ(audit["models"][3]["hub"]["id"], "acme/ft-two");
  EXPECT_EQ(audit["models"][3]["hub"]["revision"], "5d2c0ffee");
  for (const auto& m : audit["models"]) {
    std::set<std::string> names;
    for (const auto& file : m["files"]) {
      const fs::path path = file["path"].get<std::string>();
      names.insert(path.filename().string());
      EXPECT_EQ(file["sha256"], alloy::sha256_file(path)) << path;
      EXPECT_EQ(file["size"], fs::file_size(path)) << path;
    }
    EXPECT_TRUE(names.count("model.safetensors") && names.count("config.json")) << m.dump();
  }

  // Without hashes: sizes only. SOURCE_DATE_EPOCH fixes the time (reproducible reruns).
  out = run_command("SOURCE_DATE_EPOCH=86400 " +
                        assay_command(work / "suspect", candidates, "-q --no-file-hashes --json " + quote(work / "b.json")),
                    &status);
  ASSERT_EQ(status, 0) << out;
  const json unhashed = json::parse(alloy::test::read_bytes(work / "b.json"))["audit"];
  EXPECT_EQ(unhashed["time"], "1970-01-02T00:00:00Z");
  EXPECT_TRUE(unhashed["models"][0]["files"][0]["sha256"].is_null());
  EXPECT_EQ(unhashed["models"][0]["files"][0]["size"], audit["models"][0]["files"][0]["size"]);
  // The summary names the audit.
  out = run_command(assay_command(work / "suspect", candidates, "-j 1"), &status);
  EXPECT_NE(out.find("audit: alloy " ALLOY_VERSION), std::string::npos) << out;
}

// --hash-cache: the candidates' digests come from the cache and are marked; the suspect (not in the
// cache) is hashed and unmarked; every digest is the file's.
TEST(AssayAudit, CachedDigestsAreMarked) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 23, 0.05);
  const fs::path work = f.temp.path();
  alloy::test::merge_linear_blend(f, "0.4", "0.6", work / "suspect");
  alloy::test::prime_hash_cache(work / "cache", {f.dir / "ft_1", f.dir / "ft_2"});
  const std::vector<std::string> candidates = {(f.dir / "ft_1").string(), (f.dir / "ft_2").string()};
  int status = -1;
  const std::string out = run_command("ALLOY_HASH_CACHE=" + quote(work / "cache") + " " +
                                          assay_command(work / "suspect", candidates, "-q -j 1 --json " + quote(work / "a.json")),
                                      &status);
  ASSERT_EQ(status, 0) << out;
  const json audit = json::parse(alloy::test::read_bytes(work / "a.json"))["audit"];
  ASSERT_EQ(audit["models"].size(), 3u);
  for (size_t m = 0; m < 3; ++m) {
    for (const auto& file : audit["models"][m]["files"]) {
      EXPECT_EQ(file["sha256"], alloy::sha256_file(file["path"].get<std::string>())) << file;
      EXPECT_EQ(file.contains("sha256_source"), m > 0) << file;
      if (m > 0) {
        EXPECT_EQ(file["sha256_source"], "cache");
      }
    }
  }
}

TEST(AssayFailOn, MatchesEachVerdict) {
  alloy::AssayResult r;
  const auto matches = [&](const std::string& verdict, const std::string& condition, bool lowered = false) {
    r.verdict = verdict;
    r.evidence = lowered ? json{{"confidence", "partial"}} : json::object();
    return alloy::verdict_matches(r, condition);
  };
  EXPECT_TRUE(matches("merge", "merge"));
  EXPECT_TRUE(matches("merge", "related"));
  EXPECT_TRUE(matches("merge", "any"));
  for (const char* related : {"fine-tune", "copy"}) {
    EXPECT_FALSE(matches(related, "merge"));
    EXPECT_TRUE(matches(related, "related"));
    EXPECT_TRUE(matches(related, "any"));
  }
  EXPECT_FALSE(matches("independent", "merge"));
  EXPECT_FALSE(matches("independent", "related"));
  EXPECT_FALSE(matches("independent", "any"));
  EXPECT_TRUE(matches("independent", "any", true)) << "an independent verdict that could not check everything";
  EXPECT_FALSE(matches("independent", "related", true));
  EXPECT_THROW(matches("merge", "merged"), alloy::Error);
}

// The exit status end to end: 1 when the verdict matches --fail-on, 0 when not, for a merge, a
// fine-tune, a copy and an independent model; 2 on an error, whatever --fail-on says.
TEST(AssayFailOn, ExitStatusForEachVerdict) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 22, 0.05);
  const fs::path work = f.temp.path();
  alloy::test::merge_linear_blend(f, "0.3", "0.7", work / "merged");
  const std::string base = (f.dir / "base").string(), ft1 = (f.dir / "ft_1").string(), ft2 = (f.dir / "ft_2").string(),
                    unrelated = (f.dir / "unrelated_1").string();
  struct Case {
    fs::path suspect;
    std::vector<std::string> candidates;
    std::string verdict;
    int merge, related, any;  // expected exit status per --fail-on
  };
  const Case cases[] = {
      {work / "merged", {base, ft1, ft2, unrelated}, "merge", 1, 1, 1},
      {f.dir / "ft_3", {base, unrelated}, "fine-tune", 0, 1, 1},
      {f.dir / "ft_1", {ft1, unrelated}, "copy", 0, 1, 1},
      {f.dir / "unrelated_1", {base, ft1, ft2}, "independent", 0, 0, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.verdict);
    int status = -1;
    std::string out = run_command(assay_command(c.suspect, c.candidates, "-j 1 --json " + quote(work / "v.json")), &status);
    ASSERT_EQ(status, 0) << "no --fail-on: 0 whatever the verdict\n" << out;
    ASSERT_EQ(json::parse(alloy::test::read_bytes(work / "v.json"))["verdict"], c.verdict) << out;
    const std::pair<const char*, int> expected[] = {{"merge", c.merge}, {"related", c.related}, {"any", c.any}};
    for (const auto& [condition, code] : expected) {
      out = run_command(assay_command(c.suspect, c.candidates, std::string("-q --fail-on ") + condition), &status);
      EXPECT_EQ(status, code) << condition << "\n" << out;
      if (code == 1) {
        EXPECT_NE(out.find("matches --fail-on"), std::string::npos) << out;
      }
    }
  }
  int status = -1;
  std::string out = run_command(assay_command(work / "missing", {base}, "--fail-on any"), &status);
  EXPECT_EQ(status, 2) << out;
  out = run_command(assay_command(work / "merged", {base}, "--fail-on merged"), &status);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(status, 1) << "a usage error is not a verdict\n" << out;
}

}  // namespace
