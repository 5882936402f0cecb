// The merge's provenance documents (alloy/merge/provenance.h): an in-toto Statement v1 with a SLSA
// Provenance v1 predicate, and a CycloneDX 1.6 ML-BOM.
#include "alloy/merge/provenance.h"

#include <cstdio>

#include "alloy/core/sha256.h"

namespace alloy {
namespace {

using nlohmann::json;

// The build type and builder of this predicate: URNs, since alloy publishes under no domain of its
// own; docs/provenance.md documents what they stand for.
constexpr const char* kBuildType = "urn:alloy:buildtype:merge:v1";
constexpr const char* kBuilderId = "urn:alloy:builder:alloy-merge";

json descriptor_digest(const ProvenanceFile& f) { return {{"sha256", f.sha256}}; }

// A version 5 style UUID (RFC 4122 layout: version nibble 5, variant 10) from the SHA-256 of `seed`,
// so the same merge gets the same BOM serial number.
std::string uuid_from(const std::string& seed) {
  std::string hex = sha256_hex(seed.data(), seed.size()).substr(0, 32);
  hex[12] = '5';
  hex[16] = "89ab"[std::stoi(hex.substr(16, 1), nullptr, 16) & 3];
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" + hex.substr(16, 4) + "-" +
         hex.substr(20, 12);
}

json file_components(const std::vector<ProvenanceFile>& files, const std::string& ref_prefix) {
  json components = json::array();
  for (const auto& f : files) {
    json c = {{"type", "file"}, {"bom-ref", ref_prefix + f.name}, {"name", f.name}};
    if (!f.sha256.empty()) c["hashes"] = json::array({{{"alg", "SHA-256"}, {"content", f.sha256}}});
    components.push_back(c);
  }
  return components;
}

}  // namespace

std::string huggingface_purl(const std::string& hub_id, const std::string& revision) {
  if (hub_id.empty()) return "";
  return "pkg:huggingface/" + hub_id + (revision.empty() ? "" : "@" + revision);
}

json provenance_statement(const MergePlan& plan, const MergeOptions& options, const ProvenanceRecord& record) {
  json subject = json::array();
  for (const auto& f : record.outputs) {
    if (!f.sha256.empty()) subject.push_back({{"name", f.name}, {"digest", descriptor_digest(f)}});
  }
  json dependencies = json::array();
  for (const auto& input : record.inputs) {
    for (const auto& f : input.files) {
      json d = {{"name", input.model + "/" + f.name}};
      const std::string purl = huggingface_purl(input.hub_id, input.hub_revision);
      // A descriptor needs a uri, a digest or a content: the Hub's purl, else the file as read.
      if (!purl.empty()) d["uri"] = purl;
      else if (f.sha256.empty()) d["uri"] = "file:" + f.path;
      if (!f.sha256.empty()) d["digest"] = descriptor_digest(f);
      json annotations = {{"model", input.model}, {"model_path", input.path}, {"path", f.path}, {"size", f.size}};
      if (!input.hub_id.empty()) annotations["hub"] = {{"id", input.hub_id}, {"revision", input.hub_revision}};
      if (f.sha256.empty()) annotations["hashed"] = false;
      if (f.sha256_from_cache) annotations["sha256_source"] = "cache";
      d["annotations"] = annotations;
      dependencies.push_back(d);
    }
  }
  const std::string& recipe = plan.recipe.text;
  json external = {
      {"recipe", {{"text", recipe}, {"sha256", sha256_hex(recipe.data(), recipe.size())},
                  {"merge_method", plan.recipe.merge_method}}},
      {"random_seed", options.random_seed},
      {"out_shard_size", options.shard_bytes},
      {"copy_tokenizer", options.copy_tokenizer},
      {"write_model_card", options.write_model_card},
      {"clamp_overflow", options.clamp_overflow},
      {"sbom", options.write_sbom},
  };
  const json dry = plan_to_json(plan);
  json internal = {{"plan", dry["tensors"]}};
  if (!plan.warnings.empty()) internal["warnings"] = plan.warnings;
  if (!plan.notices.empty()) internal["notices"] = plan.notices;
  if (dry.contains("tokenizer")) internal["tokenizer"] = dry["tokenizer"];
  json byproducts = json::array();
  for (const auto& f : record.outputs) {
    if (f.sha256.empty()) byproducts.push_back({{"name", f.name}, {"uri", "file:" + f.name}, {"annotations", {{"hashed", false}}}});
  }
  json run_details = {{"builder", {{"id", kBuilderId}, {"version", {{"alloy", ALLOY_VERSION}}}}},
                      {"metadata", {{"startedOn", record.started_on}, {"finishedOn", record.finished_on}}}};
  if (!byproducts.empty()) run_details["byproducts"] = byproducts;
  return {
      {"_type", "https://in-toto.io/Statement/v1"},
      {"subject", subject},
      {"predicateType", "https://slsa.dev/provenance/v1"},
      {"predicate",
       {{"buildDefinition", {{"buildType", kBuildType}, {"externalParameters", external},
                             {"internalParameters", internal}, {"resolvedDependencies", dependencies}}},
        {"runDetails", run_details}}},
  };
}

json merge_sbom(const MergePlan& plan, const std::string& name, const ProvenanceRecord& record) {
  std::string seed = plan.recipe.text;
  for (const auto& f : record.outputs) seed += "\n" + f.name + " " + f.sha256;
  json ancestors = json::array();
  for (size_t m = 0; m < record.inputs.size(); ++m) {
    const ProvenanceInput& input = record.inputs[m];
    const std::string ref = "ancestor-" + std::to_string(m + 1);
    json a = {{"type", "machine-learning-model"}, {"bom-ref", ref}, {"name", input.model}};
    const std::string purl = huggingface_purl(input.hub_id, input.hub_revision);
    if (!purl.empty()) a["purl"] = purl;
    if (!input.hub_revision.empty()) a["version"] = input.hub_revision;
    a["components"] = file_components(input.files, ref + "/");
    json properties = json::array({{{"name", "alloy:path"}, {"value", input.path}}});
    if (plan.base_model >= 0 && size_t(plan.base_model) == m) properties.push_back({{"name", "alloy:role"}, {"value", "base_model"}});
    a["properties"] = properties;
    ancestors.push_back(a);
    for (const auto& f : input.files) seed += "\n" + input.model + "/" + f.name + " " + f.sha256;
  }
  const std::string& recipe = plan.recipe.text;
  json model = {
      {"type", "machine-learning-model"},
      {"bom-ref", "merged-model"},
      {"name", name},
      {"description", "a merge of " + std::to_string(record.inputs.size()) + " models with " +
                          plan.recipe.merge_method + ", made with alloy " ALLOY_VERSION},
      {"components", file_components(record.outputs, "merged-model/")},
      {"pedigree", {{"ancestors", ancestors}}},
      {"properties", json::array({{{"name", "alloy:merge_method"}, {"value", plan.recipe.merge_method}},
                                  {{"name", "alloy:recipe_sha256"}, {"value", sha256_hex(recipe.data(), recipe.size())}},
                                  {{"name", "alloy:provenance"}, {"value", kProvenanceFile}}})},
  };
  return {
      {"bomFormat", "CycloneDX"},
      {"specVersion", "1.6"},
      {"serialNumber", "urn:uuid:" + uuid_from(seed)},
      {"version", 1},
      {"metadata",
       {{"timestamp", record.finished_on},
        {"tools", {{"components", json::array({{{"type", "application"}, {"name", "alloy"}, {"version", ALLOY_VERSION}}})}}},
        {"component", model}}},
  };
}

}  // namespace alloy
