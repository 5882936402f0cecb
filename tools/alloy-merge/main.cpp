// alloy-merge CONFIG.yml OUT_DIR: run a mergekit-style recipe (command line mirrors mergekit-yaml).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>

#include "alloy/core/file_util.h"
#include "alloy/core/error.h"
#include "alloy/merge/merge.h"
#include "alloy/core/parallel.h"
#include "alloy/core/progress.h"
#include "alloy/core/writer.h"
#include "../common/cli.h"

namespace {

// mergekit-yaml flags that have no meaning for alloy; accepted so existing command lines work.
const char* kIgnoredFlags[] = {"--cuda", "--no-cuda", "--low-cpu-memory",
                               "--no-low-cpu-memory", "--safe-serialization", "--no-safe-serialization",
                               "--trust-remote-code", "--no-trust-remote-code", "--clone-tensors",
                               "--no-clone-tensors", "--read-to-gpu", "--no-read-to-gpu", "--multi-gpu",
                               "--no-multi-gpu", "--async-write", "--no-async-write", "--verbose", "-v",
                               "--gpu-rich"};
// mergekit-yaml options that take a value and have no meaning for alloy (mergekit/options.py).
const char* kIgnoredOptions[] = {"--transformers-cache", "--lora-merge-cache", "--lora-merge-dtype", "--device",
                                 "--write-threads"};

}  // namespace

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  alloy::remove_staging_on_signals();  // first: before any thread starts
  CLI::App app{"Merge models with a mergekit-style YAML recipe and write an attributed model directory."};
  std::string config_path, out_dir, shard_size = "5B";
  bool copy_tokenizer = true, model_card = true, allow_crimes = false, dry_run = false, overwrite = false,
       quiet = false, provenance_hashes = true;
  uint64_t seed = 0;
  int threads = 0;
  app.add_option("CONFIG", config_path, "the recipe (YAML)")->required();
  app.add_option("OUT_DIR", out_dir, "output directory")->required();
  app.add_option("--out-shard-size", shard_size, "shard byte budget, decimal (5B, 500M)")->capture_default_str();
  app.add_flag("--copy-tokenizer,!--no-copy-tokenizer", copy_tokenizer, "copy the tokenizer files (default on)");
  app.add_flag("--write-model-card,!--no-write-model-card", model_card, "write README.md (default on)");
  app.add_flag("--allow-crimes,!--no-allow-crimes", allow_crimes, "allow merging different architectures and shapes, and clamp values beyond out_dtype's range");
  app.add_option("--random-seed", seed, "seed for random methods (dare, della)")->capture_default_str();
  app.add_option("-j,--threads,--num-threads", threads, "threads (default: all cores)");
  bool allow_unindexed_shards = false;
  app.add_flag("--allow-unindexed-shards", allow_unindexed_shards,
               "open sharded models whose directory holds *.safetensors files the index does not name (or whose total_size disagrees), using the index's weights, with a warning");
  app.add_flag("--dry-run", dry_run, "validate everything and print the plan as JSON; write nothing");
  app.add_flag("--overwrite", overwrite, "replace OUT_DIR if it exists and is not empty");
  bool progress = false, lazy_unpickle = false;
  app.add_flag("-q,--quiet,!--no-quiet", quiet, "no progress bar");
  app.add_flag("--progress", progress, "draw the progress bar even when stderr is not a terminal (not with --quiet)");
  app.add_flag("--lazy-unpickle,!--no-lazy-unpickle", lazy_unpickle)->group("");
  app.add_flag("--provenance-hashes,!--no-provenance-hashes", provenance_hashes,
               "sha256 of every input and output file in alloy_provenance.json (default on; off: sizes only, no digests)");
  std::string hash_cache;
  alloy::tool::add_hash_cache_option(app, hash_cache);
  bool sbom = false;
  app.add_flag("--sbom", sbom,
               "also write alloy_bom.cdx.json, a CycloneDX 1.6 ML-BOM with the parent models under pedigree.ancestors");
  std::string moe_experts = "per-expert";
  app.add_option("--moe-experts", moe_experts,
                 "per-expert: merge MoE experts stored one tensor per expert as stored (mergekit releases up to "
                 "v0.1.4); fused: per layer as one gate_up [E, 2I, H] and one down [E, H, I] tensor, as mergekit's "
                 "main branch since its Transformers v5 port (docs/methods.md)")
      ->check(CLI::IsMember({"per-expert", "fused"}))
      ->capture_default_str();
  std::vector<std::string> ignored;
  for (const char* flag : kIgnoredFlags) {
    app.add_flag(flag, [flag, &ignored](int64_t) { ignored.push_back(flag); })->group("");
  }
  for (const char* option : kIgnoredOptions) {
    app.add_option_function<std::string>(option, [option, &ignored](const std::string& value) {
      ignored.push_back(std::string(option) + " " + value);
    })->group("");
  }
  alloy::tool::add_version_flag(app, "alloy-merge");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  if (app.count("--lazy-unpickle") + app.count("--no-lazy-unpickle") > 0) {
    std::fprintf(stderr, "alloy-merge: note: --lazy-unpickle changes nothing: alloy always reads .bin checkpoints "
                         "lazily (their storages are memory-mapped and read tensor by tensor, never unpickled into memory)\n");
  }
  for (const auto& flag : ignored) {
    std::fprintf(stderr, "alloy-merge: note: %s has no effect in alloy (accepted for mergekit compatibility)\n",
                 flag.c_str());
  }
  try {
    if (threads > 0) alloy::set_thread_count(threads);
    alloy::PlanOptions plan_options;
    plan_options.allow_crimes = allow_crimes;
    plan_options.open.allow_unindexed_shards = allow_unindexed_shards;
    const alloy::MergePlan plan = alloy::plan_merge(alloy::load_recipe(config_path), plan_options);
    for (const auto& model : plan.models) {
      for (const auto& warning : model->warnings()) std::fprintf(stderr, "alloy-merge: warning: %s\n", warning.c_str());
    }
    alloy::tool::print_notes("alloy-merge", plan.notices);
    for (const auto& warning : plan.warnings) std::fprintf(stderr, "alloy-merge: warning: %s\n", warning.c_str());
    if (dry_run) {
      std::cout << alloy::plan_to_json(plan).dump(2) << "\n";
      return 0;
    }
    alloy::MergeOptions options;
    options.out_dir = out_dir;
    options.shard_bytes = alloy::parse_byte_size(shard_size);
    options.copy_tokenizer = copy_tokenizer;
    options.write_model_card = model_card;
    options.overwrite = overwrite;
    options.random_seed = seed;
    options.hash_inputs = options.hash_outputs = provenance_hashes;
    options.hash_cache = hash_cache;
    options.write_sbom = sbom;
    options.clamp_overflow = allow_crimes;
    options.fuse_moe_experts = moe_experts == "fused";
    const auto start = std::chrono::steady_clock::now();
    std::optional<alloy::ProgressBar> bar;
    if (alloy::progress_enabled(quiet, progress)) options.progress = bar.emplace("alloy-merge", plan.output_bytes()).callback();
    const auto result = alloy::run_merge(plan, options);
    bar.reset();
    alloy::tool::print_notes("alloy-merge", result.notices);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "alloy-merge: wrote %zu tensors (%.3f GB) with %s to %s in %.2fs\n", result.tensors,
                 static_cast<double>(result.output_bytes) / 1e9, plan.recipe.merge_method.c_str(), out_dir.c_str(),
                 seconds);
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-merge: error: %s [%s]\n", e.what(), alloy::error_code_name(e.code()));
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-merge: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
