// alloy_provenance.json (an in-toto Statement v1 with a SLSA Provenance v1 predicate) and
// alloy-merge --sbom's alloy_bom.cdx.json (a CycloneDX 1.6 ML-BOM), validated against the
// published JSON schemas shipped in tests/data/schemas (README.md there says where each comes
// from), and checked against the files they describe.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "alloy/core/sha256.h"
#include "assay/test_assay_utils.h"
#include "schema/json_schema.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;
using nlohmann::json;

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

const alloy::test::SchemaSet& schemas() {
  static const alloy::test::SchemaSet set(alloy::test::data_dir() + "/schemas");
  return set;
}

std::string joined(const std::vector<std::string>& errors) {
  std::string text;
  for (const auto& e : errors) text += e + "\n";
  return text;
}

// ENV alloy-merge -q --sbom FLAGS RECIPE OUT in the family's folder (the recipes name ft_1 and base
// relative to it).
std::string merge(const fs::path& family, const std::string& env, const std::string& flags, const fs::path& recipe,
                  const fs::path& out, int* status) {
  return run_command("cd " + quote(family) + " && " + env + " " + quote(alloy::test::bin("alloy-merge")) +
                         " -q --sbom " + flags + " " + quote(recipe) + " " + quote(out) + " 2>&1",
                     status);
}

constexpr const char* kSlsa = "slsa-provenance-v1.schema.json";
constexpr const char* kCycloneDx = "bom-1.6.SNAPSHOT.schema.json";

