// LoRA adapters: `model: base+adapter` in recipes (applied before the merge) and alloy-extract-lora
// (truncated SVD), checked against products and singular values built by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/core/writer.h"
#include "alloy/merge/lora.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "test_utils.h"
#include "tiny_model.h"

namespace {

namespace fs = std::filesystem;
using Values = std::vector<double>;  // row-major

constexpr const char* kQ = "model.layers.0.self_attn.q_proj";  // [32, 32]
constexpr const char* kUp = "model.layers.1.mlp.up_proj";      // [64, 32]

void tiny_f32(const fs::path& dir, uint64_t seed) {
  alloy::synth_base_model(dir, alloy::test::tiny_model(seed, alloy::DType::F32));
}

std::vector<float> read_tensor(const fs::path& model, const std::string& name) {
  const alloy::Model m = alloy::Model::open(model);
  const alloy::ModelTensor* t = m.find(name);
  EXPECT_NE(t, nullptr) << name;
  std::vector<float> values(t->info->numel());
  alloy::load_as_f32(t->info->dtype, t->data(), values.size(), values.data());
  return values;
}

// `columns` orthonormal columns of length `rows` (Gram-Schmidt on a fixed-seed Gaussian matrix).
Values orthonormal(size_t rows, size_t columns, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Values q(rows * columns);
  for (auto& v : q) v = normal(rng);
  for (size_t j = 0; j < columns; ++j) {
    for (size_t k = 0; k < j; ++k) {
      double dot = 0;
      for (size_t i = 0; i < rows; ++i) dot += q[i * columns + j] * q[i * columns + k];
      for (size_t i = 0; i < rows; ++i) q[i * columns + j] -= dot * q[i * columns + k];
    }
    double norm = 0;
    for (size_t i = 0; i < rows; ++i) norm += q[i * columns + j] * q[i * columns + j];
    for (size_t i = 0; i < rows; ++i) q[i * columns + j] /= std::sqrt(norm);
  }
  return q;
}

// A rank-r change with singular values `s`: B = U sqrt(S) [out, r], A = sqrt(S) V^T [r, in], and
// their product U S V^T.
struct Change {
  size_t out = 0, in = 0, r = 0;
  Values b, a, product;
  Values u, v;               // [out, r] and [in, r], orthonormal columns
  std::vector<double> s;
  // U_k S_k V_k^T: the best rank-k approximation of the product.
  Values leading(size_t k) const {
    Values p(out * in, 0.0);
    for (size_t c = 0; c < k; ++c) {
      for (size_t i = 0; i < out; ++i) {
        for (size_t j = 0; j < in; ++j) p[i * in + j] += u[i * r + c] * s[c] * v[j * r + c];
      }
    }
    return p;
  }
};

Change make_change(size_t out, size_t in, const std::vector<double>& s, uint64_t seed) {
  Change c{out, in, s.size(), {}, {}, {}, orthonormal(out, s.size(), seed), orthonormal(in, s.size(), seed + 1), s};
  const Values& u = c.u;
  const Values& v = c.v;
  c.b.resize(out * c.r);
  c.a.resize(c.r * in);
  c.product.assign(out * in, 0.0);
  for (size_t k = 0; k < c.r; ++k) {
    for (size_t i = 0; i < out; ++i) c.b[i * c.r + k] = u[i * c.r + k] * std::sqrt(s[k]);
    for (size_t j = 0; j < in; ++j) c.a[k * in + j] = v[j * c.r + k] * std::sqrt(s[k]);
    for (size_t i = 0; i < out; ++i) {
      for (size_t j = 0; j < in; ++j) c.product[i * in + j] += u[i * c.r + k] * s[k] * v[j * c.r + k];
    }
  }
  return c;
}

std::vector<float> to_float(const Values& v) { return std::vector<float>(v.begin(), v.end()); }

// Writes an adapter directory in PEFT's format with the given modules and config.
void write_adapter(const fs::path& dir, const std::vector<std::pair<std::string, Change>>& modules,
                   const nlohmann::json& config) {
  fs::create_directories(dir);
  std::vector<alloy::TensorSpec> specs;
  std::vector<std::vector<float>> data;
  for (const auto& [module, c] : modules) {
    specs.push_back({"base_model.model." + module + ".lora_A.weight", alloy::DType::F32, {c.r, c.in}});
    data.push_back(to_float(c.a));
    specs.push_back({"base_model.model." + module + ".lora_B.weight", alloy::DType::F32, {c.out, c.r}});
    data.push_back(to_float(c.b));
  }
  std::vector<const void*> pointers;
  for (const auto& d : data) pointers.push_back(d.data());
  alloy::write_safetensors_file(dir / "adapter_model.safetensors", specs, pointers);
  std::ofstream(dir / "adapter_config.json") << config.dump(2);
}

nlohmann::json lora_config(int r, double alpha, bool rslora = false) {
  return {{"peft_type", "LORA"}, {"r", r},           {"lora_alpha", alpha},  {"use_rslora", rslora},
          {"bias", "none"},      {"use_dora", false}, {"target_modules", {"q_proj", "up_proj"}}};
}

// Runs a one-model passthrough of `model` (a name relative to `dir`) into dir/out_name.
fs::path apply(const fs::path& dir, const std::string& model, const std::string& out_name) {
  const std::string recipe = "merge_method: passthrough\nmodels:\n  - model: " + model + "\ndtype: float32\n";
  alloy::PlanOptions plan_options;
  plan_options.base_dir = dir;
  alloy::MergeOptions options;
  options.out_dir = dir / out_name;
  alloy::run_merge(alloy::plan_merge(alloy::parse_recipe(recipe, "lora.yml"), plan_options), options);
  return options.out_dir;
}

double frobenius(const Values& v) {
  double sum = 0;
  for (double x : v) sum += x * x;
  return std::sqrt(sum);
}

Values difference(const std::vector<float>& a, const std::vector<float>& b) {
  Values d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = double(a[i]) - double(b[i]);
  return d;
}

Values minus(const Values& a, const Values& b) {
  Values d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

// B A of an adapter's module, read back through alloy's own PEFT reader.
Values product_of(const alloy::LoraAdapter& adapter, const std::string& module, size_t out, size_t in) {
  const alloy::LoraModule* m = adapter.find(module + ".weight");
  EXPECT_NE(m, nullptr) << module;
  std::vector<float> zero(out * in, 0.0f);
  adapter.add_change(*m, zero.data());
  Values p(zero.begin(), zero.end());
  for (double& x : p) x /= adapter.scale();
  return p;
}

TEST(Lora, ApplyThenExtractRecoversTheProductWithinTheTruncationError) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 1);
  const std::vector<double> s = {3.0, 1.5, 0.6, 0.2};
  const Change q = make_change(32, 32, s, 11), up = make_change(64, 32, s, 21);
  write_adapter(dir / "adapter", {{kQ, q}, {kUp, up}}, lora_config(4, 4.0));  // scale 1
  const fs::path merged = apply(dir.path(), "base+adapter", "merged");

