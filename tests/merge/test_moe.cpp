// alloy-moe: mixtures of experts assembled from dense alloy-synth models (Llama and Qwen3 layouts).
// Every expert of the output must be its source model's MLP bit for bit, every other tensor the
// base's, the routers must follow the gate mode (hidden: the exact rows worked out here from the
// given hidden states), the config must carry the MoE fields, and alloy's own reader must detect
// the output as Mixtral / Qwen2-MoE / Qwen3-MoE.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "alloy/core/architecture.h"
#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
#include "alloy/merge/moe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 3, kHidden = 32;

// base, ft_1, ft_2, ft_3 of one dense family under `dir`.
void make_family(const fs::path& dir, ModelFamily family) {
  BaseModelOptions base;
  base.arch.family = family;
  base.arch.layers = kLayers;
  base.arch.hidden = kHidden;
  base.arch.intermediate = 24;
  base.arch.heads = 4;
  base.arch.kv_heads = 2;
  base.arch.vocab = 48;
  synth_base_model(dir / "base", base);
  for (int i = 1; i <= 3; ++i) {
    FineTuneOptions ft;
    ft.seed = 40 + static_cast<uint64_t>(i);
    ft.relative_delta = 0.1;
    synth_fine_tune(dir / "base", dir / ("ft_" + std::to_string(i)), ft);
  }
}

std::string bytes_of(const Model& m, const std::string& name) {
  const ModelTensor* t = m.find(name);
  if (t == nullptr) return "<missing " + name + ">";
  return std::string(reinterpret_cast<const char*>(t->data()), t->info->nbytes());
}

std::vector<float> floats_of(const Model& m, const std::string& name) {
  const ModelTensor* t = m.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> out(t->info->numel());
  load_as_f32(t->info->dtype, t->data(), out.size(), out.data());
  return out;
}

MoeResult build(const fs::path& dir, const std::string& yaml, const fs::path& out, uint64_t seed = 0,
                const fs::path& hidden_states = {}) {
  MoeOptions options;
  options.out_dir = out;
  options.base_dir = dir;
  options.seed = seed;
  options.hidden_states = hidden_states;
  return build_moe(parse_moe_recipe(yaml, "moe.yml"), options);
}

class MoeFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    make_family(*dir_ / "llama", ModelFamily::kLlama);
    make_family(*dir_ / "qwen3", ModelFamily::kQwen3);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static fs::path llama() { return (*dir_) / "llama"; }
  static fs::path qwen3() { return (*dir_) / "qwen3"; }
  static test::TempDir* dir_;
};
test::TempDir* MoeFixture::dir_ = nullptr;

// Every non-MLP tensor of the base is in the output unchanged; every output tensor not an expert,
// router, shared expert or added bias is one of the base's.
void expect_base_parts(const Model& base, const Model& out, const std::set<std::string>& added) {
  for (const auto& t : base.tensors()) {
    if (t.name().find(".mlp.") != std::string::npos) continue;
    EXPECT_EQ(bytes_of(out, t.name()), bytes_of(base, t.name())) << t.name();
  }
  for (const auto& t : out.tensors()) {
    const bool moe_part = t.name().find(".mlp.") != std::string::npos ||
                          t.name().find(".block_sparse_moe.") != std::string::npos || added.count(t.name());
    if (!moe_part) {
      EXPECT_NE(base.find(t.name()), nullptr) << t.name() << " is neither the base's nor a MoE part";
    }
  }
}

