// alloy-synth: determinism, layout, and the statistics of fine-tune deltas.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>

#include "alloy/dtype.h"
#include "alloy/error.h"
#include "alloy/kernels.h"
#include "alloy/model.h"
#include "alloy/parallel.h"
#include "alloy/synth.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::TempDir;

alloy::BaseModelOptions small(alloy::ModelFamily family, uint64_t seed) {
  alloy::BaseModelOptions o;
  o.arch.family = family;
  o.arch.layers = 2;
  o.arch.hidden = 64;
  o.arch.intermediate = 96;
  o.arch.experts = 4;
  o.arch.moe_intermediate = 32;
  o.seed = seed;
  return o;
}

std::vector<float> load(const alloy::Model& m, const std::string& name) {
  const auto* t = m.find(name);
  EXPECT_NE(t, nullptr) << name;
  std::vector<float> v(t->info->numel());
  alloy::load_as_f32(t->info->dtype, t->data(), v.size(), v.data());
  return v;
}

TEST(Synth, SameSeedSameBytesOnAnyThreadCountDifferentSeedDiffers) {
  TempDir dir;
  alloy::set_thread_count(1);
  alloy::synth_base_model(dir / "a", small(alloy::ModelFamily::kMoe, 7));
  alloy::set_thread_count(2);
  alloy::synth_base_model(dir / "b", small(alloy::ModelFamily::kMoe, 7));
  alloy::synth_base_model(dir / "c", small(alloy::ModelFamily::kMoe, 8));
  alloy::set_thread_count(0);
  const auto a = alloy::test::read_bytes(dir / "a" / "model.safetensors");
  EXPECT_EQ(a, alloy::test::read_bytes(dir / "b" / "model.safetensors"));
  EXPECT_NE(a, alloy::test::read_bytes(dir / "c" / "model.safetensors"));
  alloy::FineTuneOptions ft;
  alloy::set_thread_count(1);
  alloy::synth_fine_tune(dir / "a", dir / "ft1", ft);
  alloy::set_thread_count(2);
  alloy::synth_fine_tune(dir / "a", dir / "ft2", ft);
  alloy::set_thread_count(0);
  EXPECT_EQ(alloy::test::read_bytes(dir / "ft1" / "model.safetensors"),
            alloy::test::read_bytes(dir / "ft2" / "model.safetensors"));
}