  // The merge holds W + B A exactly up to float32 rounding, and nothing else changed.
  const std::string q_weight = std::string(kQ) + ".weight";
  const Values applied = difference(read_tensor(merged, q_weight), read_tensor(dir / "base", q_weight));
  EXPECT_LT(frobenius(minus(applied, q.product)), 1e-6 * frobenius(q.product));
  const std::string k_weight = "model.layers.0.self_attn.k_proj.weight";
  EXPECT_EQ(read_tensor(merged, k_weight), read_tensor(dir / "base", k_weight));

  // Rank 4: the product comes back (the only error is float32 rounding of W + B A).
  alloy::LoraExtractOptions options;
  options.rank = 4;
  const auto full = alloy::extract_lora(dir / "base", merged, dir / "rank4", options);
  ASSERT_EQ(full.modules.size(), 2u);
  const auto rank4 = alloy::LoraAdapter::open(dir / "rank4");
  EXPECT_EQ(rank4->rank(), 4u);
  EXPECT_DOUBLE_EQ(rank4->scale(), 1.0);
  EXPECT_LT(frobenius(minus(product_of(*rank4, kQ, 32, 32), q.product)), 2e-6 * frobenius(q.product));
  EXPECT_LT(frobenius(minus(product_of(*rank4, kUp, 64, 32), up.product)), 2e-6 * frobenius(up.product));
  const auto config = nlohmann::json::parse(alloy::test::read_bytes(dir / "rank4" / "adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["r"], 4);
  EXPECT_EQ(config["lora_alpha"], 4);
  EXPECT_EQ(config["target_modules"], nlohmann::json({kQ, kUp}));

  // Rank 2: the residual is exactly the energy of the discarded singular values (Eckart-Young),
  // and what is kept is the leading part U_2 S_2 V_2^T of the product.
  options.rank = 2;
  const auto half = alloy::extract_lora(dir / "base", merged, dir / "rank2", options);
  const auto rank2 = alloy::LoraAdapter::open(dir / "rank2");
  const double discarded = std::sqrt(s[2] * s[2] + s[3] * s[3]);
  const Values kept = q.leading(2);
  const Values q2 = product_of(*rank2, kQ, 32, 32);
  EXPECT_NEAR(frobenius(minus(applied, q2)), discarded, 1e-5 * discarded);
  EXPECT_LT(frobenius(minus(q2, kept)), 1e-5 * frobenius(kept));
  for (const auto& m : half.modules) {
    EXPECT_NEAR(m.residual_norm, discarded, 1e-5 * discarded) << m.module;
    EXPECT_NEAR(m.discarded_energy, discarded, 1e-5 * discarded) << m.module;
    EXPECT_NEAR(m.delta_norm, std::sqrt(3.0 * 3.0 + 1.5 * 1.5 + 0.6 * 0.6 + 0.2 * 0.2), 1e-5) << m.module;
  }
}

TEST(Lora, AlphaAndRsloraSetTheScale) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 2);
  const Change q = make_change(32, 32, {1.0, 0.5, 0.25, 0.125}, 5);
  // r = 4, lora_alpha = 8: scale alpha / r = 2, with use_rslora alpha / sqrt(r) = 4.
  write_adapter(dir / "plain", {{kQ, q}}, lora_config(4, 8.0));
  write_adapter(dir / "rslora", {{kQ, q}}, lora_config(4, 8.0, true));
  EXPECT_DOUBLE_EQ(alloy::LoraAdapter::open(dir / "plain")->scale(), 2.0);
  EXPECT_DOUBLE_EQ(alloy::LoraAdapter::open(dir / "rslora")->scale(), 4.0);
  const std::string weight = std::string(kQ) + ".weight";
  const std::vector<float> base = read_tensor(dir / "base", weight);
  for (const auto& [name, scale] : {std::pair{"plain", 2.0}, std::pair{"rslora", 4.0}}) {
    const Values applied = difference(read_tensor(apply(dir.path(), std::string("base+") + name, std::string("out_") + name), weight), base);
    Values expected = q.product;
    for (double& x : expected) x *= scale;
    EXPECT_LT(frobenius(minus(applied, expected)), 1e-6 * frobenius(expected)) << name;
  }
}