TEST_F(MoeFixture, MixtralFromLlamaRandomGate) {
  test::TempDir out;
  const std::string yaml =
      "base_model: base\ngate_mode: random\nexperts:\n  - source_model: ft_1\n  - source_model: ft_2\n"
      "  - source_model: ft_3\n  - source_model: base\n";
  const MoeResult r = build(llama(), yaml, out / "moe", 7);
  EXPECT_EQ(r.architecture, MoeArchitecture::kMixtral);
  const Model m = Model::open(out / "moe");
  const Model base = Model::open(llama() / "base");
  const std::vector<std::string> sources = {"ft_1", "ft_2", "ft_3", "base"};
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (size_t e = 0; e < sources.size(); ++e) {
      const Model src = Model::open(llama() / sources[e]);
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      EXPECT_EQ(bytes_of(m, x + "w1.weight"), bytes_of(src, p + "mlp.gate_proj.weight"));
      EXPECT_EQ(bytes_of(m, x + "w2.weight"), bytes_of(src, p + "mlp.down_proj.weight"));
      EXPECT_EQ(bytes_of(m, x + "w3.weight"), bytes_of(src, p + "mlp.up_proj.weight"));
    }
    EXPECT_EQ(m.find(p + "mlp.gate_proj.weight"), nullptr);
    const ModelTensor* gate = m.find(p + "block_sparse_moe.gate.weight");
    ASSERT_NE(gate, nullptr);
    EXPECT_EQ(gate->info->shape, (std::vector<uint64_t>{4, kHidden}));
    EXPECT_EQ(gate->info->dtype, DType::BF16);  // the base's torch_dtype
  }
  expect_base_parts(base, m, {});
  // random: N(0, 1); all layers together are 3 x 4 x 32 = 384 draws.
  double sum = 0, squares = 0;
  size_t n = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (float v : floats_of(m, "model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight")) {
      sum += v, squares += double(v) * v, ++n;
    }
  }
  EXPECT_NEAR(sum / n, 0.0, 0.2);
  EXPECT_NEAR(std::sqrt(squares / n), 1.0, 0.15);
  // Layers differ from each other.
  EXPECT_NE(bytes_of(m, "model.layers.0.block_sparse_moe.gate.weight"),
            bytes_of(m, "model.layers.1.block_sparse_moe.gate.weight"));

  const auto& c = r.config;
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"MixtralForCausalLM"}));
  EXPECT_EQ(c["model_type"], "mixtral");
  EXPECT_EQ(c["num_local_experts"], 4);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["intermediate_size"], 24);
  EXPECT_EQ(c["hidden_size"], kHidden);
  EXPECT_TRUE(c["sliding_window"].is_null());
  EXPECT_EQ(m.config(), c);
  const ModelArchitecture a = detect_architecture(m);
  EXPECT_EQ(a.family(), "mixtral");
  EXPECT_FALSE(a.inferred()) << a.notice();
  EXPECT_EQ(a.summary()["experts"], 4);
  // Tokenizer files from the base, the recipe, a card naming every source.
  EXPECT_EQ(test::read_bytes(out / "moe" / "tokenizer.json"), test::read_bytes(llama() / "base" / "tokenizer.json"));
  EXPECT_EQ(test::read_bytes(out / "moe" / "mergekit_moe_config.yml"), yaml);
  const std::string card = test::read_bytes(out / "moe" / "README.md");
  for (const char* s : {"- \"base\"", "- \"ft_1\"", "- \"ft_2\"", "- \"ft_3\"", "moe"}) {
    EXPECT_NE(card.find(s), std::string::npos) << s;
  }
}

TEST_F(MoeFixture, RandomGatesAreSeededAndUniformRandomIsLinearInit) {
  test::TempDir out;
  const std::string experts = "experts:\n  - source_model: ft_1\n  - source_model: ft_2\n";
  build(llama(), "base_model: base\ngate_mode: random\n" + experts, out / "a", 1);
  build(llama(), "base_model: base\ngate_mode: random\n" + experts, out / "b", 1);
  build(llama(), "base_model: base\ngate_mode: random\n" + experts, out / "c", 2);
  EXPECT_EQ(test::read_bytes(out / "a" / "model.safetensors"), test::read_bytes(out / "b" / "model.safetensors"));
  EXPECT_NE(test::read_bytes(out / "a" / "model.safetensors"), test::read_bytes(out / "c" / "model.safetensors"));

  build(llama(), "base_model: base\ngate_mode: uniform_random\ndtype: float32\n" + experts, out / "u", 5);
  const Model u = Model::open(out / "u");
  const double bound = 1.0 / std::sqrt(double(kHidden));  // torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
  double lo = 1, hi = -1, sum = 0;
  size_t n = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (float v : floats_of(u, "model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight")) {
      EXPECT_LE(std::fabs(v), bound);
      lo = std::min<double>(lo, v), hi = std::max<double>(hi, v), sum += v, ++n;
    }
  }
  EXPECT_LT(lo, -0.9 * bound);
  EXPECT_GT(hi, 0.9 * bound);
  EXPECT_NEAR(sum / n, 0.0, 0.1 * bound);
  // dtype float32: bf16 experts are widened exactly.
  const Model ft1 = Model::open(llama() / "ft_1");
  EXPECT_EQ(floats_of(u, "model.layers.1.block_sparse_moe.experts.0.w2.weight"),
            floats_of(ft1, "model.layers.1.mlp.down_proj.weight"));
  EXPECT_EQ(u.find("model.layers.1.block_sparse_moe.experts.0.w2.weight")->info->dtype, DType::F32);
}

