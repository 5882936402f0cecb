// The architecture model (alloy/core/architecture.h): the compiled-in definitions, detection from
// config.json and names, the inference fallback, and roles on every synth family's real layout.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "alloy/core/architecture.h"
#include "alloy/core/error.h"
#include "alloy/synth/synth.h"

namespace alloy {
namespace {

// The names and config of a synth family at its default (small) sizes.
struct Fixture {
  nlohmann::json config;
  std::vector<std::string> names;
};

Fixture fixture(const std::string& family, bool tie = false) {
  Architecture arch;
  arch.family = *family_from_name(family);
  arch.experts = 4;
  arch.tie_embeddings = tie;
  Fixture f;
  f.config = architecture_config(arch, DType::BF16);
  for (const auto& t : architecture_tensors(arch)) f.names.push_back(t.name);
  return f;
}

TEST(Architecture, EveryDefinitionParsesAndHasAUniqueFamily) {
  const auto& defs = architecture_definitions();
  ASSERT_GE(defs.size(), 15u);
  std::set<std::string> families;
  for (const auto& def : defs) {
    EXPECT_TRUE(families.insert(def.family).second) << def.family;
    EXPECT_FALSE(def.architectures.empty()) << def.family;
    EXPECT_FALSE(def.layer.empty()) << def.family;
  }
  for (const char* f : {"llama", "mistral", "gemma2", "gemma3", "phi3", "mixtral", "qwen2", "qwen3", "qwen3_moe",
                        "qwen3_next", "qwen3_5_moe", "gpt_oss", "deepseek_v3", "llama4", "granite_hybrid"}) {
    EXPECT_NE(find_architecture_def(f), nullptr) << f;
  }
}

TEST(Architecture, BadDefinitionsAreRefusedNamingTheField) {
  const nlohmann::json good = {{"family", "x"},
                               {"title", "X"},
                               {"layer_prefixes", {"model.layers."}},
                               {"layer", {{{"name", "mlp.up_proj.weight"}, {"role", "mlp.up"}}}}};
  EXPECT_NO_THROW(parse_architecture_def(good, "x.json"));
  const auto refused = [&](nlohmann::json j, const std::string& needle) {
    try {
      parse_architecture_def(j, "x.json");
      ADD_FAILURE() << "accepted: " << j.dump();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kBadConfig);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  nlohmann::json j = good;
  j["layer"][0]["role"] = "mlp.sideways";
  refused(j, "unknown role 'mlp.sideways'");
  j = good;
  j["layer"][0]["view"] = "diagonal";
  refused(j, "unknown view 'diagonal'");
  j = good;
  j["layer_prefixes"] = {"model.layers"};
  refused(j, "must end with '.'");
  j = good;
  j["colour"] = "red";
  refused(j, "unknown key 'colour'");
  j = good;
  j["layer_lists"] = {{"layer_types", "sometimes"}};
  refused(j, "per_layer, indices or dense_prefix");
}

// Every tensor of every synth family is named by its family's definition, with the right layers.
TEST(Architecture, EverySynthFamilyIsDetectedAndFullyKnown) {
  const std::map<std::string, std::string> expected = {
      {"llama", "llama"},       {"moe", "qwen2_moe"},       {"mistral", "mistral"},
      {"gemma2", "gemma2"},     {"phi3", "phi3"},           {"mixtral", "mixtral"},
      {"qwen3", "qwen3"},       {"qwen3_moe", "qwen3_moe"}, {"qwen3_next", "qwen3_next"},
      {"qwen3_5_moe", "qwen3_5_moe"}, {"gpt_oss", "gpt_oss"}, {"deepseek_v3", "deepseek_v3"}};
  for (const auto& family : family_names()) {
    SCOPED_TRACE(family);
    const Fixture f = fixture(family);
    const ModelArchitecture arch = detect_architecture(f.config, f.names);
    ASSERT_FALSE(arch.inferred()) << arch.notice();
    EXPECT_EQ(arch.family(), expected.at(family));
    EXPECT_EQ(arch.layer_count(), 4);
    EXPECT_EQ(arch.summary()["unknown_tensors"], 0) << arch.summary().dump();
    for (int l = 0; l < 4; ++l) EXPECT_FALSE(arch.layer_suffixes(l).empty()) << l;
    for (const auto& name : f.names) {
      const TensorPlace p = arch.classify(name);
      EXPECT_TRUE(p.known) << name;
      EXPECT_NE(p.role == TensorRole::kOther && p.submodel.empty(), true) << name;
    }
  }
}

TEST(Architecture, LanguageModelPrefixTextConfigAndSubModels) {
  const Fixture f = fixture("qwen3_5_moe");
  const ModelArchitecture arch = detect_architecture(f.config, f.names);
  EXPECT_EQ(arch.layer_prefix(), "model.language_model.layers.");
  EXPECT_EQ(arch.text_config(), "text_config");
  EXPECT_EQ(arch.layer_count(), 4);
  const std::vector<std::string> types = {"linear_attention", "linear_attention", "linear_attention",
                                          "full_attention"};
  EXPECT_EQ(arch.layer_types(), types);
  EXPECT_EQ(arch.layer_mixer(0), "linear_attention");
  EXPECT_EQ(arch.layer_mixer(3), "attention");
  // The vision tower and the MTP head are sub-models, never decoder layers.
  const TensorPlace vision = arch.classify("model.visual.blocks.1.attn.qkv.weight");
  EXPECT_EQ(vision.submodel, "vision");
  EXPECT_EQ(vision.layer, 1);
  int layer;
  std::string suffix;
  EXPECT_FALSE(arch.split_layer("model.visual.blocks.1.attn.qkv.weight", &layer, &suffix));
  const TensorPlace mtp = arch.classify("mtp.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(mtp.submodel, "mtp");
  EXPECT_FALSE(arch.split_layer("mtp.layers.0.self_attn.q_proj.weight", &layer, &suffix));
  EXPECT_EQ(arch.summary()["submodels"]["vision"], 2 * 12 + 3);
  // The merger is the projector, a module of its own in a recipe's `modules:` (mergekit's split).
  EXPECT_EQ(arch.classify("model.visual.merger.linear_fc1.weight").submodel, "projector");
  EXPECT_EQ(arch.summary()["submodels"]["projector"], 6);
  const std::vector<std::string> modules = {"text_decoder", "multi_modal_projector", "vision_tower"};
  EXPECT_EQ(arch.definition()->module_names(), modules);
  // Fused experts and the gated q are views of their roles.
  const TensorPlace gate_up = arch.classify("model.language_model.layers.2.mlp.experts.gate_up_proj");
  EXPECT_EQ(gate_up.role, TensorRole::kExpertGateUp);
  EXPECT_EQ(gate_up.view, TensorView::kExpertsFusedGateUp);
  const TensorPlace q = arch.classify("model.language_model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(q.role, TensorRole::kAttentionQ);
  EXPECT_EQ(q.view, TensorView::kGatedQ);
  EXPECT_EQ(arch.tied_to("lm_head.weight"), "model.language_model.embed_tokens.weight");
}

TEST(Architecture, RolesThatSubstringMatchingGotWrong) {
  const Fixture mixtral = fixture("mixtral");
  const ModelArchitecture m = detect_architecture(mixtral.config, mixtral.names);
  EXPECT_EQ(m.classify("model.layers.0.block_sparse_moe.gate.weight").role, TensorRole::kRouter);
  const TensorPlace w2 = m.classify("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  EXPECT_EQ(w2.role, TensorRole::kExpertDown);
  EXPECT_EQ(w2.expert, 3);
  EXPECT_EQ(w2.layer, 1);
  const Fixture next = fixture("qwen3_next");
  const ModelArchitecture n = detect_architecture(next.config, next.names);
  EXPECT_EQ(n.classify("model.layers.0.linear_attn.norm.weight").role, TensorRole::kLinearAttentionNorm);
  EXPECT_EQ(n.classify("model.layers.0.mlp.shared_expert_gate.weight").role, TensorRole::kSharedExpertRouter);
  EXPECT_EQ(n.classify("mtp.layers.0.input_layernorm.weight").submodel, "mtp");
  EXPECT_EQ(n.layer_count(), 4);
  const Fixture gpt = fixture("gpt_oss");
  const ModelArchitecture g = detect_architecture(gpt.config, gpt.names);
  EXPECT_EQ(g.classify("model.layers.0.mlp.router.bias").role, TensorRole::kRouterBias);
  EXPECT_EQ(g.classify("model.layers.0.mlp.experts.gate_up_proj").view, TensorView::kExpertsInterleavedGateUp);
  const Fixture phi = fixture("phi3");
  const ModelArchitecture p = detect_architecture(phi.config, phi.names);
  EXPECT_EQ(p.classify("model.layers.0.self_attn.qkv_proj.weight").view, TensorView::kFusedQkv);
  EXPECT_EQ(p.classify("model.layers.0.mlp.gate_up_proj.weight").view, TensorView::kFusedGateUp);
}

TEST(Architecture, UnknownModelsFallBackToNamesWithANotice) {
  Fixture f = fixture("qwen3_5_moe");
  f.config["architectures"] = {"FancyNewForConditionalGeneration"};
  f.config["model_type"] = "fancy";
  f.config["text_config"]["model_type"] = "fancy_text";
  const ModelArchitecture arch = detect_architecture(f.config, f.names);
  EXPECT_TRUE(arch.inferred());
  EXPECT_NE(arch.notice().find("FancyNewForConditionalGeneration"), std::string::npos) << arch.notice();
  EXPECT_NE(arch.notice().find("model.language_model.layers."), std::string::npos) << arch.notice();
  EXPECT_EQ(arch.layer_prefix(), "model.language_model.layers.");
  EXPECT_EQ(arch.layer_count(), 4);  // text_config's num_hidden_layers
  EXPECT_EQ(arch.classify("model.language_model.layers.0.mlp.gate.weight").role, TensorRole::kRouter);

  // A lone file without config: the prefix with the most tensors wins.
  const std::vector<std::string> names = {"encoder.layers.0.fc.weight", "decoder.layers.0.fc.weight",
                                          "decoder.layers.1.fc.weight", "decoder.layers.1.norm.weight"};
  const ModelArchitecture bare = detect_architecture(nlohmann::json::object(), names);
  EXPECT_TRUE(bare.inferred());
  EXPECT_EQ(bare.layer_prefix(), "decoder.layers.");
  EXPECT_EQ(bare.layer_count(), 2);
  EXPECT_EQ(bare.layer_suffixes(1), (std::vector<std::string>{"fc.weight", "norm.weight"}));

  // A known config whose tensors are elsewhere is inferred, and says why.
  const std::vector<std::string> moved = {"transformer.layers.0.mlp.up_proj.weight"};
  const ModelArchitecture odd = detect_architecture({{"architectures", {"LlamaForCausalLM"}}}, moved);
  EXPECT_TRUE(odd.inferred());
  EXPECT_EQ(odd.layer_prefix(), "transformer.layers.");
  EXPECT_NE(odd.notice().find("no tensor is under its layer prefix"), std::string::npos) << odd.notice();
}

TEST(Architecture, HostileLayerIndicesAreNotLayers) {
  const std::vector<std::string> names = {"model.layers.0.a.weight", "model.layers.99999999.a.weight",
                                          "model.layers.x.a.weight", "model.layers.1.", "model.layers.2"};
  const ModelArchitecture arch = detect_architecture(nlohmann::json::object(), names);
  EXPECT_EQ(arch.layer_count(), 1);
  int layer;
  std::string suffix;
  EXPECT_FALSE(arch.split_layer("model.layers.99999999.a.weight", &layer, &suffix));
}

}  // namespace
}  // namespace alloy
