// The alloy-assay executable end to end: the summary, --json (the documented keys), --recipe (YAML
// that alloy-merge runs to rebuild the suspect), --report (self-contained HTML), determinism
// across thread counts, and clear failures on bad input.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "test_assay_utils.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;
using nlohmann::json;

std::string shell_quote(const fs::path& p) { return "'" + p.string() + "'"; }

// The JSON without its audit record (which holds the command line and the time of each run).
json without_audit(const std::string& text) {
  json doc = json::parse(text);
  doc.erase("audit");
  return doc;
}

TEST(AssayTool, OutputsRoundTripThroughAlloyMerge) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kMoe, 5, 0.05);
  const fs::path work = f.temp.path();
  alloy::test::merge_linear_blend(f, "0.3", "0.7", work / "suspect");
  std::string args;
  for (const auto& c : f.candidates()) args += " " + shell_quote(c);
  int status = -1;
  const std::string assay = "'" + alloy::test::bin("alloy-assay") + "' " + shell_quote(work / "suspect") + args;
  const std::string out = run_command(assay + " -j 1 --json " + shell_quote(work / "a.json") + " --recipe " +
                                          shell_quote(work / "r.yml") + " --report " + shell_quote(work / "r.html") + " 2>&1",
                                      &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("verdict: merge (linear)"), std::string::npos) << out;
  EXPECT_NE(out.find("recovered recipe:"), std::string::npos) << out;

  const json doc = json::parse(alloy::test::read_bytes(work / "a.json"));
  for (const char* key : {"verdict", "method", "base", "recipe", "components", "tensors", "permutations", "evidence"}) {
    EXPECT_TRUE(doc.contains(key)) << key;
  }
  EXPECT_EQ(doc["verdict"], "merge");
  EXPECT_TRUE(doc["base"].is_null());
  EXPECT_TRUE(doc["permutations"].is_array());
  ASSERT_EQ(doc["recipe"]["models"].size(), 2u);
  EXPECT_EQ(doc["recipe"]["models"][0]["model"], (f.dir / "ft_1").string());  // exactly as given
  EXPECT_NEAR(doc["recipe"]["models"][0]["parameters"]["weight"].get<double>(), 0.3, 0.005);

  // The recipe file rebuilds the suspect through the real alloy-merge executable.
  const std::string merged = run_command("'" + alloy::test::bin("alloy-merge") + "' -q " + shell_quote(work / "r.yml") +
                                             " " + shell_quote(work / "rebuilt") + " 2>&1",
                                         &status);
  ASSERT_EQ(status, 0) << merged;
  EXPECT_LE(alloy::test::max_ulp_difference(work / "suspect", work / "rebuilt"), 1u);

  const std::string html = alloy::test::read_bytes(work / "r.html");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);

  // The same JSON on two threads.
  ASSERT_EQ((run_command(assay + " -q -j 2 --json " + shell_quote(work / "b.json") + " 2>&1", &status), status), 0);
  EXPECT_EQ(without_audit(alloy::test::read_bytes(work / "a.json")), without_audit(alloy::test::read_bytes(work / "b.json")));

  // Special files are written in place, never replaced by a regular file; "-" is standard output,
  // alone on it. A bad output path fails before anything is written.
  std::string text = run_command(assay + " -j 1 --json - 2>/dev/null", &status);
  ASSERT_EQ(status, 0) << text;
  EXPECT_EQ(without_audit(text), without_audit(alloy::test::read_bytes(work / "a.json")))
      << "stdout holds the JSON and nothing else";
  ASSERT_EQ((run_command(assay + " -j 1 --json /dev/null --report /dev/null 2>&1", &status), status), 0);
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
  const fs::path fifo = work / "out.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  text = run_command("(cat " + shell_quote(fifo) + " > " + shell_quote(work / "from_fifo.json") + " &) ; " + assay +
                         " -q -j 1 --json " + shell_quote(fifo) + " 2>&1; sleep 0.2",
                     &status);
  EXPECT_EQ(status, 0) << text;
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_EQ(without_audit(alloy::test::read_bytes(work / "from_fifo.json")),
            without_audit(alloy::test::read_bytes(work / "a.json")));
  text = run_command(assay + " -q --json " + shell_quote(work / "c.json") + " --report " + shell_quote(work) + " 2>&1",
                     &status);
  EXPECT_EQ(status, 2) << text;
  EXPECT_NE(text.find("is a directory"), std::string::npos) << text;
  EXPECT_FALSE(fs::exists(work / "c.json")) << "nothing is written when an output path is bad";
}

TEST(AssayTool, BadInputFailsClearly) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 6, 0.05);
  const std::string assay = "'" + alloy::test::bin("alloy-assay") + "' ";
  const std::string base = shell_quote(f.dir / "base");
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"/nonexistent/suspect " + base, "/nonexistent/suspect"},
      {base + " /nonexistent/candidate", "/nonexistent/candidate"},
      {base, "CANDIDATE"},
      {[&] {
         std::string many = base;  // the suspect and 65 candidates
         for (int i = 0; i < 65; ++i) many += " " + base;
         return many;
       }(),
       "at most 64 candidates, got 65"},
      {base + " " + base + " --json /nonexistent/dir/out.json", "/nonexistent/dir"},
  };
  for (const auto& c : cases) {
    int status = -1;
    const std::string out = run_command(assay + c.args + " 2>&1", &status);
    EXPECT_NE(status, 0) << c.args;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
  }
}

TEST(AssayTool, MismatchedArchitecturesAreReportedNotFitted) {
  alloy::test::AssayFamily a(alloy::ModelFamily::kLlama, 7, 0.05);
  alloy::test::AssayFamily b(alloy::ModelFamily::kMoe, 8, 0.05);  // another seed: names shared with the dense model would otherwise share values
  const auto r = alloy::test::assay(a.dir / "ft_1", {(b.dir / "base").string()});
  EXPECT_EQ(r.verdict, "independent");
  size_t skipped = 0;
  for (const auto& t : r.tensors) skipped += !t.fitted && !t.skipped.empty();
  EXPECT_GT(skipped, 0u);
}

}  // namespace