// The hidden states file: experts.E.positive [layers, prompts, hidden] (and .negative), values
// chosen here; the router row of expert E in layer l is normalize(mean_p pos - mean_n neg).
TEST_F(MoeFixture, Qwen3MoeFromQwen3HiddenGateHasTheExactRows) {
  test::TempDir out;
  const std::string yaml =
      "base_model: base\n"
      "gate_mode: hidden\n"
      "dtype: float32\n"
      "experts_per_token: 1\n"
      "experts:\n"
      "  - source_model: ft_1\n"
      "    positive_prompts: [\"code\", \"python\"]\n"
      "    negative_prompts: [\"poetry\"]\n"
      "  - source_model: ft_2\n"
      "    positive_prompts: [\"poetry\"]\n";
  // Values: a different pattern per tensor, layer, prompt and dimension.
  auto value = [](int tensor, int l, int p, int h) {
    return static_cast<float>(std::sin(0.37 * (tensor + 1) * (h + 1) + 1.3 * l + 0.7 * p) * (1 + 0.25 * p));
  };
  std::vector<std::vector<float>> data = {std::vector<float>(kLayers * 2 * kHidden), std::vector<float>(kLayers * kHidden),
                                          std::vector<float>(kLayers * kHidden)};
  const int prompts[3] = {2, 1, 1};
  for (int t = 0; t < 3; ++t) {
    for (int l = 0; l < kLayers; ++l) {
      for (int p = 0; p < prompts[t]; ++p) {
        for (int h = 0; h < kHidden; ++h) data[t][(l * prompts[t] + p) * kHidden + h] = value(t, l, p, h);
      }
    }
  }
  const std::vector<TensorSpec> specs = {{"experts.0.positive", DType::F32, {kLayers, 2, kHidden}},
                                         {"experts.0.negative", DType::F32, {kLayers, 1, kHidden}},
                                         {"experts.1.positive", DType::F32, {kLayers, 1, kHidden}}};
  write_safetensors_file(out / "hidden.safetensors", specs, {data[0].data(), data[1].data(), data[2].data()});
  const MoeResult r = build(qwen3(), yaml, out / "moe", 0, out / "hidden.safetensors");
  EXPECT_EQ(r.architecture, MoeArchitecture::kQwen3Moe);
  const Model m = Model::open(out / "moe");
  for (int l = 0; l < kLayers; ++l) {
    const std::vector<float> gate = floats_of(m, "model.layers." + std::to_string(l) + ".mlp.gate.weight");
    ASSERT_EQ(gate.size(), size_t(2 * kHidden));
    for (int e = 0; e < 2; ++e) {
      std::vector<double> row(kHidden);
      double norm2 = 0;
      for (int h = 0; h < kHidden; ++h) {
        row[h] = e == 0 ? (double(value(0, l, 0, h)) + double(value(0, l, 1, h))) / 2.0 - double(value(1, l, 0, h))
                        : double(value(2, l, 0, h));
        norm2 += row[h] * row[h];
      }
      for (int h = 0; h < kHidden; ++h) {
        EXPECT_EQ(gate[e * kHidden + h], static_cast<float>(row[h] / std::sqrt(norm2))) << l << " " << e << " " << h;
      }
    }
  }
  const Model base = Model::open(qwen3() / "base"), ft2 = Model::open(qwen3() / "ft_2");
  EXPECT_EQ(floats_of(m, "model.layers.2.mlp.experts.1.up_proj.weight"), floats_of(ft2, "model.layers.2.mlp.up_proj.weight"));
  EXPECT_EQ(floats_of(m, "model.layers.0.self_attn.q_norm.weight"), floats_of(base, "model.layers.0.self_attn.q_norm.weight"));
  EXPECT_EQ(r.config["model_type"], "qwen3_moe");
  EXPECT_EQ(r.config["architectures"], nlohmann::json::array({"Qwen3MoeForCausalLM"}));
  EXPECT_EQ(r.config["num_experts"], 2);
  EXPECT_EQ(r.config["num_experts_per_tok"], 1);
  EXPECT_EQ(r.config["moe_intermediate_size"], 24);
  EXPECT_EQ(r.config["decoder_sparse_step"], 1);
  EXPECT_EQ(r.config["norm_topk_prob"], true);
  EXPECT_EQ(r.config["torch_dtype"], "float32");
  const ModelArchitecture a = detect_architecture(m);
  EXPECT_EQ(a.family(), "qwen3_moe");
  EXPECT_FALSE(a.inferred()) << a.notice();

  // A missing or misshapen hidden-states tensor is named.
  write_safetensors_file(out / "bad.safetensors", {specs[0], specs[2]}, {data[0].data(), data[2].data()});
  try {
    build(qwen3(), yaml, out / "x", 0, out / "bad.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("experts.0.negative"), std::string::npos) << e.what();
  }
  write_safetensors_file(out / "bad2.safetensors", {specs[0], specs[1], {"experts.1.positive", DType::F32, {kLayers, 1, kHidden / 2}}},
                         {data[0].data(), data[1].data(), data[2].data()});
  try {
    build(qwen3(), yaml, out / "x", 0, out / "bad2.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kShapeMismatch);
    EXPECT_NE(std::string(e.what()).find("experts.1.positive"), std::string::npos) << e.what();
  }
  // hidden without the file: told how to give it.
  EXPECT_THROW(build(qwen3(), yaml, out / "x"), Error);
  EXPECT_FALSE(fs::exists(out / "x"));
}

TEST_F(MoeFixture, QwenMoeWithSharedExpertFromLlama) {
  test::TempDir out;
  const std::string yaml =
      "base_model: base\ngate_mode: uniform_random\narchitecture: qwen\nexperts:\n"
      "  - source_model: ft_1\n  - source_model: ft_2\nshared_experts:\n  - source_model: ft_3\n"
      "    residual_scale: 0.5\n";
  const MoeResult r = build(llama(), yaml, out / "moe", 3);
  EXPECT_EQ(r.architecture, MoeArchitecture::kQwen2Moe);
  const Model m = Model::open(out / "moe");
  const Model base = Model::open(llama() / "base"), ft1 = Model::open(llama() / "ft_1"), ft3 = Model::open(llama() / "ft_3");
  std::set<std::string> added;
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(bytes_of(m, p + "mlp.experts.0.gate_proj.weight"), bytes_of(ft1, p + "mlp.gate_proj.weight"));
    EXPECT_EQ(bytes_of(m, p + "mlp.shared_expert.up_proj.weight"), bytes_of(ft3, p + "mlp.up_proj.weight"));
    // residual_scale halves the shared expert's down_proj (exact in bf16).
    const auto down = floats_of(m, p + "mlp.shared_expert.down_proj.weight");
    const auto source = floats_of(ft3, p + "mlp.down_proj.weight");
    ASSERT_EQ(down.size(), source.size());
    for (size_t i = 0; i < down.size(); ++i) ASSERT_EQ(down[i], source[i] * 0.5f);
    EXPECT_EQ(m.find(p + "mlp.shared_expert_gate.weight")->info->shape, (std::vector<uint64_t>{1, kHidden}));
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const std::string bias = p + "self_attn." + proj + ".bias";
      added.insert(bias);
      const auto b = floats_of(m, bias);
      EXPECT_EQ(b.size(), base.find(p + "self_attn." + proj + ".weight")->info->shape[0]);
      for (float v : b) EXPECT_EQ(v, 0.0f);
    }
  }
  expect_base_parts(base, m, added);
  EXPECT_EQ(r.config["model_type"], "qwen2_moe");
  EXPECT_EQ(r.config["num_experts"], 2);
  EXPECT_EQ(r.config["shared_expert_intermediate_size"], 24);
  EXPECT_EQ(r.config["moe_intermediate_size"], 24);
  const ModelArchitecture a = detect_architecture(m);
  EXPECT_EQ(a.family(), "qwen2_moe");
  EXPECT_FALSE(a.inferred()) << a.notice();
}

