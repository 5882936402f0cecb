// alloy/merge/provenance.h: what a merge records about itself, in the formats supply-chain tools read.
//
// alloy_provenance.json is an in-toto Statement v1 (https://in-toto.io/Statement/v1) whose predicate
// is SLSA Provenance v1 (https://slsa.dev/provenance/v1): the output files are the `subject` (name
// and sha256), the recipe and the flags that shape the output are `externalParameters`, the
// resolved per-tensor plan is `internalParameters`, and every input file read (shards, config,
// index, tokenizer files) is a `resolvedDependencies` entry with its sha256, size and, for a model
// inside a Hugging Face cache, the Hub id and revision (also as a pkg:huggingface purl).
// `alloy-merge --sbom` adds alloy_bom.cdx.json, a CycloneDX 1.6 ML-BOM: the merged model is the
// BOM's metadata.component (type machine-learning-model, its files with their SHA-256 as
// sub-components) and the parent models are its pedigree.ancestors. docs/provenance.md
// has both layouts; tests/merge/test_provenance.cpp validates them against the published JSON schemas.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"

namespace alloy {

// The facts both documents are written from.
struct ProvenanceFile {
  std::string name;     // file name inside its model (or output) directory
  std::string path;     // as read (input) or relative to the output directory
  uint64_t size = 0;
  std::string sha256;   // "" when not hashed (--no-provenance-hashes)
  bool sha256_from_cache = false;  // the digest came from --hash-cache, not from reading the file
};
struct ProvenanceInput {
  std::string model;    // the recipe's name for it
  std::string path;     // where it was opened
  std::string hub_id, hub_revision;  // "" when not inside a Hugging Face cache
  std::vector<ProvenanceFile> files;
};
struct ProvenanceRecord {
  std::vector<ProvenanceInput> inputs;
  std::vector<ProvenanceFile> outputs;  // sorted by name; never alloy_provenance.json itself
  std::string started_on, finished_on;  // UTC, RFC 3339
};

inline constexpr const char* kProvenanceFile = "alloy_provenance.json";
inline constexpr const char* kSbomFile = "alloy_bom.cdx.json";

// The in-toto Statement with the SLSA Provenance v1 predicate.
nlohmann::json provenance_statement(const MergePlan& plan, const MergeOptions& options, const ProvenanceRecord& record);
// The CycloneDX 1.6 ML-BOM. `name`: the merged model's name (the recipe's, else OUT's folder name).
nlohmann::json merge_sbom(const MergePlan& plan, const std::string& name, const ProvenanceRecord& record);
// pkg:huggingface/ORG/NAME@REVISION (the purl of a Hub model), or "" when `hub_id` is empty.
std::string huggingface_purl(const std::string& hub_id, const std::string& revision);

}  // namespace alloy