TEST(Lora, RandomizedSvdRecoversALowRankChangeDeterministically) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 3);
  const Change up = make_change(64, 32, {2.0, 1.0, 0.5}, 7);
  nlohmann::json config = lora_config(3, 3.0);
  write_adapter(dir / "adapter", {{kUp, up}}, config);
  const fs::path merged = apply(dir.path(), "base+adapter", "merged");
  alloy::LoraExtractOptions options;
  options.rank = 3;
  options.exact_limit = 8;  // randomized for every module here
  const auto result = alloy::extract_lora(dir / "base", merged, dir / "a", options);
  ASSERT_EQ(result.modules.size(), 1u);
  EXPECT_FALSE(result.modules[0].exact);
  EXPECT_LT(frobenius(minus(product_of(*alloy::LoraAdapter::open(dir / "a"), kUp, 64, 32), up.product)),
            2e-6 * frobenius(up.product));
  alloy::extract_lora(dir / "base", merged, dir / "b", options);
  EXPECT_EQ(alloy::test::read_bytes(dir / "a" / "adapter_model.safetensors"),
            alloy::test::read_bytes(dir / "b" / "adapter_model.safetensors"));
}

// One bad adapter per row: the recipe refuses it with an error that says what and where.
TEST(Lora, BadAdaptersAreRefusedByName) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 4);
  const Change q = make_change(32, 32, {1.0, 0.5, 0.25, 0.125}, 9);
  const Change narrow = make_change(32, 31, {1.0, 0.5, 0.25, 0.125}, 9);
  struct Case {
    std::string name;
    std::function<void(const fs::path&)> make;
    std::string model;
    alloy::ErrorCode code;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"no directory", [](const fs::path&) {}, "base+missing", alloy::ErrorCode::kNotAModel,
       "cannot apply LoRA adapter 'missing' to 'base': 'missing' is not a local folder"},
      {"a file", [](const fs::path& d) { std::ofstream(d) << "x"; }, "base+bad", alloy::ErrorCode::kNotAModel,
       "no LoRA adapter directory there"},
      {"no weights",
       [&](const fs::path& d) {
         write_adapter(d, {{kQ, q}}, lora_config(4, 4));
         fs::remove(d / "adapter_model.safetensors");
       },
       "base+bad", alloy::ErrorCode::kNotAModel, "adapter_model.safetensors"},
      {"no config",
       [&](const fs::path& d) {
         write_adapter(d, {{kQ, q}}, lora_config(4, 4));
         fs::remove(d / "adapter_config.json");
       },
       "base+bad", alloy::ErrorCode::kNotAModel, "adapter_config.json"},
      {"shape", [&](const fs::path& d) { write_adapter(d, {{kQ, narrow}}, lora_config(4, 4)); }, "base+bad",
       alloy::ErrorCode::kShapeMismatch, "tensor 'model.layers.0.self_attn.q_proj.weight' is [32, 32]"},
      {"dora",
       [&](const fs::path& d) {
         auto c = lora_config(4, 4);
         c["use_dora"] = true;
         write_adapter(d, {{kQ, q}}, c);
       },
       "base+bad", alloy::ErrorCode::kBadConfig, "DoRA"},
      {"loha",
       [&](const fs::path& d) {
         auto c = lora_config(4, 4);
         c["peft_type"] = "LOHA";
         write_adapter(d, {{kQ, q}}, c);
       },
       "base+bad", alloy::ErrorCode::kBadConfig, "peft_type \"LOHA\" is not supported"},
      {"rank",
       [&](const fs::path& d) { write_adapter(d, {{kQ, q}}, lora_config(8, 8)); }, "base+bad",
       alloy::ErrorCode::kShapeMismatch, "rank 4, but the config's r is 8"},
      {"not a target",
       [&](const fs::path& d) {
         auto c = lora_config(4, 4);
         c["target_modules"] = {"v_proj"};
         write_adapter(d, {{kQ, q}}, c);
       },
       "base+bad", alloy::ErrorCode::kBadConfig, "not among the config's target_modules"},
      {"absent module",
       [&](const fs::path& d) { write_adapter(d, {{"model.layers.9.self_attn.q_proj", q}}, lora_config(4, 4)); },
       "base+bad", alloy::ErrorCode::kMissingTensor, "'model.layers.9.self_attn.q_proj.weight'"},
      {"modules_to_save",
       [&](const fs::path& d) {
         auto c = lora_config(4, 4);
         c["modules_to_save"] = {"lm_head"};
         write_adapter(d, {{kQ, q}}, c);
       },
       "base+bad", alloy::ErrorCode::kBadConfig, "modules_to_save"},
      {"two adapters", [](const fs::path&) {}, "base+a+b", alloy::ErrorCode::kRecipe, "more than one '+'"},
  };
  for (const auto& c : cases) {
    fs::remove_all(dir / "bad");
    c.make(dir / (c.model == "base+missing" ? "missing" : "bad"));
    try {
      apply(dir.path(), c.model, "out");
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const alloy::Error& e) {
      EXPECT_EQ(e.code(), c.code) << c.name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << c.name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("lora.yml:3:"), std::string::npos) << c.name << ": " << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "out")) << c.name;
  }
}

