// Merges on the real layouts of Hugging Face families (alloy-synth's named families): for each,
// linear, slerp, ties, dare_ties, della, a passthrough stack and a layer-gradient slerp are planned
// and run, and every output tensor is compared bit for bit with a reference the test computes on
// its own: it picks the source tensors and the layer position t from the names itself (never from
// the plan), and runs the method's element math on them, whole-tensor and on float32 rows (linear
// also through the rounding chain of docs/methods.md written out here). The output's config.json
// must describe the output's layers: the layer count (inside text_config for Qwen3.5) and the
// per-layer lists (layer_types, mlp_only_layers, first_k_dense_replace) must agree with the
// tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "alloy/core/architecture.h"
#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "tiny_model.h"
#include "test_utils.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 4;

struct FamilyCase {
  std::string family;  // alloy-synth's name
  bool tie = false;
  uint64_t shard_bytes = 5'000'000'000;
  std::string label() const { return family + (tie ? "_tied" : "") + (shard_bytes < 1'000'000 ? "_sharded" : ""); }
};

// base, ft_1, ft_2 of one family, made once per case.
class FamilyDir {
 public:
  explicit FamilyDir(const FamilyCase& c) {
    BaseModelOptions base = test::tiny_family_model(*family_from_name(c.family), kLayers);
    base.arch.tie_embeddings = c.tie;
    base.output.shard_bytes = c.shard_bytes;
    synth_base_model(dir_ / "base", base);
    for (int i = 1; i <= 2; ++i) {
      FineTuneOptions ft;
      ft.seed = 100 + static_cast<uint64_t>(i);
      ft.relative_delta = 0.1;
      ft.output.shard_bytes = c.shard_bytes;
      synth_fine_tune(dir_ / "base", dir_ / ("ft_" + std::to_string(i)), ft);
    }
  }
  const fs::path& path() const { return dir_.path(); }

 private:
  test::TempDir dir_;
};

// The tensor's values as float32 (bf16 values are exact in float32).
std::vector<float> values(const Model& model, const std::string& name) {
  const ModelTensor* t = model.find(name);
  if (!t) throw std::runtime_error("no tensor " + name + " in " + model.path().string());
  std::vector<float> out(t->info->numel());
  load_as_f32(t->info->dtype, t->data(), out.size(), out.data());
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b, std::string* where) {
  if (a.size() != b.size()) return *where = "sizes differ", false;
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t x, y;
    std::memcpy(&x, &a[i], 4);
    std::memcpy(&y, &b[i], 4);
    if (x != y) {
      *where = "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]);
      return false;
    }
  }
  return true;
}

// The decoder-layer prefix of the family, as the test knows it (not from the architecture model).
std::string layer_prefix(const std::string& family) {
  return family == "qwen3_5_moe" ? "model.language_model.layers." : "model.layers.";
}

// (layer, suffix) of a decoder-layer tensor name, or layer -1.
std::pair<int, std::string> split(const std::string& family, const std::string& name) {
  const std::string p = layer_prefix(family);
  if (name.rfind(p, 0) != 0) return {-1, ""};
  const size_t dot = name.find('.', p.size());
  return {std::stoi(name.substr(p.size(), dot - p.size())), name.substr(dot + 1)};
}

PlanOptions plan_options(const fs::path& base_dir) {
  PlanOptions options;
  options.base_dir = base_dir;
  return options;
}

struct SourceRef {
  const Model* model;
  std::string tensor;
  std::map<std::string, double> params;
  bool is_base = false;
};

