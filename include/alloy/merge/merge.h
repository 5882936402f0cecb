// alloy/merge/merge.h: running a merge plan and writing an attributed model directory.
//
// The executor streams: for each output tensor it merges fixed chunks of the sources through
// per-thread scratch when the method has a chunked form (alloy/merge/merge_method.h), else loads the
// sources into float32 buffers from a pool that is reused for every tensor (no per-tensor
// allocation) and merges them; it converts to the output dtype and hands the bytes to the sharded
// writer; source pages are released after use, so memory
// stays bounded by a few tensors whatever the model size. The input files' sha256 (for the
// provenance record) are computed on background threads while the merge runs. The output
// directory is built under a temporary name and appears only when complete, with config.json,
// tokenizer files, the recipe (mergekit_config.yml), a model card (README.md) and
// alloy_provenance.json (an in-toto Statement with a SLSA Provenance v1 predicate; with write_sbom
// also alloy_bom.cdx.json, a CycloneDX ML-BOM: alloy/merge/provenance.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "alloy/merge/recipe.h"

namespace alloy {

struct MergeOptions {
  std::filesystem::path out_dir;
  uint64_t shard_bytes = 5'000'000'000;
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool overwrite = false;
  uint64_t random_seed = 0;   // for random methods (dare, della): same seed, same bytes
  bool hash_inputs = true;    // sha256 of every input file in alloy_provenance.json
  bool hash_outputs = true;   // sha256 of every output file in alloy_provenance.json
  // With hash_inputs: a directory of input digests keyed by fstat (alloy/core/hash_cache.h, which
  // says how far to trust it); empty: none. Digests taken from it are marked in the provenance.
  std::filesystem::path hash_cache;
  bool write_sbom = false;    // alloy_bom.cdx.json, a CycloneDX 1.6 ML-BOM (alloy/merge/provenance.h)
  // Values beyond out_dtype's range (e.g. above 65504 for float16) are an error naming the tensor;
  // with clamp_overflow (alloy-merge --allow-crimes) they become +-the largest finite value.
  bool clamp_overflow = false;
  // MoE experts stored one tensor per expert (Mixtral's block_sparse_moe.experts.E.w1/w2/w3,
  // Qwen's mlp.experts.E.{gate,up,down}_proj) are merged as stored (false: every mergekit
  // release up to v0.1.4), or, when true, as mergekit's main branch since its Transformers v5 port
  // merges them: per layer one [E, 2I, H] tensor of every expert's gate rows then up rows, and one
  // [E, H, I] down tensor, so whole-tensor statistics (slerp's angle, ties' top-k, ...) span all
  // experts; the values are written back under the per-expert names (docs/methods.md, "MoE experts").
  bool fuse_moe_experts = false;
  // Called after each tensor with (output bytes written, total output bytes); may be empty
  // (tools draw alloy/core/progress.h's bar with it).
  std::function<void(uint64_t, uint64_t)> progress;
};

struct MergeResult {
  std::vector<std::string> files;   // written files, relative to out_dir
  uint64_t output_bytes = 0;
  size_t tensors = 0;
  std::vector<std::string> notices;  // e.g. a hash cache that could not be written; for the tools to print
};

// Runs the plan. Throws Error naming the tensor on any failure; nothing is left at out_dir then.
MergeResult run_merge(const MergePlan& plan, const MergeOptions& options);

// The seed of one tensor's random masks: a function of --random-seed and the tensor name only.
uint64_t tensor_seed(uint64_t random_seed, const std::string& tensor_name);

// The method context of a planned tensor (name, dtypes, shape, base, parameters, seed), without
// sources: the caller adds them once their values are loaded.
MergeContext planned_context(const PlannedTensor& tensor, uint64_t random_seed);

}  // namespace alloy