TEST(Provenance, StatementAndBomValidateAndDescribeTheFiles) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 41, 0.05);
  const fs::path work = f.temp.path();
  // ft_2 comes from a Hugging Face cache folder: its Hub id and revision are recorded.
  const fs::path cached = work / "hub" / "models--acme--ft-two" / "snapshots" / "9f1e2d";
  fs::create_directories(cached.parent_path());
  fs::copy(f.dir / "ft_2", cached, fs::copy_options::recursive);
  const std::string recipe = "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n"
                             "    parameters: {weight: 0.6, density: 0.5}\n  - model: " + cached.string() +
                             "\n    parameters: {weight: 0.4, density: 0.5}\ndtype: bfloat16\n";
  alloy::test::write_bytes(work / "r.yml", recipe);
  int status = -1;
  const std::string out = merge(f.dir, "SOURCE_DATE_EPOCH=1700000000", "", work / "r.yml", work / "merged", &status);
  ASSERT_EQ(status, 0) << out;
  const json statement = json::parse(alloy::test::read_bytes(work / "merged" / "alloy_provenance.json"));
  const json bom = json::parse(alloy::test::read_bytes(work / "merged" / "alloy_bom.cdx.json"));
  EXPECT_EQ(joined(schemas().validate(statement, kSlsa)), "");
  EXPECT_EQ(joined(schemas().validate(bom, kCycloneDx)), "");

  // subject: every output file but the statement itself, the BOM included, with its sha256.
  std::set<std::string> names;
  for (const auto& s : statement["subject"]) {
    names.insert(s["name"].get<std::string>());
    EXPECT_EQ(s["digest"]["sha256"], alloy::sha256_file(work / "merged" / s["name"].get<std::string>())) << s;
  }
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(work / "merged")) files.insert(e.path().filename().string());
  files.erase("alloy_provenance.json");
  EXPECT_EQ(names, files);
  const json& build = statement["predicate"]["buildDefinition"];
  EXPECT_EQ(build["externalParameters"]["recipe"]["text"], recipe);
  EXPECT_EQ(build["externalParameters"]["recipe"]["sha256"], alloy::sha256_hex(recipe.data(), recipe.size()));
  EXPECT_EQ(statement["predicate"]["runDetails"]["metadata"]["startedOn"], "2023-11-14T22:13:20Z");
  EXPECT_EQ(statement["predicate"]["runDetails"]["builder"]["version"]["alloy"], ALLOY_VERSION);
  // resolvedDependencies: every file of every input with its digest; the cached model's Hub purl.
  std::map<std::string, json> dependencies;
  for (const auto& d : build["resolvedDependencies"]) dependencies[d["name"].get<std::string>()] = d;
  ASSERT_TRUE(dependencies.count("ft_1/model.safetensors"));
  EXPECT_EQ(dependencies["ft_1/model.safetensors"]["digest"]["sha256"], alloy::sha256_file(f.dir / "ft_1" / "model.safetensors"));
  EXPECT_EQ(dependencies["ft_1/model.safetensors"]["annotations"]["size"], fs::file_size(f.dir / "ft_1" / "model.safetensors"));
  const json& hub = dependencies[cached.string() + "/model.safetensors"];
  EXPECT_EQ(hub["uri"], "pkg:huggingface/acme/ft-two@9f1e2d");
  EXPECT_EQ(hub["annotations"]["hub"]["id"], "acme/ft-two");
  EXPECT_TRUE(dependencies.count("base/config.json"));

  // The BOM: the merged model with its files, the three parents under pedigree.ancestors.
  const json& model = bom["metadata"]["component"];
  EXPECT_EQ(model["type"], "machine-learning-model");
  std::map<std::string, std::string> model_files;
  for (const auto& c : model["components"]) model_files[c["name"]] = c["hashes"][0]["content"];
  EXPECT_EQ(model_files["model.safetensors"], alloy::sha256_file(work / "merged" / "model.safetensors"));
  const json& ancestors = model["pedigree"]["ancestors"];
  ASSERT_EQ(ancestors.size(), 3u);
  EXPECT_EQ(ancestors[0]["name"], "base");
  EXPECT_EQ(ancestors[1]["name"], "ft_1");
  EXPECT_EQ(ancestors[2]["purl"], "pkg:huggingface/acme/ft-two@9f1e2d");
  for (const auto& c : ancestors[1]["components"]) {
    EXPECT_EQ(c["hashes"][0]["content"], alloy::sha256_file(f.dir / "ft_1" / c["name"].get<std::string>())) << c;
  }
  // Deterministic: the same merge at the same SOURCE_DATE_EPOCH gives the same bytes.
  fs::create_directories(work / "again");
  ASSERT_EQ((merge(f.dir, "SOURCE_DATE_EPOCH=1700000000", "", work / "r.yml", work / "again" / "merged", &status), status), 0);
  EXPECT_EQ(alloy::test::read_bytes(work / "again" / "merged" / "alloy_bom.cdx.json"), alloy::test::read_bytes(work / "merged" / "alloy_bom.cdx.json"));
  EXPECT_EQ(alloy::test::read_bytes(work / "again" / "merged" / "alloy_provenance.json"),
            alloy::test::read_bytes(work / "merged" / "alloy_provenance.json"));

  // Broken copies fail the same schemas: the validation is not vacuous.
  const std::pair<const char*, std::function<void(json&)>> broken_statements[] = {
      {"wrong _type", [](json& s) { s["_type"] = "https://in-toto.io/Statement/v0.1"; }},
      {"subject without digest", [](json& s) { s["subject"][0].erase("digest"); }},
      {"short sha256", [](json& s) { s["subject"][0]["digest"]["sha256"] = "abc"; }},
      {"other predicate type", [](json& s) { s["predicateType"] = "https://slsa.dev/provenance/v0.2"; }},
      {"no builder id", [](json& s) { s["predicate"]["runDetails"]["builder"].erase("id"); }},
      {"no externalParameters", [](json& s) { s["predicate"]["buildDefinition"].erase("externalParameters"); }},
      {"local time", [](json& s) { s["predicate"]["runDetails"]["metadata"]["startedOn"] = "2023-11-14 22:13:20"; }},
      {"dependency with nothing", [](json& s) {
         json& d = s["predicate"]["buildDefinition"]["resolvedDependencies"][0];
         d.erase("digest");
         d.erase("uri");
       }},
  };
  for (const auto& [what, breaking] : broken_statements) {
    json copy = statement;
    breaking(copy);
    EXPECT_FALSE(schemas().validate(copy, kSlsa).empty()) << what;
  }
  const std::pair<const char*, std::function<void(json&)>> broken_boms[] = {
      {"spec version as a number", [](json& b) { b["specVersion"] = 1.6; }},
      {"unknown component type", [](json& b) { b["metadata"]["component"]["type"] = "model"; }},
      {"ancestor without name", [](json& b) { b["metadata"]["component"]["pedigree"]["ancestors"][0].erase("name"); }},
      {"bad hash", [](json& b) { b["metadata"]["component"]["components"][0]["hashes"][0]["content"] = "xyz"; }},
      {"hash algorithm", [](json& b) { b["metadata"]["component"]["components"][0]["hashes"][0]["alg"] = "SHA256"; }},
      {"serial number", [](json& b) { b["serialNumber"] = "uuid:1234"; }},
      {"unknown top-level member", [](json& b) { b["lineage"] = json::array(); }},
      {"not a CycloneDX BOM", [](json& b) { b["bomFormat"] = "SPDX"; }},
  };
  for (const auto& [what, breaking] : broken_boms) {
    json copy = bom;
    breaking(copy);
    EXPECT_FALSE(schemas().validate(copy, kCycloneDx).empty()) << what;
  }
}