// Runs `method`'s element math on the given sources (bf16 compute, as the models are stored).
std::vector<float> reference(const std::string& method, const std::string& name, const std::vector<SourceRef>& refs,
                             std::map<std::string, double> method_params) {
  const MergeMethod* m = find_merge_method(method);
  for (const auto& p : m->parameters()) {
    if (!p.per_model && p.default_value && !method_params.count(p.name)) method_params[p.name] = *p.default_value;
  }
  std::vector<std::vector<float>> data;
  for (const auto& r : refs) data.push_back(values(*r.model, r.tensor));
  MergeContext ctx;
  ctx.tensor_name = name;
  ctx.compute_dtype = DType::BF16;
  ctx.shape = refs.front().model->find(refs.front().tensor)->info->shape;
  ctx.params = method_params;
  ctx.seed = tensor_seed(0, name);  // the random masks' stream, as the executor's (--random-seed 0)
  for (size_t k = 0; k < refs.size(); ++k) {
    if (refs[k].is_base) ctx.base_index = static_cast<int>(k);
    ctx.sources.push_back({data[k].data(), refs[k].params, refs[k].is_base, std::to_string(k)});
  }
  std::vector<float> out(ctx.numel());
  m->merge(ctx, out.data());
  return out;
}

// docs/methods.md's linear chain, written out: p_k = rnd(wD(w_k) x_k), s = rnd(sum in order),
// out = rnd(s / rnd(sum wD(w_k))).
std::vector<float> linear_chain(const std::vector<std::vector<float>>& xs, const std::vector<double>& weights) {
  const DType d = DType::BF16;
  float weight_sum = 0.0f;
  for (double w : weights) weight_sum += round_to(d, static_cast<float>(w));
  weight_sum = round_to(d, weight_sum);
  std::vector<float> out(xs[0].size());
  for (size_t i = 0; i < out.size(); ++i) {
    float s = 0.0f;
    for (size_t k = 0; k < xs.size(); ++k) s += round_to(d, round_to(d, static_cast<float>(weights[k])) * xs[k][i]);
    out[i] = round_to(d, round_to(d, s) / weight_sum);
  }
  return out;
}

struct MergeRun {
  std::unique_ptr<Model> base, ft1, ft2, out;
  nlohmann::json config;
};

MergeRun merge(const FamilyDir& dir, const std::string& recipe_text, const std::string& out_name) {
  MergePlan plan = plan_merge(parse_recipe(recipe_text, out_name + ".yml"), plan_options(dir.path()));
  MergeOptions options;
  options.out_dir = dir.path() / out_name;
  options.hash_inputs = options.hash_outputs = false;
  run_merge(plan, options);
  MergeRun run;
  run.base = std::make_unique<Model>(Model::open(dir.path() / "base"));
  run.ft1 = std::make_unique<Model>(Model::open(dir.path() / "ft_1"));
  run.ft2 = std::make_unique<Model>(Model::open(dir.path() / "ft_2"));
  run.out = std::make_unique<Model>(Model::open(options.out_dir));
  run.config = run.out->config();
  return run;
}

std::set<std::string> names_of(const Model& m) {
  std::set<std::string> out;
  for (const auto& t : m.tensors()) out.insert(t.name());
  return out;
}

// The output's config describes its layers: count, and every per-layer list consistent with the
// tensors of each layer.
void check_config(const std::string& family, const Model& out, int expected_layers) {
  const nlohmann::json& config = out.config();
  const bool nested = family == "qwen3_5_moe";
  const nlohmann::json& text = nested ? config.at("text_config") : config;
  EXPECT_EQ(text.at("num_hidden_layers"), expected_layers);
  if (nested) {
    EXPECT_FALSE(config.contains("num_hidden_layers")) << "a top-level layer count Qwen3.5 does not have";
  }
  // Which layers the tensors say are linear attention, MoE.
  std::vector<bool> linear(expected_layers, false), moe(expected_layers, false), present(expected_layers, false);
  for (const auto& t : out.tensors()) {
    const auto [layer, suffix] = split(family, t.name());
    if (layer < 0) continue;
    ASSERT_LT(layer, expected_layers) << t.name();
    present[layer] = true;
    linear[layer] = linear[layer] || suffix.rfind("linear_attn.", 0) == 0;
    moe[layer] = moe[layer] || suffix.find("experts") != std::string::npos;
  }
  for (int l = 0; l < expected_layers; ++l) EXPECT_TRUE(present[l]) << "layer " << l;
  if (text.contains("layer_types") && (family == "qwen3_next" || family == "qwen3_5_moe")) {
    ASSERT_EQ(text["layer_types"].size(), static_cast<size_t>(expected_layers));
    for (int l = 0; l < expected_layers; ++l) {
      EXPECT_EQ(text["layer_types"][l], linear[l] ? "linear_attention" : "full_attention") << "layer " << l;
    }
  }
  if (text.contains("layer_types")) {
    EXPECT_EQ(text["layer_types"].size(), static_cast<size_t>(expected_layers));
  }
  if (text.contains("mlp_only_layers")) {
    for (const auto& i : text["mlp_only_layers"]) {
      ASSERT_LT(i.get<int>(), expected_layers);
      EXPECT_FALSE(moe[i.get<size_t>()]);
    }
  }
  if (family == "deepseek_v3") {
    const int k = text.at("first_k_dense_replace").get<int>();
    for (int l = 0; l < expected_layers; ++l) EXPECT_EQ(moe[l], l >= k) << "layer " << l;
  }
}

