// alloy-synth: deterministic synthetic models (base, fine-tunes, unrelated) for tests and demos.
// Only flag parsing lives here; alloy/synth/synth.h does the work.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>

#include "alloy/core/file_util.h"
#include "alloy/core/error.h"
#include "alloy/core/parallel.h"
#include "alloy/core/progress.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"
#include "alloy/core/writer.h"
#include "../common/cli.h"

namespace {

struct OutputFlags {
  std::string shard_size = "5B";
  bool overwrite = false, quiet = false, progress = false;
};

struct BaseFlags {
  std::string family = "llama", dtype = "bf16";
  double size_gb = 0;
  alloy::BaseModelOptions options;
  OutputFlags output;
};

void add_output_flags(CLI::App* cmd, OutputFlags* f) {
  cmd->add_option("--shard-size", f->shard_size, "bytes per safetensors shard, decimal (5B, 500M, 1000000)")
      ->capture_default_str();
  cmd->add_flag("--overwrite", f->overwrite, "replace OUT if it exists and is not empty");
}

// base, finetune and family (perturb writes without a bar).
void add_progress_flags(CLI::App* cmd, OutputFlags* f) {
  cmd->add_flag("-q,--quiet", f->quiet, "no progress bar");
  cmd->add_flag("--progress", f->progress, "draw the progress bar even when stderr is not a terminal (not with --quiet)");
}

// The bar for one command's writes, when wanted (alloy/core/progress.h).
void attach_progress(const OutputFlags& f, std::optional<alloy::ProgressBar>* bar, alloy::SynthOutput* output) {
  if (alloy::progress_enabled(f.quiet, f.progress)) output->progress = bar->emplace("alloy-synth", 0).callback();
}

uint64_t shard_bytes(const OutputFlags& f) { return alloy::parse_byte_size(f.shard_size); }

void add_base_flags(CLI::App* cmd, BaseFlags* f) {
  auto& a = f->options.arch;
  cmd->add_option("--family", f->family,
                  "llama (dense, LlamaForCausalLM), moe (Qwen2MoeForCausalLM), or a real layout: mistral, gemma2, "
                  "phi3, mixtral, qwen3, qwen3_moe, qwen3_next, qwen3_5_moe, gpt_oss, deepseek_v3")
      ->check(CLI::IsMember(alloy::family_names()))
      ->capture_default_str();
  std::vector<CLI::Option*> sizes = {
      cmd->add_option("--layers", a.layers, "decoder layers")->capture_default_str(),
      cmd->add_option("--hidden", a.hidden, "hidden size")->capture_default_str(),
      cmd->add_option("--intermediate", a.intermediate, "dense MLP width (moe: shared-expert width)")
          ->capture_default_str(),
      cmd->add_option("--heads", a.heads, "attention heads")->capture_default_str(),
      cmd->add_option("--kv-heads", a.kv_heads, "key/value heads (grouped-query attention)")->capture_default_str(),
      cmd->add_option("--vocab", a.vocab, "vocabulary size")->capture_default_str(),
      cmd->add_option("--moe-intermediate", a.moe_intermediate, "moe: width of each routed expert")
          ->capture_default_str(),
  };
  cmd->add_option("--experts", a.experts, "moe: routed experts per layer")->capture_default_str();
  cmd->add_option("--experts-per-token", a.experts_per_token, "moe: experts routed to per token")
      ->capture_default_str();
  cmd->add_flag("--shared-expert,!--no-shared-expert", a.shared_expert, "moe: a shared expert per layer (default on)");
  cmd->add_flag("--tie-embeddings", a.tie_embeddings, "tie lm_head to the embeddings (no lm_head.weight)");
  cmd->add_flag("--attention-bias", a.attention_bias, "q/k/v projection biases (as real Qwen2-MoE)");
  cmd->add_option("--dtype", f->dtype, "bf16, f16 or f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  cmd->add_option("--seed", f->options.seed, "generator seed")->capture_default_str();
  auto* size = cmd->add_option("--size-gb", f->size_gb,
                               "pick hidden, intermediate, heads, vocab and layers to reach about this many GB");
  for (auto* option : sizes) size->excludes(option);
  add_output_flags(cmd, &f->output);
  add_progress_flags(cmd, &f->output);
}

void resolve(BaseFlags* f) {
  f->options.dtype = *alloy::dtype_from_torch_name(f->dtype);
  f->options.arch.family = *alloy::family_from_name(f->family);
  if (f->size_gb != 0) {
    f->options.arch = alloy::architecture_for_size(f->options.arch, f->size_gb, f->options.dtype);
  }
  f->options.output.shard_bytes = shard_bytes(f->output);
  f->options.output.overwrite = f->output.overwrite;
}

void add_fine_tune_flags(CLI::App* cmd, alloy::FineTuneOptions* o) {
  cmd->add_option("--delta", o->relative_delta, "||delta|| / ||base|| per tensor")->capture_default_str();
  cmd->add_option("--low-rank-fraction", o->low_rank_fraction, "share of the delta's energy that is low-rank")
      ->capture_default_str();
  cmd->add_option("--rank", o->rank, "rank of the low-rank part")->capture_default_str();
  cmd->add_option("--sibling-correlation", o->sibling_correlation,
                  "correlated siblings: per tensor, a share rho uniform in [0, X] of the delta lies along a "
                  "direction common to fine-tunes with the same --shared-seed (family: all fine-tunes)")
      ->capture_default_str();
  cmd->add_option("--shared-seed", o->shared_seed, "seed of the common direction (family default: seed + 3000)");
}

}  // namespace

int main(int argc, char** argv) {
  alloy::tool::wait_passively_in_openmp(argv);  // first: re-executes the tool
  alloy::remove_staging_on_signals();  // first: before any thread starts
  CLI::App app{"Generates deterministic synthetic models in the Hugging Face layout (same flags and seed: "
               "same bytes)."};
  app.require_subcommand(1, 1);
  int threads = 0;
  app.add_option("--threads", threads, "worker threads (default: all cores); the output does not depend on it");

  std::string out;
  BaseFlags base;
  auto* base_cmd = app.add_subcommand("base", "a base model (an unrelated model is a base with another seed)");
  base_cmd->add_option("OUT", out, "output directory")->required();
  add_base_flags(base_cmd, &base);

  std::string base_dir;
  alloy::FineTuneOptions ft;
  OutputFlags ft_output;
  auto* ft_cmd = app.add_subcommand("finetune", "BASE + a low-rank and dense delta, in BASE's dtype");
  ft_cmd->add_option("BASE", base_dir, "the base model directory")->required();
  ft_cmd->add_option("OUT", out, "output directory")->required();
  add_fine_tune_flags(ft_cmd, &ft);
  ft_cmd->add_option("--seed", ft.seed, "generator seed of the delta")->capture_default_str();
  add_output_flags(ft_cmd, &ft_output);
  add_progress_flags(ft_cmd, &ft_output);

  int fine_tunes = 3, unrelated = 1;
  alloy::FineTuneOptions family_ft;
  BaseFlags family;
  auto* family_cmd = app.add_subcommand(
      "family", "OUT/base, fine-tunes OUT/ft_1.. (seeds seed+1000+i), unrelated OUT/unrelated_1.. (seed+2000+i)");
  family_cmd->add_option("OUT", out, "output directory")->required();
  family_cmd->add_option("--fine-tunes", fine_tunes, "number of fine-tunes of the base")->capture_default_str();
  family_cmd->add_option("--unrelated", unrelated, "number of unrelated models of the same shape")
      ->capture_default_str();
  add_base_flags(family_cmd, &family);
  add_fine_tune_flags(family_cmd, &family_ft);

  std::string perturb_in, kind_name, format_name = "int8", relative_to = "rms", layer_map, rotation_name;
  alloy::PerturbOptions perturb;
  double strength = 0;
  OutputFlags perturb_output;
  auto* perturb_cmd = app.add_subcommand(
      "perturb", "IN transformed to hide a merge (noise, re-rounding, permutations, ...), with the ground truth in "
                 "OUT/alloy_perturb.json");
  perturb_cmd->add_option("IN", perturb_in, "the model directory to transform")->required();
  perturb_cmd->add_option("OUT", out, "output directory")->required();
  perturb_cmd->add_option("--kind", kind_name,
                          "noise, reround, finetune, permute-experts, permute-neurons, permute-heads, "
                          "rescale-neurons, fold-norms, stack-layers or rotate-residual")
      ->required();
  auto* strength_option = perturb_cmd->add_option(
      "--strength", strength,
      "noise: ||noise|| / ||W|| (or / ||W - REF||), default 0.01; finetune: ||delta|| / ||W||, default 0.05; "
      "rescale-neurons: factors in [1/X, X], default 2; other kinds take none");
  perturb_cmd->add_option("--seed", perturb.seed, "seed of the random choices")->capture_default_str();
  perturb_cmd->add_option("--reference", perturb.reference, "noise: size it relative to IN - REF");
  perturb_cmd->add_flag("--allow-unindexed-shards", perturb.open.allow_unindexed_shards,
                        "open sharded models whose directory holds *.safetensors files the index does not name (or whose total_size disagrees), using the index's weights, with a warning");
  perturb_cmd->add_option("--relative-to", relative_to, "noise: rms (default) or reference (needs --reference)");
  perturb_cmd->add_option("--format", format_name, "reround: bf16, f16, int8 (per-row absmax) or int4 (groups of 32)")
      ->capture_default_str();
  perturb_cmd->add_option("--layer-map", layer_map, "stack-layers: output layer i is input layer map[i], e.g. 0,1,1,2,3");
  perturb_cmd->add_option("--low-rank-fraction", perturb.low_rank_fraction, "finetune: share of the delta that is low-rank")
      ->capture_default_str();
  perturb_cmd->add_option("--rotation", rotation_name,
                          "rotate-residual: random (QR of a Gaussian matrix, default) or hadamard (H diag(+-1) / "
                          "sqrt(n), hidden a power of two)");
  perturb_cmd->add_option("--rank", perturb.rank, "finetune: rank of the low-rank part")->capture_default_str();
  add_output_flags(perturb_cmd, &perturb_output);

  // CLI11 reports an unknown command only as "A subcommand is required": name it instead.
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads") {
      ++i;
      continue;
    }
    if (arg.empty() || arg[0] == '-') continue;
    if (arg != "base" && arg != "finetune" && arg != "family" && arg != "perturb") {
      std::fprintf(stderr, "alloy-synth: error: unknown command '%s' (expected base, finetune, family or perturb)\n",
                   arg.c_str());
      return 2;
    }
    break;
  }
  alloy::tool::add_version_flag(app, "alloy-synth");
  if (const auto status = alloy::tool::parse_command_line(app, argc, argv)) return *status;
  try {
    alloy::set_thread_count(threads);
    std::optional<alloy::ProgressBar> bar;
    if (base_cmd->parsed()) {
      resolve(&base);
      attach_progress(base.output, &bar, &base.options.output);
      alloy::synth_base_model(out, base.options);
    } else if (ft_cmd->parsed()) {
      ft.output.shard_bytes = shard_bytes(ft_output);
      ft.output.overwrite = ft_output.overwrite;
      attach_progress(ft_output, &bar, &ft.output);
      alloy::synth_fine_tune(base_dir, out, ft);
    } else if (perturb_cmd->parsed()) {
      const auto kind = alloy::perturb_kind_from_name(kind_name);
      if (!kind) {
        throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                           "perturb: unknown --kind '" + kind_name +
                               "' (expected noise, reround, finetune, permute-experts, permute-neurons, "
                               "permute-heads, rescale-neurons, fold-norms, stack-layers or rotate-residual)");
      }
      perturb.kind = *kind;
      if (!rotation_name.empty()) {
        const auto rotation = alloy::residual_rotation_from_name(rotation_name);
        if (!rotation) {
          throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                             "perturb: unknown --rotation '" + rotation_name + "' (expected random or hadamard)");
        }
        if (*kind != alloy::PerturbKind::kRotateResidual) {
          throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                             "perturb: --rotation applies only to --kind rotate-residual, not " + kind_name);
        }
        perturb.rotation = *rotation;
      }
      const auto format = alloy::reround_format_from_name(format_name);
      if (!format) {
        throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                           "perturb: unknown --format '" + format_name + "' (expected bf16, f16, int8 or int4)");
      }
      perturb.format = *format;
      if (relative_to != "rms" && relative_to != "reference") {
        throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                           "perturb: --relative-to must be rms or reference (got '" + relative_to + "')");
      }
      if (relative_to == "reference" && perturb.reference.empty()) {
        throw alloy::Error(alloy::ErrorCode::kInvalidArgument, "perturb: --relative-to reference needs --reference REF");
      }
      if (relative_to == "rms" && perturb_cmd->count("--relative-to") && !perturb.reference.empty()) {
        throw alloy::Error(alloy::ErrorCode::kInvalidArgument,
                           "perturb: --relative-to rms contradicts --reference (which sizes the noise by IN - REF)");
      }
      if (strength_option->count()) perturb.strength = strength;
      if (!layer_map.empty()) perturb.layer_map = alloy::parse_layer_map(layer_map);
      perturb.output.shard_bytes = shard_bytes(perturb_output);
      perturb.output.overwrite = perturb_output.overwrite;
      alloy::perturb_model(perturb_in, out, perturb);
    } else {
      resolve(&family);
      attach_progress(family.output, &bar, &family.options.output);
      alloy::synth_family(out, family.options, fine_tunes, unrelated, family_ft);
    }
  } catch (const alloy::Error& e) {
    std::fprintf(stderr, "alloy-synth: error: %s [%s]\n", e.what(), alloy::error_code_name(e.code()));
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alloy-synth: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
