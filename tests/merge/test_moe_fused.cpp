// MergeOptions::fuse_moe_experts (alloy-merge --moe-experts fused): per-expert MoE checkpoints
// merged as mergekit's main branch merges them since its Transformers v5 port, one [E, 2I, H]
// gate_up and one [E, H, I] down tensor per layer. The reference is independent of the grouping
// code: the test converts every source to the fused layout itself (stack over experts of
// cat(gate_e, up_e) along the rows; down_e stacked), merges the converted copies as stored, and
// slices the merged fused tensors back per expert. slerp and ties must give other values per
// expert than the default per-expert processing (whole-tensor angle, whole-tensor top-k).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <regex>
#include <set>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "tiny_model.h"
#include "test_utils.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 2, kExperts = 4;

struct Names {
  std::string gate, up, down;  // per-expert suffix templates with {e}
};
Names names_of(const std::string& family) {
  if (family == "mixtral") {
    return {"block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight",
            "block_sparse_moe.experts.{e}.w2.weight"};
  }
  return {"mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight", "mlp.experts.{e}.down_proj.weight"};
}
std::string expert_name(int layer, const std::string& tmpl, int e) {
  return "model.layers." + std::to_string(layer) + "." + std::regex_replace(tmpl, std::regex("\\{e\\}"), std::to_string(e));
}
std::string fused_name(int layer, bool gate_up) {
  return "model.layers." + std::to_string(layer) + ".mlp.experts." + (gate_up ? "gate_up_proj" : "down_proj");
}

std::string raw(const Model& m, const std::string& name) {
  const ModelTensor* t = m.find(name);
  if (t == nullptr) throw std::runtime_error("no " + name + " in " + m.path().string());
  return std::string(reinterpret_cast<const char*>(t->data()), t->info->nbytes());
}

// Writes `dir` as a copy of `src` with every layer's experts fused (the test's own converter).
void write_fused_copy(const fs::path& src, const fs::path& dir, const std::string& family) {
  const Model m = Model::open(src);
  const Names n = names_of(family);
  std::set<std::string> expert_tensors;
  std::vector<TensorSpec> specs;
  std::vector<std::string> blobs;
  for (int l = 0; l < kLayers; ++l) {
    for (bool gate_up : {true, false}) {
      std::string blob;
      std::vector<uint64_t> shape;
      for (int e = 0; e < kExperts; ++e) {
        for (const std::string* tmpl : gate_up ? std::vector<const std::string*>{&n.gate, &n.up}
                                               : std::vector<const std::string*>{&n.down}) {
          const std::string name = expert_name(l, *tmpl, e);
          expert_tensors.insert(name);
          blob += raw(m, name);
          shape = m.find(name)->info->shape;
        }
      }
      specs.push_back({fused_name(l, gate_up), m.find(expert_name(l, n.down, 0))->info->dtype,
                       {kExperts, gate_up ? 2 * shape[0] : shape[0], shape[1]}});
      blobs.push_back(blob);
    }
  }
  for (const auto& t : m.tensors()) {
    if (expert_tensors.count(t.name())) continue;
    specs.push_back({t.name(), t.info->dtype, t.info->shape});
    blobs.push_back(raw(m, t.name()));
  }
  std::vector<const void*> data;
  for (const auto& b : blobs) data.push_back(b.data());
  fs::create_directories(dir);
  write_safetensors_file(dir / "model.safetensors", specs, data);
  fs::copy_file(src / "config.json", dir / "config.json");
}

class FusedExperts : public ::testing::TestWithParam<std::string> {};

