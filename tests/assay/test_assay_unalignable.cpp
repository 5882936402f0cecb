// Refuse to guess (issue 10): a suspect permuted in a way the assay cannot undo must never name an
// unrelated candidate as involved, never fit a candidate on the tensors it could not align, and
// never claim a merge with full confidence. The assay undoes whole experts, neurons and heads on
// every layout alloy-synth writes (tests/assay/test_assay_real_layouts.cpp), so the permutation
// here is one it does not undo: the rows inside each head-sized block (head_dim rows) of the query
// and key projections (q_proj, k_proj, Phi-3's qkv_proj, DeepSeek's q_b_proj and kv_b_proj), the
// same shuffle in every block of a layer, drawn per layer. For every family, 50 seeds: every fifth
// draws the family anew (base, fine-tunes, unrelated model from base seed seed + 1) and merges it
// (linear 0.7 ft_1 + 0.3 ft_2); each seed rewrites the merge with its own shuffle.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>

#include "alloy/assay/assay.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace alloy {
namespace {

constexpr int kSeeds = test::sweep_seeds(50);  // per family
constexpr int kSeedsPerFamily = 5;  // shuffles per drawn family (ten families drawn per family kind)

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Writes `from` to `to` with each tensor's bytes passed through `permute(name, info, in, out)`
// (which returns whether it changed them; the names of those are returned).
template <class Permute>
std::vector<std::string> rewrite(const std::filesystem::path& from, const std::filesystem::path& to, Permute permute) {
  const Model model = Model::open(from);
  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::string> changed;
  for (const auto& t : model.tensors()) {
    std::vector<uint8_t> data(t.data(), t.data() + t.info->nbytes());
    if (permute(t.name(), *t.info, t.data(), data.data())) changed.push_back(t.name());
    specs.push_back({t.name(), t.info->dtype, t.info->shape});
    bytes.push_back(std::move(data));
  }
  std::filesystem::create_directories(to);
  std::vector<const void*> data;
  for (const auto& b : bytes) data.push_back(b.data());
  write_safetensors_file(to / "model.safetensors", specs, data);
  std::filesystem::copy_file(from / "config.json", to / "config.json", std::filesystem::copy_options::overwrite_existing);
  return changed;
}

class AssayUnalignable : public ::testing::TestWithParam<std::string> {};

TEST_P(AssayUnalignable, NoFalseAttributionOverSeeds) {
  const std::string family = GetParam();
  std::unique_ptr<test::TempDir> dir;
  BaseModelOptions base;
  for (int seed = 0; seed < kSeeds; ++seed) {
    SCOPED_TRACE(family + " seed " + std::to_string(seed));
    if (seed % kSeedsPerFamily == 0) {
      // A new family: base, fine-tunes and unrelated model drawn from base seed seed + 1, merged.
      dir = std::make_unique<test::TempDir>();
      base.arch.family = *family_from_name(family);
      base.arch.layers = family == "qwen3_next" || family == "qwen3_5_moe" ? 4 : 2;  // one full-attention layer
      base.arch.experts = 4;
      base.seed = uint64_t(seed) + 1;
      FineTuneOptions ft;
      synth_family(*dir / "fam", base, 2, 1, ft);
      PlanOptions plan_options;
      plan_options.base_dir = *dir / "fam";
      MergePlan plan = plan_merge(parse_recipe("merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.7}\n"
                                               "  - model: ft_2\n    parameters: {weight: 0.3}\n",
                                               "linear.yml"),
                                  plan_options);
      MergeOptions merge_options;
      merge_options.out_dir = *dir / "merged";
      merge_options.hash_inputs = merge_options.hash_outputs = false;
      run_merge(plan, merge_options);
    }

    // One shuffle of head_dim rows per layer, drawn when the layer's first shuffled tensor is met.
    const uint64_t head_dim = uint64_t(base.arch.head_dim());
    std::mt19937_64 rng(uint64_t(seed) * 7919 + 17);
    std::map<std::string, std::vector<size_t>> per_layer;
    const auto permute = [&](const std::string& name, const TensorInfo& info, const uint8_t* in, uint8_t* out) {
      bool inside_heads = false;
      for (const char* t : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.qkv_proj.weight",
                            "self_attn.q_b_proj.weight", "self_attn.kv_b_proj.weight"}) {
        inside_heads |= ends_with(name, t);
      }
      if (!inside_heads || info.shape.size() != 2 || info.shape[0] % head_dim != 0) return false;
      const std::string layer = name.substr(0, name.find(".self_attn."));
      auto it = per_layer.find(layer);
      if (it == per_layer.end()) {
        std::vector<size_t> p(head_dim);
        std::iota(p.begin(), p.end(), size_t(0));
        std::shuffle(p.begin(), p.end(), rng);
        if (std::is_sorted(p.begin(), p.end())) std::swap(p[0], p[1]);
        it = per_layer.emplace(layer, std::move(p)).first;
      }
      const size_t row = info.nbytes() / info.shape[0];
      for (size_t block = 0; block < info.shape[0] / head_dim; ++block) {
        for (size_t r = 0; r < head_dim; ++r) {
          std::memcpy(out + (block * head_dim + r) * row, in + (block * head_dim + it->second[r]) * row, row);
        }
      }
      return true;
    };
    const std::vector<std::string> changed = rewrite(*dir / "merged", *dir / "permuted", permute);
    ASSERT_FALSE(changed.empty());

    AssayOptions options;
    options.suspect = *dir / "permuted";
    for (const char* c : {"base", "ft_1", "ft_2", "unrelated_1"}) options.candidates.push_back((*dir / "fam" / c).string());
    const AssayResult r = run_assay(options);
    ASSERT_EQ(r.candidates.size(), 4u);
    EXPECT_FALSE(r.candidates[3].involved) << "the unrelated model\n" << assay_summary(r);
    // No candidate carries a fitted weight on a tensor that was shuffled.
    for (const auto& t : r.tensors) {
      if (std::find(changed.begin(), changed.end(), t.name) == changed.end()) continue;
      EXPECT_FALSE(t.fitted) << t.name << " was fitted though its rows were shuffled";
    }
    // Not a merge with full confidence: the verdict says what it could not check.
    if (r.verdict == "merge" || r.verdict == "copy") {
      ASSERT_TRUE(r.evidence.contains("confidence")) << assay_summary(r);
      EXPECT_NE(r.evidence["confidence"], "full");
      ASSERT_TRUE(r.evidence.contains("unchecked")) << assay_summary(r);
      EXPECT_GT(r.evidence["unchecked"]["tensors"].get<size_t>(), 0u);
    }
    std::filesystem::remove_all(*dir / "permuted");
  }
}

INSTANTIATE_TEST_SUITE_P(Families, AssayUnalignable,
                         ::testing::Values("llama", "mistral", "gemma2", "phi3", "mixtral", "qwen3", "qwen3_moe",
                                           "qwen3_next", "qwen3_5_moe", "gpt_oss", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace alloy
