// alloy-extract-lora BASE FINETUNED OUT --rank R: a PEFT LoRA adapter that approximates FINETUNED -
// BASE by truncated SVD, module by module (the work is alloy::extract_lora, alloy/merge/lora.h).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>

#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/hub_cache.h"
#include "alloy/merge/lora.h"
#include "../common/cli.h"

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  alloy::remove_staging_on_signals();  // first: before any thread starts
  CLI::App app{"Extract a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) from the difference "
               "between a fine-tuned model and its base, by truncated SVD of every 2-D module weight."};
  std::string base, tuned, out, dtype = "float32";
  alloy::LoraExtractOptions options;
  bool quiet = false;
  app.add_option("BASE", base, "the base model (directory, .safetensors file or Hub id in the local cache)")->required();
  app.add_option("FINETUNED", tuned, "the fine-tuned model")->required();
  app.add_option("OUT", out, "the adapter directory to write")->required();
  app.add_option("-r,--rank", options.rank, "the adapter's rank r (lora_alpha = r, so its scale is 1)")->required();
  app.add_flag("--embeddings", options.embeddings,
               "also extract embed_tokens (as lora_embedding_A/B) and lm_head (default: skipped)");
  app.add_option("--dtype", dtype, "dtype of the factors: float32 (default), bfloat16 or float16");
  app.add_option("--exact-limit", options.exact_limit,
                 "exact SVD (Eigen BDCSVD) for modules whose smaller side is at most this (default 1024), "
                 "randomized SVD above it");
  app.add_flag("--overwrite", options.overwrite, "replace OUT if it exists and is not empty");
  app.add_flag("-q,--quiet", quiet, "no per-module lines");
  alloy::tool::add_version_flag(app, "alloy-extract-lora");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  try {
    const auto parsed = alloy::dtype_from_torch_name(dtype);
    if (!parsed) throw alloy::Error(alloy::ErrorCode::kInvalidArgument, "unknown --dtype '" + dtype + "'");
    options.dtype = *parsed;
    const auto result = alloy::extract_lora(alloy::locate_model(base), alloy::locate_model(tuned), out, options);
    for (const auto& skipped : result.skipped) std::fprintf(stderr, "alloy-extract-lora: skipped %s\n", skipped.c_str());
    double worst = 0;
    for (const auto& m : result.modules) {
      const double relative = m.delta_norm > 0 ? m.residual_norm / m.delta_norm : 0;
      worst = std::max(worst, relative);
      if (!quiet) {
        std::printf("%s rank %llu: |delta| %.6g, residual %.6g (%.3g relative; discarded singular values %.6g)%s\n",
                    m.module.c_str(), static_cast<unsigned long long>(m.rank), m.delta_norm, m.residual_norm,
                    relative, m.discarded_energy, m.exact ? "" : " [randomized]");
      }
    }
    std::fprintf(stderr, "alloy-extract-lora: wrote %zu modules at rank %llu to %s (largest relative residual %.3g)\n",
                 result.modules.size(), static_cast<unsigned long long>(options.rank), out.c_str(), worst);
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-extract-lora: error: %s [%s]\n", e.what(), alloy::error_code_name(e.code()));
    return alloy::tool::kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-extract-lora: error: %s\n", e.what());
    return alloy::tool::kExitError;
  }
  return alloy::tool::kExitOk;
}
