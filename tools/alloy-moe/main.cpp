// alloy-moe CONFIG.yml OUT_DIR: assemble a mixture of experts from dense models (mergekit-moe's
// command line and recipe; docs/moe.md).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <optional>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "alloy/core/progress.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/writer.h"
#include "alloy/merge/moe.h"
#include "../common/cli.h"

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  alloy::remove_staging_on_signals();  // first: before any thread starts
  CLI::App app{"Assemble a mixture of experts from dense models with a mergekit-moe YAML recipe."};
  std::string config_path, out_dir, shard_size = "5B", hidden_states;
  bool copy_tokenizer = true, model_card = true, overwrite = false, quiet = false, dry_run = false,
       allow_all_same = false;
  uint64_t seed = 0;
  app.add_option("CONFIG", config_path, "the MoE recipe (mergekit-moe YAML)")->required();
  app.add_option("OUT_DIR", out_dir, "output directory")->required();
  app.add_option("--hidden-states", hidden_states,
                 "safetensors file with the base model's hidden states for the prompts (gate_mode hidden; docs/moe.md)");
  app.add_option("--random-seed", seed, "seed for gate_mode random / uniform_random and noise_scale")
      ->capture_default_str();
  app.add_option("--out-shard-size", shard_size, "shard byte budget, decimal (5B, 500M)")->capture_default_str();
  app.add_flag("--copy-tokenizer,!--no-copy-tokenizer", copy_tokenizer, "copy the base's tokenizer files (default on)");
  app.add_flag("--write-model-card,!--no-write-model-card", model_card, "write README.md (default on)");
  app.add_flag("--i-understand-this-is-not-useful-without-training", allow_all_same,
               "allow every expert to be the same model (for training afterwards)");
  app.add_flag("--overwrite", overwrite, "replace OUT_DIR if it exists and is not empty");
  app.add_flag("--dry-run", dry_run, "check everything and print the output's tensors and config; write nothing");
  app.add_flag("-q,--quiet,!--no-quiet", quiet, "no progress bar");
  bool progress = false;
  app.add_flag("--progress", progress, "draw the progress bar even when stderr is not a terminal (not with --quiet)");
  std::vector<std::string> ignored;
  for (const char* flag : {"--load-in-4bit", "--load-in-8bit", "--verbose", "-v", "--cuda", "--no-cuda",
                           "--lazy-unpickle", "--trust-remote-code", "--allow-crimes", "--low-cpu-memory"}) {
    app.add_flag(flag, [flag, &ignored](int64_t) { ignored.push_back(flag); })->group("");
  }
  for (const char* option : {"--device", "--transformers-cache"}) {
    app.add_option_function<std::string>(option, [option, &ignored](const std::string& v) {
      ignored.push_back(std::string(option) + " " + v);
    })->group("");
  }
  alloy::tool::add_version_flag(app, "alloy-moe");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  for (const auto& flag : ignored) {
    std::fprintf(stderr, "alloy-moe: note: %s has no effect in alloy (accepted for mergekit-moe compatibility)\n",
                 flag.c_str());
  }
  try {
    const alloy::MoeRecipe recipe = alloy::load_moe_recipe(config_path, allow_all_same);
    alloy::MoeOptions options;
    options.out_dir = out_dir;
    options.hidden_states = hidden_states;
    options.seed = seed;
    options.shard_bytes = alloy::parse_byte_size(shard_size);
    options.copy_tokenizer = copy_tokenizer;
    options.write_model_card = model_card;
    options.overwrite = overwrite;
    options.dry_run = dry_run;
    const auto start = std::chrono::steady_clock::now();
    std::optional<alloy::ProgressBar> bar;
    if (!dry_run && alloy::progress_enabled(quiet, progress)) options.progress = bar.emplace("alloy-moe", 0).callback();
    const alloy::MoeResult result = alloy::build_moe(recipe, options);
    bar.reset();
    alloy::tool::print_notes("alloy-moe", result.notices);
    if (dry_run) {
      nlohmann::json plan = {{"architecture", alloy::moe_architecture_name(result.architecture)},
                             {"tensors", result.tensor_names},
                             {"output_bytes", result.output_bytes},
                             {"config", result.config}};
      std::cout << plan.dump(2) << "\n";
      return 0;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "alloy-moe: wrote a %s model, %zu tensors (%.3f GB), to %s in %.2fs\n",
                 alloy::moe_architecture_name(result.architecture), result.tensors,
                 static_cast<double>(result.output_bytes) / 1e9, out_dir.c_str(), seconds);
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-moe: error: %s [%s]\n", e.what(), alloy::error_code_name(e.code()));
    return alloy::tool::kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-moe: error: %s\n", e.what());
    return alloy::tool::kExitError;
  }
  return 0;
}