TEST(Synth, LlamaLayoutAndConfig) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kLlama, 1);
  o.arch.tie_embeddings = true;
  o.dtype = alloy::DType::F16;
  alloy::synth_base_model(dir / "m", o);
  const auto m = alloy::Model::open(dir / "m");
  EXPECT_EQ(m.tensors().size(), 1u + 2 * 9 + 1);  // embed, 9 per layer, norm; tied: no lm_head
  EXPECT_EQ(m.find("lm_head.weight"), nullptr);
  EXPECT_EQ(m.find("model.layers.1.self_attn.k_proj.weight")->info->shape, (std::vector<uint64_t>{32, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.down_proj.weight")->info->shape, (std::vector<uint64_t>{64, 96}));
  EXPECT_EQ(m.find("model.norm.weight")->info->dtype, alloy::DType::F16);
  EXPECT_EQ(m.config()["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(m.config()["num_hidden_layers"], 2);
  EXPECT_EQ(m.config()["torch_dtype"], "float16");
  EXPECT_EQ(m.config()["tie_word_embeddings"], true);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(dir / "m" / f)) << f;
  }
  EXPECT_EQ(alloy::architecture_from_config(m.config()).layers, 2);
  // Statistics: norms near 1, matrices with std 1/sqrt(fan_in).
  const auto norm = load(m, "model.norm.weight");
  double mean = 0;
  for (float x : norm) mean += x;
  EXPECT_NEAR(mean / norm.size(), 1.0, 0.03);
  const auto q = load(m, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_NEAR(alloy::norm2(q.size(), q.data()) / std::sqrt(double(q.size())), 1.0 / 8.0, 0.01);
}

TEST(Synth, MoeLayoutAndConfig) {
  TempDir dir;
  alloy::synth_base_model(dir / "m", small(alloy::ModelFamily::kMoe, 1));
  const auto m = alloy::Model::open(dir / "m");
  // embed; per layer 2 norms + 4 attention + router + 4 experts x 3 + shared (3 + gate); norm; lm_head
  EXPECT_EQ(m.tensors().size(), 1u + 2 * (2 + 4 + 1 + 12 + 4) + 2);
  EXPECT_EQ(m.find("model.layers.1.mlp.experts.3.down_proj.weight")->info->shape,
            (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(m.find("model.layers.0.mlp.gate.weight")->info->shape, (std::vector<uint64_t>{4, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.shared_expert_gate.weight")->info->shape, (std::vector<uint64_t>{1, 64}));
  EXPECT_EQ(m.config()["model_type"], "qwen2_moe");
  EXPECT_EQ(m.config()["num_experts"], 4);
  alloy::SynthTensor t;
  ASSERT_TRUE(alloy::classify_tensor("model.layers.1.mlp.experts.3.up_proj.weight", &t));
  EXPECT_EQ(t.component, alloy::Component::kExpertUp);
  EXPECT_EQ(t.layer, 1);
  EXPECT_EQ(t.expert, 3);
  const auto arch = alloy::architecture_from_config(m.config());
  EXPECT_EQ(arch.family, alloy::ModelFamily::kMoe);
  EXPECT_EQ(arch.experts, 4);
  EXPECT_TRUE(arch.shared_expert);
}

TEST(Synth, FineTuneDeltaSizeRankAndIndependence) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kLlama, 3);
  o.dtype = alloy::DType::F32;  // exact deltas: no rounding noise in the rank check
  alloy::synth_base_model(dir / "base", o);
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.05;
  ft.low_rank_fraction = 1.0;
  ft.rank = 3;
  alloy::synth_fine_tune(dir / "base", dir / "lr", ft);
  ft.low_rank_fraction = 0.5;
  ft.seed = 11;
  alloy::synth_fine_tune(dir / "base", dir / "a", ft);
  ft.seed = 12;
  alloy::synth_fine_tune(dir / "base", dir / "b", ft);
  const auto base = alloy::Model::open(dir / "base"), lr = alloy::Model::open(dir / "lr");
  const auto a = alloy::Model::open(dir / "a"), b = alloy::Model::open(dir / "b");
  for (const auto& t : base.tensors()) {
    const auto x = load(base, t.name()), y = load(a, t.name()), z = load(b, t.name());
    std::vector<float> dy(x.size()), dz(x.size());
    alloy::subtract(x.size(), y.data(), x.data(), dy.data());
    alloy::subtract(x.size(), z.data(), x.data(), dz.data());
    const double rel = alloy::norm2(dy.size(), dy.data()) / alloy::norm2(x.size(), x.data());
    EXPECT_NEAR(rel, 0.05, 0.0005) << t.name();
    const double cos = alloy::dot(dy.size(), dy.data(), dz.data()) /
                       (alloy::norm2(dy.size(), dy.data()) * alloy::norm2(dz.size(), dz.data()));
    EXPECT_LT(std::fabs(cos), 6.0 / std::sqrt(double(x.size()))) << t.name() << " siblings' deltas correlate";
  }
  // A purely low-rank delta of rank 3 has exactly three non-negligible singular values.
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const auto x = load(base, name), y = load(lr, name);
  Eigen::MatrixXd d(96, 64);
  for (int i = 0; i < 96; ++i) {
    for (int j = 0; j < 64; ++j) d(i, j) = double(y[i * 64 + j]) - double(x[i * 64 + j]);
  }
  const Eigen::VectorXd s = Eigen::JacobiSVD<Eigen::MatrixXd>(d).singularValues();
  EXPECT_GT(s(2), 1e-2 * s(0));
  EXPECT_LT(s(3), 1e-4 * s(0));
}

TEST(Synth, BadArchitectureIsRefused) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kLlama, 1);
  o.arch.heads = 5;  // 64 is not a multiple of 5
  EXPECT_THROW(alloy::synth_base_model(dir / "m", o), alloy::Error);
  EXPECT_FALSE(fs::exists(dir / "m"));
}

TEST(Synth, SizeTargetIsMet) {
  const auto arch = alloy::architecture_for_size(alloy::ModelFamily::kLlama, 1.0, alloy::DType::BF16);
  double bytes = 0;
  for (const auto& t : alloy::architecture_tensors(arch)) {
    double n = 2;
    for (auto d : t.shape) n *= double(d);
    bytes += n;
  }
  EXPECT_NEAR(bytes / 1e9, 1.0, 0.05);
}

TEST(SynthCli, FamilyAndErrors) {
  TempDir dir;
  int status = -1;
  const std::string synth = "'" + alloy::test::bin("alloy-synth") + "'";
  alloy::test::run_command(synth + " family '" + (dir / "fam").string() +
                               "' --fine-tunes 2 --unrelated 1 --layers 1 --family moe --experts 2 2>&1",
                           &status);
  ASSERT_EQ(status, 0);
  for (const char* sub : {"base", "ft_1", "ft_2", "unrelated_1"}) {
    EXPECT_TRUE(fs::exists(dir / "fam" / sub / "model.safetensors")) << sub;
  }
  std::string out = alloy::test::run_command(synth + " base '" + (dir / "fam").string() + "' 2>&1", &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(out.find("not empty"), std::string::npos) << out;
  out = alloy::test::run_command(synth + " base '" + (dir / "x").string() + "' --family gpt 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("--family"), std::string::npos) << out;
  out = alloy::test::run_command(synth + " base '" + (dir / "x").string() + "' --dtype int4 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("--dtype"), std::string::npos) << out;
  out = alloy::test::run_command(synth + " finetune /nonexistent/base '" + (dir / "y").string() + "' 2>&1", &status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(out.find("/nonexistent/base"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "y"));
}

}  // namespace