// Recipe errors name the line (and column) of what is wrong.
TEST(MoeRecipe, ErrorsNameTheLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"base_model: b\nexperts:\n  - source_model: a\n    positive_prompt: [x]\n", "moe.yml:4:5: unknown key"},
      {"base_model: b\ngate_mode: hiden\nexperts:\n  - source_model: a\n", "moe.yml:2:12: unknown gate_mode"},
      {"base_model: b\nexperts:\n  - source_model: a\n    positive_prompts: [x]\n  - source_model: c\n",
       "moe.yml:5:5: expert 1 has no positive_prompts"},
      {"base_model: b\ngate_mode: random\nexperts_per_token: 3\nexperts:\n  - source_model: a\n  - source_model: c\n",
       "moe.yml:3:20: experts_per_token is 3"},
      {"base_model: b\ngate_mode: random\nexperts:\n  - source_model: a\n  - source_model: a\n",
       "moe.yml:4:3: every expert is the same model"},
      {"base_model: b\ngate_mode: hidden\nexperts:\n  - source_model: a\n    positive_prompts: [x]\n"
       "  - source_model: c\n    positive_prompts: [x]\n",
       "moe.yml:4:3: every expert has the same positive and negative prompts"},
      {"base_model: b\ndtype: int8\ngate_mode: random\nexperts:\n  - source_model: a\n", "moe.yml:2:8: dtype 'int8'"},
      {"base_model: b\ngate_mode: random\nexperts:\n  - positive_prompts: [x]\n", "moe.yml:4:5: experts entry 0 has no source_model"},
      {"gate_mode: random\nexperts:\n  - source_model: a\n", "no base_model"},
      {"base_model: b\nexperts: [\n", "moe.yml:"},
  };
  for (const auto& [yaml, expected] : cases) {
    try {
      parse_moe_recipe(yaml, "moe.yml");
      ADD_FAILURE() << "accepted:\n" << yaml;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kRecipe);
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what() << "\nexpected: " << expected;
    }
  }
  // The same model for every expert is allowed with mergekit-moe's flag.
  EXPECT_NO_THROW(parse_moe_recipe("base_model: b\ngate_mode: random\nexperts:\n  - source_model: a\n  - source_model: a\n",
                                   "moe.yml", true));
}