TEST(Lora, ExtractToolWritesAnAdapterAndFailsCleanly) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 5);
  write_adapter(dir / "adapter", {{kQ, make_change(32, 32, {1.0, 0.5}, 3)}}, lora_config(2, 2));
  apply(dir.path(), "base+adapter", "merged");
  int status = -1;
  const std::string ok = alloy::test::run_command(alloy::test::bin("alloy-extract-lora") + " " + (dir / "base").string() +
                                                      " " + (dir / "merged").string() + " " + (dir / "x").string() +
                                                      " --rank 2 2>&1", &status);
  EXPECT_EQ(status, 0) << ok;
  EXPECT_NE(ok.find(std::string(kQ) + " rank 2"), std::string::npos) << ok;
  EXPECT_TRUE(fs::exists(dir / "x" / "adapter_config.json"));
  const std::string bad = alloy::test::run_command(alloy::test::bin("alloy-extract-lora") + " " + (dir / "nothing").string() +
                                                       " " + (dir / "merged").string() + " " + (dir / "y").string() +
                                                       " --rank 2 2>&1", &status);
  EXPECT_EQ(status, 2) << bad;
  EXPECT_NE(bad.find("alloy-extract-lora: error:"), std::string::npos) << bad;
  EXPECT_FALSE(fs::exists(dir / "y"));
  // Identical models: nothing to extract is an error, not an empty adapter.
  alloy::test::run_command(alloy::test::bin("alloy-extract-lora") + " " + (dir / "base").string() + " " +
                               (dir / "base").string() + " " + (dir / "z").string() + " --rank 2 2>&1", &status);
  EXPECT_EQ(status, 2);
}

}  // namespace

