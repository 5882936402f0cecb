// The executor's output window (lib/merge/executor.cpp, merge_chunked; detail::set_output_window):
// a chunked tensor's output bytes go to the writer one window at a time (ShardedWriter::write_part),
// hashed as they are written. With a tiny odd window, every tensor larger than it (all of them but
// the norms' few) is written in many parts whose boundaries fall inside rows and chunks, in a
// sharded output whose tensors straddle the hashing order; every byte of every file, and every
// hash the provenance records, must be those of the default window. Fused MoE experts split each
// window over the member tensors. Small chunks inside a larger window exercise the grouped reads.
#include <gtest/gtest.h>

#include <tuple>

#include <nlohmann/json.hpp>

#include "alloy/core/sha256.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "merge/methods/sparsify.h"
#include "test_utils.h"
#include "tiny_model.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;

class OutputWindow : public ::testing::Test {
 protected:
  void TearDown() override {
    detail::set_output_window(0);
    detail::set_stream_grain(0);
    detail::set_held_source_bytes(0);
  }
};

// The merged directory's files (weights, index, config) by name, bytes; the provenance statement's
// digest of each subject, checked against the file.
std::map<std::string, std::string> merged_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find("safetensors") != std::string::npos || name == "config.json") files[name] = test::read_bytes(e.path());
  }
  const nlohmann::json statement = nlohmann::json::parse(test::read_bytes(dir / "alloy_provenance.json"));
  for (const auto& s : statement["subject"]) {
    const std::string name = s["name"].get<std::string>();
    EXPECT_EQ(s["digest"]["sha256"], sha256_file(dir / name)) << dir << " " << name;
  }
  return files;
}

TEST_F(OutputWindow, TensorsLargerThanTheWindowAreWrittenBitIdentically) {
  test::TempDir dir;
  for (const ModelFamily family : {ModelFamily::kLlama, ModelFamily::kMixtral}) {
    BaseModelOptions base = test::tiny_family_model(family, 2);  // tensors of 32 to 1536 elements
    base.dtype = family == ModelFamily::kLlama ? DType::BF16 : DType::F32;
    const fs::path models = dir / (family == ModelFamily::kLlama ? "llama" : "mixtral");
    FineTuneOptions ft;
    synth_family(models, base, 2, 0, ft);
    const std::string members =
        "  - model: ft_1\n    parameters: {weight: 0.6, density: 0.4}\n"
        "  - model: ft_2\n    parameters: {weight: 0.5, density: 0.7}\n";
    const std::map<std::string, std::string> recipes = {
        {"ties", "merge_method: ties\nbase_model: base\nmodels:\n" + members + "dtype: bfloat16\n"},
        {"dare_ties", "merge_method: dare_ties\nbase_model: base\nmodels:\n" + members + "dtype: float32\n"},
        {"linear", "merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.3}\n"
                   "  - model: ft_2\n    parameters: {weight: 0.7}\ndtype: float16\n"},
        {"slerp", "merge_method: slerp\nbase_model: ft_1\nmodels:\n  - model: ft_1\n  - model: ft_2\n"
                  "parameters: {t: 0.3}\ndtype: bfloat16\nout_dtype: float16\n"},
    };
    for (const auto& [method, yaml] : recipes) {
      for (const bool fused : {false, true}) {
        if (fused && family == ModelFamily::kLlama) continue;
        std::map<std::string, std::string> reference;
        // (window, grain, held bytes): a window of 1000 with chunks of 61 reads up to four chunks
        // of every source at once (the executor's grouped reads) and ends on a short group. With
        // a limit of kHeldSourceBytes the sources of slerp (two passes), ties and dare_ties
        // (selection or L1 passes, then the chunks) are held; with 1 byte nothing is, and every
        // pass reads the file; 0 is the merge's own choice (held_budget.h).
        const uint64_t all = detail::kHeldSourceBytes;
        const std::tuple<size_t, size_t, uint64_t> settings[] = {
            {0, 0, 0},       {0, 0, all}, {7, 61, all}, {1000, 0, all},
            {1000, 61, all}, {0, 0, 1},   {7, 61, 1}};
        for (const auto& [window, grain, held] : settings) {
          detail::set_output_window(window);
          detail::set_stream_grain(grain);
          detail::set_held_source_bytes(held);
          PlanOptions po;
          po.base_dir = models;
          MergeOptions mo;
          mo.out_dir = models / ("out-" + method + (fused ? "-fused-" : "-") + std::to_string(window) + "-" +
                                 std::to_string(grain) + "-" + std::to_string(held));
          mo.shard_bytes = 4000;  // several shards, tensors out of their file's order
          mo.fuse_moe_experts = fused;
          mo.hash_inputs = false;
          run_merge(plan_merge(parse_recipe(yaml, method + ".yml"), po), mo);
          const auto files = merged_files(mo.out_dir);
          EXPECT_GT(files.size(), 3u) << method;
          if (window == 0 && held == 0) {
            reference = files;
            continue;
          }
          for (const auto& [name, bytes] : reference) {
            const auto it = files.find(name);
            ASSERT_NE(it, files.end()) << name;
            EXPECT_TRUE(it->second == bytes) << models.filename() << " " << method << (fused ? " fused" : "")
                                             << " window " << window << " grain " << grain << " held " << held << ": " << name
                                             << " differs";
          }
        }
      }
    }
  }
}

// A slerp of bf16 models in bf16 takes its sums as the held sources are read, two chunks of
// kDefaultGrain at a time (executor.cpp, hold_sources; ChunkedMerge::chunk_pair_sums_bf16). On
// tensors of 5 to 6 chunks with a short last one, its bytes are those of the unheld merge, whose
// sums pass reads the file again chunk by chunk; and those of a merge whose window is tiny.
TEST_F(OutputWindow, HeldSlerpSumsMatchTheSumsPass) {
  test::TempDir dir;
  BaseModelOptions base = test::tiny_model(31);
  base.arch.hidden = 256;
  base.arch.intermediate = 704;  // MLP matrices of 180,224 elements: 5.5 chunks
  synth_family(dir.path(), base, 2, 0, FineTuneOptions{});
  const std::string yaml =
      "merge_method: slerp\nbase_model: ft_1\nmodels: [ft_1, ft_2]\nparameters: {t: 0.35}\n"
      "dtype: bfloat16\n";
  std::map<std::string, std::string> reference;
  for (const auto& [held, window] :
       {std::pair{detail::kHeldSourceBytes, size_t{0}}, std::pair{uint64_t{1}, size_t{0}},
        std::pair{detail::kHeldSourceBytes, size_t{1000}}}) {
    detail::set_held_source_bytes(held);
    detail::set_output_window(window);
    PlanOptions po;
    po.base_dir = dir.path();
    MergeOptions mo;
    mo.out_dir = dir / ("out-" + std::to_string(held) + "-" + std::to_string(window));
    mo.hash_inputs = false;
    run_merge(plan_merge(parse_recipe(yaml, "slerp.yml"), po), mo);
    const auto files = merged_files(mo.out_dir);
    if (reference.empty()) {
      reference = files;
      continue;
    }
    for (const auto& [name, bytes] : reference) {
      ASSERT_TRUE(files.count(name)) << name;
      EXPECT_TRUE(files.at(name) == bytes)
          << name << " differs with held " << held << ", window " << window;
    }
  }
}

}  // namespace
}  // namespace alloy
