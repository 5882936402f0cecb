// alloy-synth: the generator's stream, determinism, layout of both families, initial statistics,
// fine-tune deltas (size, rank, energy split, independence), sizes, records, and the CLI.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/model.h"
#include "alloy/core/parallel.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::TempDir;
using nlohmann::json;

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
  if (!t) return {};
  std::vector<float> v(t->info->numel());
  alloy::load_as_f32(t->info->dtype, t->data(), v.size(), v.data());
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}
double norm(const std::vector<float>& a) { return std::sqrt(dot(a, a)); }
std::vector<float> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = float(double(a[i]) - double(b[i]));
  return d;
}

// FNV-1a of every tensor's bytes in the model's tensor order (independent of the header layout).
uint64_t tensor_bytes_hash(const fs::path& dir) {
  const auto m = alloy::Model::open(dir);
  uint64_t h = 0xCBF29CE484222325ull;
  for (const auto& t : m.tensors()) {
    const uint8_t* p = t.data();
    for (uint64_t i = 0; i < t.info->nbytes(); ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  }
  return h;
}

json read_json(const fs::path& path) { return json::parse(alloy::read_text_file(path)); }

struct ThreadCount {  // restores the default thread count at scope exit
  explicit ThreadCount(int n) { alloy::set_thread_count(n); }
  ~ThreadCount() { alloy::set_thread_count(0); }
};

TEST(SynthRng, GoldenValuesPinTheStreamOnEveryPlatform) {
  // lib/synth/rng.cpp version 1; these bits must never change (models would change).
  std::vector<float> v(6);
  alloy::synth_normal(1, alloy::synth_stream_id("alloy"), 0, v.size(), v.data());
  const uint32_t expected[6] = {0x3EFA3A86u, 0x3F33DBEDu, 0xBED9B6DFu, 0x3E8F688Bu, 0x3F24E592u, 0xBD8B3473u};
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(alloy::float_to_bits(v[i]), expected[i]) << i << ": " << v[i];
  EXPECT_EQ(alloy::synth_stream_id(""), 0xCBF29CE484222325ull);
  EXPECT_EQ(alloy::synth_stream_id("a"), 0xAF63DC4C8601EC8Cull);
}

TEST(SynthRng, AnySplitAndThreadCountGivesTheSameValues) {
  const size_t n = 3 * alloy::kDefaultGrain + 17;
  std::vector<float> whole(n), pieces(n), threaded(n);
  {
    ThreadCount one(1);
    alloy::synth_normal(5, 9, 0, n, whole.data(), 0.5f, 1.0f);
  }
  // Odd offsets and lengths split Box-Muller pairs.
  const size_t cuts[] = {0, 1, 4, 1001, 40000, n};
  for (size_t c = 0; c + 1 < std::size(cuts); ++c) {
    alloy::synth_normal(5, 9, cuts[c], cuts[c + 1] - cuts[c], pieces.data() + cuts[c], 0.5f, 1.0f);
  }
  {
    ThreadCount two(2);
    alloy::synth_normal(5, 9, 0, n, threaded.data(), 0.5f, 1.0f);
  }
  EXPECT_EQ(0, std::memcmp(whole.data(), pieces.data(), n * 4));
  EXPECT_EQ(0, std::memcmp(whole.data(), threaded.data(), n * 4));
  std::vector<float> other(n);
  alloy::synth_normal(6, 9, 0, n, other.data(), 0.5f, 1.0f);
  EXPECT_NE(0, std::memcmp(whole.data(), other.data(), n * 4));
}

TEST(SynthRng, MomentsAreThoseOfAStandardNormal) {
  const size_t n = 1 << 20;
  std::vector<float> z(n);
  alloy::synth_normal(3, alloy::synth_stream_id("moments"), 0, n, z.data());
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, pair = 0, beyond2 = 0, largest = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = z[i];
    s1 += x, s2 += x * x, s3 += x * x * x, s4 += x * x * x * x;
    beyond2 += std::fabs(x) > 2;
    largest = std::max(largest, std::fabs(x));
    if (i % 2 == 0) pair += x * z[i + 1];
  }
  // Tolerances are about 5 standard errors at n = 2^20.
  EXPECT_NEAR(s1 / n, 0.0, 0.005);
  EXPECT_NEAR(s2 / n, 1.0, 0.007);
  EXPECT_NEAR(s3 / n, 0.0, 0.02);
  EXPECT_NEAR(s4 / n, 3.0, 0.05);
  EXPECT_NEAR(beyond2 / n, 0.0455, 0.001);
  EXPECT_NEAR(pair / (n / 2), 0.0, 0.007);  // the two halves of a Box-Muller pair
  EXPECT_GT(largest, 4.0);
  EXPECT_LE(largest, 5.77);
}