TEST_F(MoeFixture, RefusesWhatItCannotWrite) {
  test::TempDir out;
  // cheap_embed needs a tokenizer.
  try {
    build(llama(), "base_model: base\ngate_mode: cheap_embed\nexperts:\n  - source_model: ft_1\n    positive_prompts: [a]\n"
                   "  - source_model: ft_2\n    positive_prompts: [b]\n",
          out / "x");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cheap_embed"), std::string::npos) << e.what();
  }
  // A shared expert without prompts on Llama inputs is DeepSeek MoE in mergekit-moe.
  try {
    build(llama(), "base_model: base\ngate_mode: random\nexperts:\n  - source_model: ft_1\n  - source_model: ft_2\n"
                   "shared_experts:\n  - source_model: ft_3\n",
          out / "x");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DeepSeek"), std::string::npos) << e.what();
  }
  // Qwen3 inputs cannot make a Mixtral.
  try {
    build(qwen3(), "base_model: base\ngate_mode: random\narchitecture: mixtral\nexperts:\n  - source_model: ft_1\n"
                   "  - source_model: ft_2\n",
          out / "x");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moe.yml:3:15"), std::string::npos) << e.what();
  }
  // Mixed families.
  EXPECT_THROW(build(llama(), "base_model: base\ngate_mode: random\nexperts:\n  - source_model: ft_1\n  - source_model: " +
                                  (qwen3() / "ft_1").string() + "\n",
                     out / "x"),
               Error);
  EXPECT_FALSE(fs::exists(out / "x"));
}

TEST_F(MoeFixture, ToolRunsTheExampleRecipe) {
  test::TempDir out;
  int status = -1;
  const std::string recipe = std::string(ALLOY_SOURCE_DIR) + "/recipes/moe/mixtral_random.yml";
  const std::string cd = "cd '" + llama().string() + "' && ";
  test::run_command(cd + test::bin("alloy-moe") + " '" + recipe + "' '" + (out / "a").string() + "' --random-seed 4 -q 2>&1",
                    &status);
  ASSERT_EQ(status, 0);
  test::run_command(cd + test::bin("alloy-moe") + " '" + recipe + "' '" + (out / "b").string() + "' --random-seed 4 -q 2>&1",
                    &status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(test::read_bytes(out / "a" / "model.safetensors"), test::read_bytes(out / "b" / "model.safetensors"));
  EXPECT_EQ(detect_architecture(Model::open(out / "a")).family(), "mixtral");
  // A bad recipe: exit 2, one line naming the file and line.
  std::ofstream(out / "bad.yml") << "base_model: base\nexperts:\n  - source_model: ft_1\n    bogus: 1\n";
  const std::string message =
      test::run_command(cd + test::bin("alloy-moe") + " '" + (out / "bad.yml").string() + "' '" + (out / "c").string() + "' 2>&1",
                        &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(message.find("bad.yml:4:5: unknown key 'bogus'"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(out / "c"));
}

}  // namespace
}  // namespace alloy