TEST_P(FusedExperts, SlerpAndTiesDifferFromPerExpertAndMatchTheMergeOfAFusedCopy) {
  const std::string family = GetParam();
  test::TempDir dir;
  BaseModelOptions base = test::tiny_family_model(*family_from_name(family), kLayers);
  base.arch.experts = kExperts;
  synth_base_model(dir / "per" / "base", base);
  for (int i = 1; i <= 2; ++i) {
    FineTuneOptions ft;
    ft.seed = 300 + static_cast<uint64_t>(i);
    ft.relative_delta = i == 1 ? 0.2 : 0.05;
    synth_fine_tune(dir / "per" / "base", dir / "per" / ("ft_" + std::to_string(i)), ft);
  }
  for (const char* m : {"base", "ft_1", "ft_2"}) write_fused_copy(dir / "per" / m, dir / "fused" / m, family);

  const std::map<std::string, std::string> recipes = {
      {"slerp",
       "merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n  - model: ft_1\nparameters:\n  t: 0.4\n"
       "dtype: float32\n"},
      {"ties",
       "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n    parameters: {weight: 1.0, density: 0.3}\n"
       "  - model: ft_2\n    parameters: {weight: 0.6, density: 0.5}\ndtype: float32\n"},
  };
  const Names n = names_of(family);
  for (const auto& entry : recipes) {
    const std::string method = entry.first, yaml = entry.second;  // named copies: lambdas below use them
    SCOPED_TRACE(family + " " + method);
    auto run = [&](const fs::path& models, const fs::path& out, bool fused) {
      PlanOptions po;
      po.base_dir = models;
      const MergePlan plan = plan_merge(parse_recipe(yaml, method + ".yml"), po);
      MergeOptions mo;
      mo.out_dir = out;
      mo.fuse_moe_experts = fused;
      mo.hash_inputs = mo.hash_outputs = false;
      run_merge(plan, mo);
    };
    run(dir / "per", dir / ("a_" + method), false);
    run(dir / "per", dir / ("b_" + method), true);
    run(dir / "fused", dir / ("c_" + method), false);
    const Model a = Model::open(dir / ("a_" + method)), b = Model::open(dir / ("b_" + method)),
                c = Model::open(dir / ("c_" + method));
    EXPECT_EQ(a.tensors().size(), b.tensors().size());  // fused mode keeps the per-expert layout
    size_t differing = 0, compared = 0;
    for (int l = 0; l < kLayers; ++l) {
      for (bool gate_up : {true, false}) {
        const std::string fused = raw(c, fused_name(l, gate_up));
        std::string rebuilt;
        for (int e = 0; e < kExperts; ++e) {
          for (const std::string* tmpl : gate_up ? std::vector<const std::string*>{&n.gate, &n.up}
                                                 : std::vector<const std::string*>{&n.down}) {
            const std::string name = expert_name(l, *tmpl, e);
            rebuilt += raw(b, name);
            differing += raw(a, name) != raw(b, name);
            ++compared;
          }
        }
        EXPECT_TRUE(rebuilt == fused) << fused_name(l, gate_up) << ": fused mode differs from the merge of the fused copy";
      }
    }
    // Everything else is merged alike in all three.
    for (const auto& t : c.tensors()) {
      if (t.name().find(".mlp.experts.") != std::string::npos) continue;
      EXPECT_TRUE(raw(c, t.name()) == raw(b, t.name())) << t.name();
      EXPECT_TRUE(raw(a, t.name()) == raw(b, t.name())) << t.name();
    }
    EXPECT_GT(differing, compared / 2) << "per-expert and fused processing should differ for " << method;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FusedExperts, ::testing::Values("mixtral", "qwen3_moe"));

// Linear is element-wise: both modes give the same bytes.
TEST(FusedExpertsLinear, IsTheSameAsPerExpert) {
  test::TempDir dir;
  BaseModelOptions base;
  base.arch.family = ModelFamily::kMixtral;
  base.arch.layers = kLayers;
  base.arch.hidden = 32;
  base.arch.intermediate = 24;
  base.arch.vocab = 48;
  base.arch.experts = kExperts;
  base.arch.moe_intermediate = 8;
  synth_base_model(dir / "base", base);
  FineTuneOptions ft;
  synth_fine_tune(dir / "base", dir / "ft_1", ft);
  const std::string yaml = "merge_method: linear\nmodels:\n  - model: base\n    parameters: {weight: 0.3}\n"
                           "  - model: ft_1\n    parameters: {weight: 0.7}\n";
  for (bool fused : {false, true}) {
    PlanOptions po;
    po.base_dir = dir.path();
    MergeOptions mo;
    mo.out_dir = dir / (fused ? "f" : "p");
    mo.fuse_moe_experts = fused;
    run_merge(plan_merge(parse_recipe(yaml, "linear.yml"), po), mo);
  }
  EXPECT_EQ(test::read_bytes(dir / "f" / "model.safetensors"), test::read_bytes(dir / "p" / "model.safetensors"));
}

}  // namespace
}  // namespace alloy
