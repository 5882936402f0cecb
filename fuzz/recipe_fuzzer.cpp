// libFuzzer target: a recipe of arbitrary bytes through the YAML parser and, when it parses, the
// planner against a small synthetic family (base, ft_1..ft_3, unrelated_1, the names recipes/
// uses). Either succeeds or throws alloy::Error; never crashes, hangs or grows without bound
// (scripts/fuzz.sh runs it with a 10 s timeout per input).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"

namespace {

std::filesystem::path g_family;

void remove_family() {
  std::error_code ec;
  std::filesystem::remove_all(g_family, ec);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_family = std::filesystem::temp_directory_path() / ("alloy-recipe-fuzz-" + std::to_string(::getpid()));
  alloy::BaseModelOptions base;
  base.arch.layers = 4;  // recipes/ slices up to layer 4
  base.arch.hidden = 16;
  base.arch.intermediate = 24;
  base.arch.heads = 2;
  base.arch.kv_heads = 1;
  base.arch.vocab = 32;
  base.output.overwrite = true;
  alloy::synth_family(g_family, base, 3, 1, alloy::FineTuneOptions{});
  std::atexit(remove_family);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    alloy::Recipe recipe = alloy::parse_recipe(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yml");
    alloy::PlanOptions options;
    options.base_dir = g_family;
    const alloy::MergePlan plan = alloy::plan_merge(std::move(recipe), options);
    // Every planned tensor reads existing tensors of opened models.
    for (const auto& tensor : plan.tensors) {
      for (const auto& source : tensor.sources) {
        if (source.model >= plan.models.size() || !plan.models[source.model]->find(source.tensor)) std::abort();
      }
    }
  } catch (const alloy::Error&) {
  }
  return 0;
}