TEST(Synth, SameSeedSameBytesOnAnyThreadCountDifferentSeedDiffers) {
  TempDir dir;
  {
    ThreadCount one(1);
    alloy::synth_base_model(dir / "a", small(alloy::ModelFamily::kMoe, 7));
  }
  {
    ThreadCount two(2);
    alloy::synth_base_model(dir / "b", small(alloy::ModelFamily::kMoe, 7));
    alloy::synth_base_model(dir / "c", small(alloy::ModelFamily::kMoe, 8));
  }
  const auto a = alloy::test::read_bytes(dir / "a" / "model.safetensors");
  EXPECT_EQ(a, alloy::test::read_bytes(dir / "b" / "model.safetensors"));
  EXPECT_NE(a, alloy::test::read_bytes(dir / "c" / "model.safetensors"));
  for (const char* f : {"config.json", "tokenizer.json", "alloy_synth.json"}) {
    EXPECT_EQ(alloy::test::read_bytes(dir / "a" / f), alloy::test::read_bytes(dir / "b" / f)) << f;
  }
  alloy::FineTuneOptions ft;
  {
    ThreadCount one(1);
    alloy::synth_fine_tune(dir / "a", dir / "ft1", ft);
  }
  {
    ThreadCount two(2);
    alloy::synth_fine_tune(dir / "a", dir / "ft2", ft);
  }
  EXPECT_EQ(alloy::test::read_bytes(dir / "ft1" / "model.safetensors"),
            alloy::test::read_bytes(dir / "ft2" / "model.safetensors"));
}

TEST(Synth, GoldenModelBytes) {
  // The tensor bytes of a tiny base and of a fine-tune of it: a change in the generator, the
  // init statistics, the fine-tune recipe or the dtype rounding shows here on any platform.
  TempDir dir;
  auto o = small(alloy::ModelFamily::kMoe, 42);
  o.arch.layers = 1;
  alloy::synth_base_model(dir / "base", o);
  alloy::FineTuneOptions ft;
  ft.seed = 43;
  alloy::synth_fine_tune(dir / "base", dir / "ft", ft);
  EXPECT_EQ(tensor_bytes_hash(dir / "base"), 0x5B2AB3C1CB59BD64ull);
  EXPECT_EQ(tensor_bytes_hash(dir / "ft"), 0x0B61C93F3214B54Eull);
}

