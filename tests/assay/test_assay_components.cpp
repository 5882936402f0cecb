// The assay's components from tensor roles (alloy/core/architecture.h) on real layouts, where the
// old substring rules went wrong: Mixtral's router, Qwen3-Next's linear_attn.norm, the MTP head.
#include <gtest/gtest.h>

#include "alloy/assay/assay.h"
#include "alloy/synth/synth.h"

namespace alloy {
namespace {

ModelArchitecture fixture(ModelFamily family) {
  Architecture arch;
  arch.family = family;
  arch.experts = 4;
  std::vector<std::string> names;
  for (const auto& t : architecture_tensors(arch)) names.push_back(t.name);
  return detect_architecture(architecture_config(arch, DType::BF16), names);
}

TEST(AssayComponents, RolesOnRealLayouts) {
  int layer = -2, expert = -2;
  const ModelArchitecture mixtral = fixture(ModelFamily::kMixtral);
  EXPECT_EQ(assay_component(mixtral, "model.layers.2.block_sparse_moe.gate.weight", &layer, &expert), "router");
  EXPECT_EQ(layer, 2);
  EXPECT_EQ(assay_component(mixtral, "model.layers.1.block_sparse_moe.experts.3.w2.weight", &layer, &expert),
            "experts");
  EXPECT_EQ(expert, 3);
  const ModelArchitecture next = fixture(ModelFamily::kQwen3Next);
  EXPECT_EQ(assay_component(next, "model.layers.0.linear_attn.norm.weight", &layer, &expert), "linear_attention");
  EXPECT_EQ(assay_component(next, "mtp.layers.0.self_attn.q_proj.weight", &layer, &expert), "other");
  EXPECT_EQ(layer, -1) << "the MTP head is not decoder layer 0";
  const ModelArchitecture qwen35 = fixture(ModelFamily::kQwen35Moe);
  EXPECT_EQ(assay_component(qwen35, "model.visual.blocks.0.attn.qkv.weight", &layer, &expert), "other");
  EXPECT_EQ(layer, -1);
  EXPECT_EQ(assay_component(qwen35, "model.language_model.layers.3.mlp.experts.gate_up_proj", &layer, &expert),
            "experts");
  EXPECT_EQ(layer, 3);
}

// On the two original synth families the roles give exactly the old name rules' answers, so the
// assay's outputs do not change.
TEST(AssayComponents, SameAsNameRulesOnTheOriginalFamilies) {
  for (ModelFamily family : {ModelFamily::kLlama, ModelFamily::kMoe}) {
    Architecture arch;
    arch.family = family;
    arch.attention_bias = true;
    std::vector<std::string> names;
    for (const auto& t : architecture_tensors(arch)) names.push_back(t.name);
    const ModelArchitecture detected = detect_architecture(architecture_config(arch, DType::BF16), names);
    ASSERT_FALSE(detected.inferred());
    for (const auto& name : names) {
      int l1, e1, l2, e2;
      EXPECT_EQ(assay_component(detected, name, &l1, &e1), assay_component(name, &l2, &e2)) << name;
      EXPECT_EQ(l1, l2) << name;
      EXPECT_EQ(e1, e2) << name;
    }
  }
}

}  // namespace
}  // namespace alloy