class FamilyMerge : public ::testing::TestWithParam<FamilyCase> {
 protected:
  static void SetUpTestSuite() {}
};

TEST_P(FamilyMerge, LinearSlerpTiesDareDellaPassthroughAndGradientAreBitExact) {
  const FamilyCase& c = GetParam();
  const FamilyDir dir(c);
  const std::string& f = c.family;

  // linear
  {
    const MergeRun r = merge(dir, R"(merge_method: linear
models:
  - model: ft_1
    parameters: {weight: 0.6}
  - model: ft_2
    parameters: {weight: 0.4}
)", "linear");
    EXPECT_EQ(names_of(*r.out), names_of(*r.base));
    for (const auto& name : names_of(*r.out)) {
      const auto got = values(*r.out, name);
      const auto chain = linear_chain({values(*r.ft1, name), values(*r.ft2, name)}, {0.6, 0.4});
      std::string where;
      EXPECT_TRUE(same_bits(got, chain, &where)) << "linear " << name << " " << where;
    }
    check_config(f, *r.out, kLayers);
  }
  // slerp
  {
    const MergeRun r = merge(dir, R"(merge_method: slerp
base_model: base
models:
  - model: base
  - model: ft_1
parameters: {t: 0.3}
)", "slerp");
    EXPECT_EQ(names_of(*r.out), names_of(*r.base));
    for (const auto& name : names_of(*r.out)) {
      const auto want = reference("slerp", name, {{r.base.get(), name, {}, true}, {r.ft1.get(), name, {}}}, {{"t", 0.3}});
      std::string where;
      EXPECT_TRUE(same_bits(values(*r.out, name), want, &where)) << "slerp " << name << " " << where;
    }
  }
  // ties (magnitude masks), dare_ties and della (random masks, the kept entries rescaled to the
  // task vector's L1 norm)
  for (const std::string method : {"ties", "dare_ties", "della"}) {
    const MergeRun r = merge(dir, "merge_method: " + method + R"(
base_model: base
models:
  - model: ft_1
    parameters: {weight: 0.5, density: 0.5}
  - model: ft_2
    parameters: {weight: 0.7, density: 0.6}
)",
                             method);
    EXPECT_EQ(names_of(*r.out), names_of(*r.base));
    for (const auto& name : names_of(*r.out)) {
      // mergekit's order: the listed models, then the unlisted base.
      const auto want = reference(method, name,
                                  {{r.ft1.get(), name, {{"weight", 0.5}, {"density", 0.5}}},
                                   {r.ft2.get(), name, {{"weight", 0.7}, {"density", 0.6}}},
                                   {r.base.get(), name, {}, true}},
                                  {});
      std::string where;
      EXPECT_TRUE(same_bits(values(*r.out, name), want, &where))
          << method << " " << name << " " << where;
    }
  }
  // passthrough: all of ft_1's layers, then ft_2's last two (6 layers)
  {
    const MergeRun r = merge(dir, R"(merge_method: passthrough
slices:
  - sources:
      - model: ft_1
        layer_range: [0, 4]
  - sources:
      - model: ft_2
        layer_range: [2, 4]
)", "stack");
    const std::string p = layer_prefix(f);
    std::set<std::string> expected;
    // Outside the layers, mergekit's rule: embeddings from the first slice, the rest (final norm,
    // lm_head, sub-models) from the last.
    for (const auto& name : names_of(*r.ft1)) {
      const auto [layer, suffix] = split(f, name);
      if (layer < 0) {
        expected.insert(name);
        const Model& src = name.find("embed") != std::string::npos ? *r.ft1 : *r.ft2;
        std::string where;
        EXPECT_TRUE(same_bits(values(*r.out, name), values(src, name), &where)) << name << " " << where;
      }
    }
    for (int j = 0; j < 6; ++j) {
      const Model& src = j < 4 ? *r.ft1 : *r.ft2;
      const int layer = j < 4 ? j : j - 4 + 2;
      for (const auto& name : names_of(src)) {
        const auto [l, suffix] = split(f, name);
        if (l != layer) continue;
        const std::string out_name = p + std::to_string(j) + "." + suffix;
        expected.insert(out_name);
        std::string where;
        EXPECT_TRUE(same_bits(values(*r.out, out_name), values(src, name), &where)) << out_name << " " << where;
      }
    }
    EXPECT_EQ(names_of(*r.out), expected);
    check_config(f, *r.out, 6);
  }
  // layer-gradient slerp: t = l / (L - 1) in the layers, 0 outside them
  {
    const MergeRun r = merge(dir, R"(merge_method: slerp
base_model: base
slices:
  - sources:
      - model: base
        layer_range: [0, 4]
      - model: ft_2
        layer_range: [0, 4]
parameters:
  t: [0.0, 1.0]
)", "gradient");
    EXPECT_EQ(names_of(*r.out), names_of(*r.base));
    int interpolated = 0;
    for (const auto& name : names_of(*r.out)) {
      const auto [layer, suffix] = split(f, name);
      const double t = layer < 0 ? 0.0 : static_cast<double>(layer) / (kLayers - 1);
      const auto want = reference("slerp", name, {{r.base.get(), name, {}, true}, {r.ft2.get(), name, {}}}, {{"t", t}});
      std::string where;
      EXPECT_TRUE(same_bits(values(*r.out, name), want, &where)) << "gradient " << name << " t=" << t << " " << where;
      if (layer == 1) interpolated += values(*r.out, name) != values(*r.base, name);
    }
    EXPECT_GT(interpolated, 0) << "the gradient reached the layers";
    check_config(f, *r.out, kLayers);
  }
}