TEST(Synth, LlamaLayoutAndConfig) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kLlama, 1);
  o.arch.tie_embeddings = true;
  o.dtype = alloy::DType::F16;
  alloy::synth_base_model(dir / "m", o);
  const auto m = alloy::Model::open(dir / "m");
  ASSERT_EQ(m.tensors().size(), 1u + 2 * 9 + 1);  // embed, 9 per layer, norm; tied: no lm_head
  const auto expected = alloy::architecture_tensors(o.arch);
  for (const auto& t : expected) {
    const auto* found = m.find(t.name);
    ASSERT_NE(found, nullptr) << t.name;
    EXPECT_EQ(found->info->shape, t.shape) << t.name;
    EXPECT_EQ(found->info->dtype, alloy::DType::F16) << t.name;
  }
  EXPECT_EQ(m.find("lm_head.weight"), nullptr);
  EXPECT_EQ(m.find("model.embed_tokens.weight")->info->shape, (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(m.find("model.layers.1.self_attn.q_proj.weight")->info->shape, (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(m.find("model.layers.1.self_attn.k_proj.weight")->info->shape, (std::vector<uint64_t>{32, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.gate_proj.weight")->info->shape, (std::vector<uint64_t>{96, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.down_proj.weight")->info->shape, (std::vector<uint64_t>{64, 96}));
  EXPECT_EQ(m.find("model.layers.0.input_layernorm.weight")->info->shape, (std::vector<uint64_t>{64}));
  const json& c = m.config();
  EXPECT_EQ(c["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(c["model_type"], "llama");
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["hidden_size"], 64);
  EXPECT_EQ(c["intermediate_size"], 96);
  EXPECT_EQ(c["num_attention_heads"], 4);
  EXPECT_EQ(c["num_key_value_heads"], 2);
  EXPECT_EQ(c["vocab_size"], 128);
  EXPECT_EQ(c["torch_dtype"], "float16");
  EXPECT_EQ(c["tie_word_embeddings"], true);
  EXPECT_FALSE(c.contains("num_experts"));
  const auto back = alloy::architecture_from_config(c);
  EXPECT_EQ(alloy::architecture_json(back), alloy::architecture_json(o.arch));
  // The companions: a valid WordLevel tokenizer over the vocabulary, and the generator's record.
  const json tok = read_json(dir / "m" / "tokenizer.json");
  EXPECT_EQ(tok["model"]["type"], "WordLevel");
  EXPECT_EQ(tok["model"]["vocab"].size(), 128u);
  EXPECT_EQ(tok["model"]["vocab"]["</s>"], 2);
  EXPECT_EQ(tok["model"]["unk_token"], "<unk>");
  EXPECT_EQ(read_json(dir / "m" / "tokenizer_config.json")["eos_token"], "</s>");
  EXPECT_EQ(read_json(dir / "m" / "generation_config.json")["eos_token_id"], 2);
  const json record = read_json(dir / "m" / "alloy_synth.json");
  EXPECT_EQ(record["kind"], "base");
  EXPECT_EQ(record["seed"], 1);
  EXPECT_EQ(record["dtype"], "F16");
  EXPECT_EQ(record["architecture"], alloy::architecture_json(o.arch));
  EXPECT_EQ(m.auxiliary_files().size(), 3u);  // tokenizer.json, tokenizer_config.json, generation_config.json
}

TEST(Synth, MoeLayoutAndConfig) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kMoe, 1);
  alloy::synth_base_model(dir / "m", o);
  const auto m = alloy::Model::open(dir / "m");
  // embed; per layer 2 norms + 4 attention + router + 4 experts x 3 + shared (3 + gate); norm; lm_head
  EXPECT_EQ(m.tensors().size(), 1u + 2 * (2 + 4 + 1 + 12 + 4) + 2);
  EXPECT_EQ(m.find("model.layers.1.mlp.experts.3.down_proj.weight")->info->shape, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(m.find("model.layers.1.mlp.experts.0.gate_proj.weight")->info->shape, (std::vector<uint64_t>{32, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.gate.weight")->info->shape, (std::vector<uint64_t>{4, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.shared_expert.up_proj.weight")->info->shape, (std::vector<uint64_t>{96, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.shared_expert_gate.weight")->info->shape, (std::vector<uint64_t>{1, 64}));
  EXPECT_EQ(m.find("model.layers.0.mlp.up_proj.weight"), nullptr);
  EXPECT_EQ(m.find("model.layers.0.self_attn.q_proj.bias"), nullptr);
  ASSERT_NE(m.find("lm_head.weight"), nullptr);
  EXPECT_EQ(m.find("model.norm.weight")->info->dtype, alloy::DType::BF16);
  const json& c = m.config();
  EXPECT_EQ(c["architectures"][0], "Qwen2MoeForCausalLM");
  EXPECT_EQ(c["model_type"], "qwen2_moe");
  EXPECT_EQ(c["num_experts"], 4);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["moe_intermediate_size"], 32);
  EXPECT_EQ(c["shared_expert_intermediate_size"], 96);
  EXPECT_EQ(c["torch_dtype"], "bfloat16");
  EXPECT_EQ(alloy::architecture_json(alloy::architecture_from_config(c)), alloy::architecture_json(o.arch));

  // Without the shared expert, with q/k/v biases.
  o.arch.shared_expert = false;
  o.arch.attention_bias = true;
  alloy::synth_base_model(dir / "n", o);
  const auto n = alloy::Model::open(dir / "n");
  EXPECT_EQ(n.tensors().size(), 1u + 2 * (2 + 4 + 3 + 1 + 12) + 2);
  EXPECT_EQ(n.find("model.layers.0.mlp.shared_expert.up_proj.weight"), nullptr);
  EXPECT_EQ(n.find("model.layers.0.mlp.shared_expert_gate.weight"), nullptr);
  EXPECT_EQ(n.find("model.layers.1.self_attn.k_proj.bias")->info->shape, (std::vector<uint64_t>{32}));
  EXPECT_EQ(n.config()["shared_expert_intermediate_size"], 0);
  EXPECT_EQ(alloy::architecture_json(alloy::architecture_from_config(n.config())), alloy::architecture_json(o.arch));
}

TEST(Synth, EveryTensorNameIsClassifiedBack) {
  for (auto family : {alloy::ModelFamily::kLlama, alloy::ModelFamily::kMoe}) {
    auto arch = small(family, 1).arch;
    arch.attention_bias = true;
    for (const auto& t : alloy::architecture_tensors(arch)) {
      alloy::SynthTensor back;
      ASSERT_TRUE(alloy::classify_tensor(t.name, &back)) << t.name;
      EXPECT_EQ(back.component, t.component) << t.name;
      EXPECT_EQ(back.layer, t.layer) << t.name;
      EXPECT_EQ(back.expert, t.expert) << t.name;
    }
  }
  alloy::SynthTensor t;
  EXPECT_FALSE(alloy::classify_tensor("model.layers.99999999999999.mlp.up_proj.weight", &t));
  EXPECT_FALSE(alloy::classify_tensor("model.layers.0.mlp.experts.x.up_proj.weight", &t));
  EXPECT_FALSE(alloy::classify_tensor("transformer.h.0.attn.c_attn.weight", &t));
  EXPECT_STREQ(alloy::component_name(alloy::Component::kSharedExpertRouter), "shared_expert.router");
}

TEST(Synth, InitialStatisticsLookLikeAFreshTransformer) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kLlama, 2);
  o.arch.hidden = 128;
  o.arch.intermediate = 256;
  o.arch.vocab = 512;
  o.arch.layers = 1;
  alloy::synth_base_model(dir / "m", o);
  const auto m = alloy::Model::open(dir / "m");
  const auto rms = [](const std::vector<float>& v, double mean) {
    double s = 0;
    for (float x : v) s += (x - mean) * (x - mean);
    return std::sqrt(s / v.size());
  };
  const auto mean = [](const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += x;
    return s / v.size();
  };
  const auto embed = load(m, "model.embed_tokens.weight");
  EXPECT_NEAR(rms(embed, 0), 0.02, 0.0005);
  EXPECT_NEAR(mean(embed), 0.0, 0.0005);
  EXPECT_NEAR(rms(load(m, "lm_head.weight"), 0), 0.02, 0.0005);
  const auto norm_weights = load(m, "model.layers.0.input_layernorm.weight");
  EXPECT_NEAR(mean(norm_weights), 1.0, 0.02);
  EXPECT_NEAR(rms(norm_weights, mean(norm_weights)), 0.05, 0.015);
  EXPECT_NEAR(rms(load(m, "model.layers.0.self_attn.q_proj.weight"), 0), 1 / std::sqrt(128.0), 0.003);
  EXPECT_NEAR(rms(load(m, "model.layers.0.mlp.down_proj.weight"), 0), 1 / std::sqrt(256.0), 0.002);
  // base_tensor_values regenerates a tensor without reading it.
  const auto tensors = alloy::architecture_tensors(o.arch);
  const auto& q = tensors[2];
  ASSERT_EQ(q.name, "model.layers.0.self_attn.q_proj.weight");
  std::vector<float> regenerated(q.numel());
  alloy::base_tensor_values(q, o.seed, 0, regenerated.size(), regenerated.data());
  alloy::round_to(alloy::DType::BF16, regenerated.data(), regenerated.size());
  EXPECT_EQ(regenerated, load(m, q.name));
}

TEST(Synth, FineTuneDeltaSizeRankEnergyAndIndependence) {
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
  ft.rank = 4;
  ft.seed = 11;
  alloy::synth_fine_tune(dir / "base", dir / "a", ft);
  ft.seed = 12;
  alloy::synth_fine_tune(dir / "base", dir / "b", ft);
  o.seed = 4;
  alloy::synth_base_model(dir / "unrelated", o);
  const auto base = alloy::Model::open(dir / "base"), lr = alloy::Model::open(dir / "lr");
  const auto a = alloy::Model::open(dir / "a"), b = alloy::Model::open(dir / "b");
  const auto unrelated = alloy::Model::open(dir / "unrelated");
  for (const auto& t : base.tensors()) {
    const auto x = load(base, t.name());
    const auto da = minus(load(a, t.name()), x), db = minus(load(b, t.name()), x);
    const auto dl = minus(load(lr, t.name()), x);
    EXPECT_NEAR(norm(da) / norm(x), 0.05, 0.0005) << t.name();
    EXPECT_NEAR(norm(dl) / norm(x), 0.05, 0.0005) << t.name();
    const double bound = 6.0 / std::sqrt(double(x.size()));
    EXPECT_LT(std::fabs(dot(da, db) / (norm(da) * norm(db))), bound) << t.name() << ": siblings' deltas correlate";
    if (t.info->shape.size() == 2) {  // zero-mean tensors: an unrelated model is orthogonal to the base
      const auto u = load(unrelated, t.name());
      EXPECT_LT(std::fabs(dot(u, x) / (norm(u) * norm(x))), bound) << t.name();
      const auto du = minus(u, x);
      EXPECT_LT(std::fabs(dot(du, da) / (norm(du) * norm(da))), bound) << t.name();
    }
  }
  // A purely low-rank delta of rank 3 has exactly three non-negligible singular values; the mixed
  // delta (fraction 0.5, rank 4) carries about half its energy in its top four.
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const auto svd = [&](const alloy::Model& m) {
    const auto x = load(base, name), y = load(m, name);
    Eigen::MatrixXd d(96, 64);
    for (int i = 0; i < 96; ++i) {
      for (int j = 0; j < 64; ++j) d(i, j) = double(y[i * 64 + j]) - double(x[i * 64 + j]);
    }
    return Eigen::VectorXd(Eigen::JacobiSVD<Eigen::MatrixXd>(d).singularValues());
  };
  const Eigen::VectorXd s = svd(lr);
  EXPECT_GT(s(2), 1e-2 * s(0));
  EXPECT_LT(s(3), 1e-4 * s(0));
  const Eigen::VectorXd mixed = svd(a);
  const double top4 = mixed.head(4).squaredNorm() / mixed.squaredNorm();
  // 0.5 from L plus the dense part's share of those directions (about 4 of 64, somewhat more at
  // the top of the Marchenko-Pastur spectrum).
  EXPECT_GT(top4, 0.5);
  EXPECT_LT(top4, 0.65);
  EXPECT_LT(mixed(4), 0.6 * mixed(3));  // a gap after the stated rank (the dense part's top is below)
}

TEST(Synth, FineTuneKeepsTheBaseDtypeAndCompanions) {
  TempDir dir;
  auto o = small(alloy::ModelFamily::kMoe, 5);  // bf16: the realistic case
  o.output.shard_bytes = 20000;                  // several shards and an index
  alloy::synth_base_model(dir / "base", o);
  ASSERT_TRUE(fs::exists(dir / "base" / "model.safetensors.index.json"));
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.02;
  ft.seed = o.seed;  // even the base's seed gives a delta independent of the base
  alloy::synth_fine_tune(dir / "base", dir / "ft", ft);
  const auto base = alloy::Model::open(dir / "base"), tuned = alloy::Model::open(dir / "ft");
  EXPECT_EQ(tuned.config(), base.config());
  EXPECT_EQ(tuned.shards().size(), 1u);  // the fine-tune's own shard budget (default 5B)
  for (const auto& t : base.tensors()) {
    EXPECT_EQ(tuned.find(t.name())->info->dtype, alloy::DType::BF16);
    const auto x = load(base, t.name());
    const auto d = minus(load(tuned, t.name()), x);
    // bf16 rounding adds about 0.1% of |x| of noise, orthogonal to the delta. On the 64-element
    // norms (values near 1, where the bf16 step is 2^-7, a third of the delta itself) that noise is
    // a tenth of the delta and fluctuates: a looser bound there.
    const double tolerance = x.size() < 1000 ? 0.001 : 0.0002;
    EXPECT_NEAR(norm(d) / norm(x), 0.02, tolerance) << t.name();
    EXPECT_LT(std::fabs(dot(d, x)) / (norm(d) * norm(x)), 0.1 + 6.0 / std::sqrt(double(x.size()))) << t.name();
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(alloy::test::read_bytes(dir / "ft" / f), alloy::test::read_bytes(dir / "base" / f)) << f;
  }
  const json record = read_json(dir / "ft" / "alloy_synth.json");
  EXPECT_EQ(record["kind"], "fine-tune");
  EXPECT_EQ(record["base"], "base");
  EXPECT_EQ(record["seed"], 5);
  EXPECT_EQ(record["relative_delta"], 0.02);
  EXPECT_EQ(record["base_generator"]["kind"], "base");
}

TEST(Synth, FamilyLayoutAndRecord) {
  TempDir dir;
  alloy::FineTuneOptions ft;
  auto o = small(alloy::ModelFamily::kLlama, 10);
  o.arch.layers = 1;
  alloy::synth_family(dir / "fam", o, 2, 1, ft);
  for (const char* sub : {"base", "ft_1", "ft_2", "unrelated_1"}) {
    EXPECT_TRUE(fs::exists(dir / "fam" / sub / "model.safetensors")) << sub;
  }
  const json record = read_json(dir / "fam" / "alloy_synth.json");
  EXPECT_EQ(record["kind"], "family");
  ASSERT_EQ(record["fine_tunes"].size(), 2u);
  EXPECT_EQ(record["fine_tunes"][1]["dir"], "ft_2");
  EXPECT_EQ(record["fine_tunes"][1]["parent"], "base");
  EXPECT_EQ(record["fine_tunes"][1]["seed"], 10 + 1000 + 2);
  EXPECT_EQ(read_json(dir / "fam" / "ft_2" / "alloy_synth.json")["seed"], 1012);
  EXPECT_EQ(record["unrelated"][0]["seed"], 10 + 2000 + 1);
  EXPECT_EQ(read_json(dir / "fam" / "unrelated_1" / "alloy_synth.json")["seed"], 2011);
  // Nothing but the finished directory is left beside it.
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1u);
  // An existing non-empty OUT is refused, and overwrite replaces it.
  try {
    alloy::synth_family(dir / "fam", o, 1, 0, ft);
    ADD_FAILURE() << "existing output accepted";
  } catch (const alloy::Error& e) {
    EXPECT_EQ(e.code(), alloy::ErrorCode::kOutputExists);
  }
  o.output.overwrite = true;
  alloy::synth_family(dir / "fam", o, 1, 0, ft);
  EXPECT_FALSE(fs::exists(dir / "fam" / "ft_2"));
}

TEST(Synth, BadParametersAreRefusedBeforeAnythingIsWritten) {
  TempDir dir;
  struct Case {
    const char* what;
    void (*edit)(alloy::Architecture&);
    const char* message;
  };
  const Case cases[] = {
      {"heads", [](alloy::Architecture& a) { a.heads = 5; }, "multiple of heads"},
      {"kv-heads", [](alloy::Architecture& a) { a.kv_heads = 3; }, "multiple of kv-heads"},
      {"layers", [](alloy::Architecture& a) { a.layers = 0; }, "layers"},
      {"vocab", [](alloy::Architecture& a) { a.vocab = -1; }, "vocab"},
      {"experts-per-token", [](alloy::Architecture& a) { a.family = alloy::ModelFamily::kMoe, a.experts_per_token = 9; },
       "experts-per-token"},
  };
  for (const auto& c : cases) {
    auto o = small(alloy::ModelFamily::kLlama, 1);
    c.edit(o.arch);
    try {
      alloy::synth_base_model(dir / "m", o);
      ADD_FAILURE() << c.what << " accepted";
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), alloy::ErrorCode::kInvalidArgument) << c.what;
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "m")) << c.what;
  }
  auto o = small(alloy::ModelFamily::kLlama, 1);
  o.dtype = alloy::DType::F8_E4M3;
  EXPECT_THROW(alloy::synth_base_model(dir / "m", o), alloy::Error);
  alloy::synth_base_model(dir / "base", small(alloy::ModelFamily::kLlama, 1));
  alloy::FineTuneOptions ft;
  ft.low_rank_fraction = 1.5;
  EXPECT_THROW(alloy::synth_fine_tune(dir / "base", dir / "ft", ft), alloy::Error);
  ft = {};
  ft.relative_delta = std::nan("");
  EXPECT_THROW(alloy::synth_fine_tune(dir / "base", dir / "ft", ft), alloy::Error);
  ft = {};
  ft.rank = 0;
  EXPECT_THROW(alloy::synth_fine_tune(dir / "base", dir / "ft", ft), alloy::Error);
  EXPECT_FALSE(fs::exists(dir / "ft"));
  EXPECT_THROW(alloy::architecture_from_config(json{{"hidden_size", 64}}), alloy::Error);
}

TEST(Synth, SizeTargetIsMetWithRealisticProportions) {
  for (auto family : {alloy::ModelFamily::kLlama, alloy::ModelFamily::kMoe}) {
    for (double gb : {0.5, 1.0, 2.0, 16.0}) {
      alloy::Architecture like;
      like.family = family;
      like.tie_embeddings = true;
      const auto arch = alloy::architecture_for_size(like, gb, alloy::DType::BF16);
      EXPECT_NEAR(alloy::architecture_bytes(arch, alloy::DType::BF16) / 1e9, gb, 0.05 * gb) << gb;
      EXPECT_GE(arch.layers, arch.hidden / 128) << gb;
      EXPECT_TRUE(arch.tie_embeddings);
      EXPECT_EQ(arch.family, family);
    }
  }
  const auto one = alloy::architecture_for_size(alloy::Architecture{}, 1.0, alloy::DType::BF16);
  EXPECT_EQ(one.hidden, 1536);
  EXPECT_EQ(one.layers, 16);
  EXPECT_THROW(alloy::architecture_for_size(alloy::Architecture{}, 0.0, alloy::DType::BF16), alloy::Error);
}

TEST(SynthCli, FamilyAndErrors) {
  TempDir dir;
  int status = -1;
  const std::string synth = "'" + alloy::test::bin("alloy-synth") + "'";
  std::string out = alloy::test::run_command(synth + " family '" + (dir / "fam").string() +
                                                 "' --fine-tunes 2 --unrelated 1 --layers 1 --family moe --experts 2 "
                                                 "--delta 0.03 --rank 2 2>&1",
                                             &status);
  ASSERT_EQ(status, 0) << out;
  for (const char* sub : {"base", "ft_1", "ft_2", "unrelated_1"}) {
    EXPECT_TRUE(fs::exists(dir / "fam" / sub / "model.safetensors")) << sub;
  }
  EXPECT_EQ(read_json(dir / "fam" / "ft_1" / "alloy_synth.json")["rank"], 2);
  // finetune and --threads: the same bytes as the library with any thread count.
  out = alloy::test::run_command(synth + " --threads 1 finetune '" + (dir / "fam" / "base").string() + "' '" +
                                     (dir / "ft").string() + "' --delta 0.03 --rank 2 --seed 1002 2>&1",
                                 &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(alloy::test::read_bytes(dir / "ft" / "model.safetensors"),
            alloy::test::read_bytes(dir / "fam" / "ft_1" / "model.safetensors"));

  struct Case {
    std::string args, message;
  };
  const std::string x = "'" + (dir / "x").string() + "'";
  const Case cases[] = {
      {"base '" + (dir / "fam").string() + "'", "not empty"},
      {"base " + x + " --family gpt", "--family"},
      {"base " + x + " --dtype int4", "--dtype"},
      {"base " + x + " --heads 5", "multiple of heads"},
      {"base " + x + " --size-gb 1 --layers 3", "excludes"},
      {"base " + x + " --shard-size 5Q", "5Q"},
      {"finetune /nonexistent/base " + x, "/nonexistent/base"},
      {"finetune '" + (dir / "fam" / "base").string() + "' " + x + " --low-rank-fraction 2", "low-rank-fraction"},
      {"frobnicate " + x, "frobnicate"},
  };
  for (const auto& c : cases) {
    out = alloy::test::run_command(synth + " " + c.args + " 2>&1", &status);
    EXPECT_NE(status, 0) << c.args;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
  }
  EXPECT_FALSE(fs::exists(dir / "x"));
}

}  // namespace