// The weight files are hashed as they are written (never read back): in sharded outputs too, every
// subject's digest is what sha256sum computes from the published file.
TEST(Provenance, ShardedOutputsHashedAsWrittenMatchTheFiles) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 43, 0.05);
  const fs::path work = f.temp.path();
  for (const std::string method : {"linear", "slerp"}) {
    const std::string recipe = method == "slerp"
        ? "merge_method: slerp\nbase_model: ft_1\nmodels:\n  - model: ft_1\n  - model: ft_2\nparameters: {t: 0.3}\ndtype: bfloat16\n"
        : "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.5}\n"
          "  - model: ft_2\n    parameters: {weight: 0.5}\ndtype: float16\n";
    alloy::test::write_bytes(work / (method + ".yml"), recipe);
    int status = -1;
    const fs::path merged = work / ("merged-" + method);
    const std::string out = merge(f.dir, "", "--out-shard-size 20K", work / (method + ".yml"), merged, &status);
    ASSERT_EQ(status, 0) << out;
    const json statement = json::parse(alloy::test::read_bytes(merged / "alloy_provenance.json"));
    size_t shards = 0;
    std::set<std::string> names, files;
    for (const auto& s : statement["subject"]) {
      const std::string name = s["name"].get<std::string>();
      names.insert(name);
      shards += name.find("-of-") != std::string::npos;
      EXPECT_EQ(s["digest"]["sha256"], alloy::sha256_file(merged / name)) << method << " " << name;
      int sum_status = -1;
      const std::string sum = run_command("sha256sum " + quote(merged / name) + " 2>/dev/null", &sum_status);
      if (sum_status == 0) {
        EXPECT_EQ(sum.substr(0, 64), s["digest"]["sha256"].get<std::string>()) << name;
      }
    }
    EXPECT_GT(shards, 2u) << method;
    for (const auto& e : fs::directory_iterator(merged)) files.insert(e.path().filename().string());
    files.erase("alloy_provenance.json");
    EXPECT_EQ(names, files) << method;
    EXPECT_TRUE(names.count("model.safetensors.index.json")) << method;
  }
}

// --no-provenance-hashes: no digest anywhere, and both documents are still valid (the outputs are
// byproducts and the inputs dependencies with a uri, since a subject needs a digest).
TEST(Provenance, WithoutHashesTheDocumentsStayValid) {
  alloy::test::AssayFamily f(alloy::ModelFamily::kLlama, 42, 0.05);
  const fs::path work = f.temp.path();
  alloy::test::write_bytes(work / "r.yml", "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.5}\n"
                                           "  - model: ft_2\n    parameters: {weight: 0.5}\ndtype: bfloat16\n");
  int status = -1;
  const std::string out = merge(f.dir, "", "--no-provenance-hashes", work / "r.yml", work / "merged", &status);
  ASSERT_EQ(status, 0) << out;
  const json statement = json::parse(alloy::test::read_bytes(work / "merged" / "alloy_provenance.json"));
  const json bom = json::parse(alloy::test::read_bytes(work / "merged" / "alloy_bom.cdx.json"));
  EXPECT_EQ(joined(schemas().validate(statement, kSlsa)), "");
  EXPECT_EQ(joined(schemas().validate(bom, kCycloneDx)), "");
  EXPECT_TRUE(statement["subject"].empty());
  for (const auto& d : statement["predicate"]["buildDefinition"]["resolvedDependencies"]) {
    EXPECT_FALSE(d.contains("digest")) << d;
    EXPECT_EQ(d["uri"].get<std::string>().rfind("file:", 0), 0u) << d;
  }
  EXPECT_EQ(bom.dump().find("\"hashes\""), std::string::npos);
}

}  // namespace