std::vector<FamilyCase> cases() {
  return {{"llama"},        {"llama", true}, {"mistral", false, 20'000}, {"gemma2"},      {"phi3"},
          {"mixtral"},      {"qwen3"},       {"qwen3_moe"},               {"qwen3_next"},  {"qwen3_5_moe"},
          {"qwen3_5_moe", true}, {"gpt_oss"}, {"deepseek_v3"}};
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyMerge, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.label(); });

// Layers of different kinds cannot be merged with each other: a clear refusal, not a missing tensor.
TEST(FamilyMergeRefusals, LinearAttentionLayerWithFullAttentionLayer) {
  const FamilyDir dir({"qwen3_next"});
  try {
    plan_merge(parse_recipe(R"(merge_method: linear
slices:
  - sources:
      - model: ft_1
        layer_range: [2, 4]
        parameters: {weight: 1}
      - model: ft_2
        layer_range: [1, 3]
        parameters: {weight: 1}
)", "r.yml"),
               plan_options(dir.path()));
    ADD_FAILURE() << "planned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("only layers of the same kind can be merged"), std::string::npos) << e.what();
  }
}

// A dense-prefix count cannot describe a dense layer after a routed-expert one.
TEST(FamilyMergeRefusals, DeepSeekDenseLayerAfterMoeLayer) {
  const FamilyDir dir({"deepseek_v3"});
  try {
    plan_merge(parse_recipe(R"(merge_method: passthrough
slices:
  - sources:
      - model: ft_1
        layer_range: [1, 2]
  - sources:
      - model: ft_1
        layer_range: [0, 1]
)", "r.yml"),
               plan_options(dir.path()));
    ADD_FAILURE() << "planned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("first_k_dense_replace"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace alloy
