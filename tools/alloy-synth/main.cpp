// alloy-synth: deterministic synthetic models (base, fine-tunes, unrelated) for tests and demos.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "alloy/error.h"
#include "alloy/synth.h"
#include "alloy/writer.h"

namespace {

struct BaseFlags {
  std::string family = "llama", dtype = "bf16", shard_size = "5B";
  double size_gb = 0;
  alloy::BaseModelOptions options;
};

void add_output_flags(CLI::App* cmd, std::string* shard_size, bool* overwrite) {
  cmd->add_option("--shard-size", *shard_size, "shard byte budget, decimal (5B, 500M)")->capture_default_str();
  cmd->add_flag("--overwrite", *overwrite, "replace OUT if it exists");
}

void add_base_flags(CLI::App* cmd, BaseFlags* f) {
  auto& a = f->options.arch;
  cmd->add_option("--family", f->family, "llama (dense) or moe (Qwen2-MoE-like)")
      ->check(CLI::IsMember({"llama", "moe"}))->capture_default_str();
  cmd->add_option("--layers", a.layers)->capture_default_str();
  cmd->add_option("--hidden", a.hidden)->capture_default_str();
  cmd->add_option("--intermediate", a.intermediate, "dense MLP width (moe: shared-expert width)")->capture_default_str();
  cmd->add_option("--heads", a.heads)->capture_default_str();
  cmd->add_option("--kv-heads", a.kv_heads)->capture_default_str();
  cmd->add_option("--vocab", a.vocab)->capture_default_str();
  cmd->add_option("--experts", a.experts)->capture_default_str();
  cmd->add_option("--experts-per-token", a.experts_per_token)->capture_default_str();
  cmd->add_option("--moe-intermediate", a.moe_intermediate)->capture_default_str();
  cmd->add_flag("--shared-expert,!--no-shared-expert", a.shared_expert, "moe: add a shared expert");
  cmd->add_flag("--tie-embeddings", a.tie_embeddings, "no lm_head.weight");
  cmd->add_option("--dtype", f->dtype, "bf16, f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  cmd->add_option("--seed", f->options.seed)->capture_default_str();
  cmd->add_option("--size-gb", f->size_gb, "pick dimensions to reach about this many GB (overrides sizes)");
  add_output_flags(cmd, &f->shard_size, &f->options.output.overwrite);
}

void resolve(BaseFlags* f) {
  f->options.dtype = *alloy::dtype_from_torch_name(f->dtype);
  f->options.arch.family = f->family == "moe" ? alloy::ModelFamily::kMoe : alloy::ModelFamily::kLlama;
  if (f->size_gb > 0) f->options.arch = alloy::architecture_for_size(f->options.arch.family, f->size_gb, f->options.dtype);
  f->options.output.shard_bytes = alloy::parse_byte_size(f->shard_size);
}

void add_fine_tune_flags(CLI::App* cmd, alloy::FineTuneOptions* o) {
  cmd->add_option("--delta", o->relative_delta, "delta norm relative to each tensor's norm")->capture_default_str();
  cmd->add_option("--low-rank-fraction", o->low_rank_fraction, "share of the delta's energy that is low-rank")
      ->capture_default_str();
  cmd->add_option("--rank", o->rank, "rank of the low-rank part")->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generate deterministic synthetic models in the Hugging Face layout."};
  app.require_subcommand(1);

  std::string out;
  BaseFlags base;
  auto* base_cmd = app.add_subcommand("base", "a base model (or, with another seed, an unrelated one)");
  base_cmd->add_option("OUT", out, "output directory")->required();
  add_base_flags(base_cmd, &base);

  std::string base_dir, ft_shard = "5B";
  alloy::FineTuneOptions ft;
  auto* ft_cmd = app.add_subcommand("finetune", "base + a low-rank and dense delta");
  ft_cmd->add_option("BASE", base_dir, "the base model directory")->required();
  ft_cmd->add_option("OUT", out, "output directory")->required();
  add_fine_tune_flags(ft_cmd, &ft);
  ft_cmd->add_option("--seed", ft.seed)->capture_default_str();
  add_output_flags(ft_cmd, &ft_shard, &ft.output.overwrite);

  int fine_tunes = 3, unrelated = 1;
  alloy::FineTuneOptions family_ft;
  BaseFlags family;
  auto* family_cmd = app.add_subcommand("family", "OUT/base, OUT/ft_1.., OUT/unrelated_1..");
  family_cmd->add_option("OUT", out, "output directory")->required();
  family_cmd->add_option("--fine-tunes", fine_tunes)->capture_default_str();
  family_cmd->add_option("--unrelated", unrelated)->capture_default_str();
  add_base_flags(family_cmd, &family);
  add_fine_tune_flags(family_cmd, &family_ft);

  CLI11_PARSE(app, argc, argv);
  try {
    if (base_cmd->parsed()) {
      resolve(&base);
      alloy::synth_base_model(out, base.options);
    } else if (ft_cmd->parsed()) {
      ft.output.shard_bytes = alloy::parse_byte_size(ft_shard);
      alloy::synth_fine_tune(base_dir, out, ft);
    } else {
      resolve(&family);
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