namespace {

// Embeddings take PEFT's lora_embedding_A [r, vocab] / lora_embedding_B [dim, r], and their change
// is (B A)^T; extraction with --embeddings writes them back the same way.
TEST(Lora, EmbeddingChangesAreTransposedBothWays) {
  alloy::test::TempDir dir;
  tiny_f32(dir / "base", 6);
  const Change c = make_change(32, 64, {2.0, 1.0}, 13);  // B A is [dim 32, vocab 64]
  fs::create_directories(dir / "adapter");
  const std::vector<float> a = to_float(c.a), b = to_float(c.b);
  alloy::write_safetensors_file(dir / "adapter" / "adapter_model.safetensors",
                                {{"base_model.model.model.embed_tokens.lora_embedding_A", alloy::DType::F32, {2, 64}},
                                 {"base_model.model.model.embed_tokens.lora_embedding_B", alloy::DType::F32, {32, 2}}},
                                {a.data(), b.data()});
  std::ofstream(dir / "adapter" / "adapter_config.json")
      << nlohmann::json{{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 2}, {"target_modules", {"embed_tokens"}}}.dump();
  const fs::path merged = apply(dir.path(), "base+adapter", "merged");
  const std::string weight = "model.embed_tokens.weight";  // [64, 32]
  const Values applied = difference(read_tensor(merged, weight), read_tensor(dir / "base", weight));
  Values transposed(64 * 32);
  for (size_t i = 0; i < 32; ++i) {
    for (size_t j = 0; j < 64; ++j) transposed[j * 32 + i] = c.product[i * 64 + j];
  }
  EXPECT_LT(frobenius(minus(applied, transposed)), 1e-6 * frobenius(transposed));

  alloy::LoraExtractOptions options;
  options.rank = 2;
  EXPECT_THROW(alloy::extract_lora(dir / "base", merged, dir / "none", options), alloy::Error)
      << "without --embeddings there is nothing to extract";
  options.embeddings = true;
  alloy::extract_lora(dir / "base", merged, dir / "back", options);
  const auto back = alloy::LoraAdapter::open(dir / "back");
  const alloy::LoraModule* m = back->find(weight);
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->transposed);
  EXPECT_EQ(m->a->shape, (std::vector<uint64_t>{2, 64}));
  std::vector<float> zero(64 * 32, 0.0f);
  back->add_change(*m, zero.data());
  EXPECT_LT(frobenius(minus(Values(zero.begin(), zero.end()), transposed)), 2e-6 * frobenius(transposed));
}

}  // namespace
