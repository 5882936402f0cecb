// alloy/perturb/perturb.h: every hide-the-merge transform on f32 synthetic models of both families.
// Function-preserving kinds are checked with a reference forward pass of one decoder block
// (RMSNorm, grouped-query attention with RoPE and a causal softmax, RMSNorm, SiLU MLP or routed
// top-k experts plus a sigmoid-gated shared expert) in Eigen, float64, before and after; a control
// that swaps one transformed tensor back shows the comparison can fail. Value kinds are checked
// against their strength, stacking against its layer map; then determinism and errors.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>

#include "alloy/core/dtype.h"
#include "alloy/core/error.h"
#include "alloy/core/file_util.h"
#include "alloy/core/model.h"
#include "alloy/core/parallel.h"
#include "alloy/core/sha256.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"
#include "reference_forward.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::ModelFamily;
using alloy::PerturbKind;
using alloy::test::TempDir;
using nlohmann::json;
using namespace alloy::test::ref;

alloy::BaseModelOptions small(ModelFamily family, uint64_t seed = 7) {
  alloy::BaseModelOptions o;
  o.arch.family = family;
  o.arch.layers = 2;
  o.arch.hidden = 64;
  o.arch.intermediate = 48;
  o.arch.heads = 8;
  o.arch.kv_heads = family == ModelFamily::kMoe ? 4 : 2;  // groups of 4 and of 2 query heads
  o.arch.vocab = 32;
  o.arch.experts = 4;
  o.arch.experts_per_token = 2;
  o.arch.moe_intermediate = 16;
  o.arch.shared_expert = true;
  o.arch.attention_bias = family == ModelFamily::kMoe;  // as real Qwen2-MoE
  o.dtype = alloy::DType::F32;
  o.seed = seed;
  return o;
}

fs::path make_base(const TempDir& dir, ModelFamily family, const std::string& name = "base",
                   uint64_t seed = 7) {
  const fs::path path = dir / name;
  alloy::synth_base_model(path, small(family, seed));
  return path;
}

alloy::PerturbOptions options(PerturbKind kind, uint64_t seed = 11) {
  alloy::PerturbOptions o;
  o.kind = kind;
  o.seed = seed;
  return o;
}

json read_json(const fs::path& path) {
  return json::parse(alloy::read_text_file(path));
}

bool same_bytes(const alloy::Model& a, const alloy::Model& b, const std::string& name) {
  const auto *x = a.find(name), *y = b.find(name);
  return x && y && x->info->nbytes() == y->info->nbytes() &&
         std::memcmp(x->data(), y->data(), x->info->nbytes()) == 0;
}

// ---- the reference forward pass of one decoder block ----

Mat attention(const alloy::Architecture& arch, const Weights& w, const std::string& p,
              const Mat& h) {
  const int heads = arch.heads, d = arch.head_dim();
  Mat q = linear(h, w(p + "q_proj.weight")), k = linear(h, w(p + "k_proj.weight")),
      v = linear(h, w(p + "v_proj.weight"));
  if (arch.attention_bias) {
    q.rowwise() += w(p + "q_proj.bias").row(0);
    k.rowwise() += w(p + "k_proj.bias").row(0);
    v.rowwise() += w(p + "v_proj.bias").row(0);
  }
  rope(&q, heads, d, d);
  rope(&k, arch.kv_heads, d, d);
  const Mat context = attend(q, k, v, heads, arch.kv_heads, d);
  return linear(context, w(p + "o_proj.weight"));
}

Mat mlp(const Weights& w, const std::string& p, const Mat& h) {
  return linear(
      silu(linear(h, w(p + "gate_proj.weight"))).cwiseProduct(linear(h, w(p + "up_proj.weight"))),
      w(p + "down_proj.weight"));
}

// Qwen2-MoE: softmax router, top-k experts weighted by their (unnormalised) probabilities, plus
// the shared expert gated by sigmoid(shared_expert_gate h).
Mat moe(const alloy::Architecture& arch, const Weights& w, const std::string& p, const Mat& h) {
  const Mat logits = linear(h, w(p + "gate.weight"));
  Mat out = Mat::Zero(h.rows(), h.cols());
  std::vector<Mat> experts(arch.experts);
  for (Eigen::Index t = 0; t < h.rows(); ++t) {
    for (const auto& [e, p_e] : route(logits.row(t), arch.experts_per_token, false)) {
      if (experts[e].size() == 0) experts[e] = mlp(w, p + "experts." + std::to_string(e) + ".", h);
      out.row(t) += p_e * experts[e].row(t);
    }
  }
  if (arch.shared_expert) {
    const Mat gate = linear(h, w(p + "shared_expert_gate.weight")).unaryExpr([](double v) {
      return 1 / (1 + std::exp(-v));
    });
    out += gate.col(0).asDiagonal() * mlp(w, p + "shared_expert.", h);
  }
  return out;
}

Mat decoder_block(const alloy::Architecture& arch, const Weights& w, int layer, const Mat& x) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const Mat x1 =
      x + attention(arch, w, p + "self_attn.", rms_norm(x, w(p + "input_layernorm.weight")));
  const Mat h = rms_norm(x1, w(p + "post_attention_layernorm.weight"));
  return x1 +
         (arch.family == ModelFamily::kMoe ? moe(arch, w, p + "mlp.", h) : mlp(w, p + "mlp.", h));
}

Mat final_logits(const Weights& w, const Mat& x) {
  return linear(rms_norm(x, w("model.norm.weight")), w("lm_head.weight"));
}

// ---- function preservation ----

struct PreservingCase {
  PerturbKind kind;
  ModelFamily family;
  // A per-layer tensor (suffix after "model.layers.L.") whose transformed value, swapped back for
  // the original, must break the function: the control that shows the test can fail.
  const char* control;
};

void PrintTo(const PreservingCase& c, std::ostream* os) {
  *os << alloy::perturb_kind_name(c.kind) << " on " << alloy::family_name(c.family);
}

std::string case_name(const testing::TestParamInfo<PreservingCase>& info) {
  std::string name = std::string(alloy::perturb_kind_name(info.param.kind)) + "_" +
                     alloy::family_name(info.param.family);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

class PerturbPreserves : public testing::TestWithParam<PreservingCase> {};

TEST_P(PerturbPreserves, BlockOutputBeforeAndAfter) {
  const PreservingCase c = GetParam();
  TempDir dir;
  const fs::path base = make_base(dir, c.family);
  const json truth = alloy::perturb_model(base, dir / "out", options(c.kind));
  EXPECT_EQ(truth, read_json(dir / "out" / "alloy_perturb.json"));
  EXPECT_TRUE(truth["function_preserving"].get<bool>());
  EXPECT_TRUE(alloy::perturb_preserves_function(c.kind));
  const auto before = alloy::Model::open(base), after = alloy::Model::open(dir / "out");
  ASSERT_EQ(before.tensors().size(), after.tensors().size());
  const auto arch = alloy::architecture_from_config(after.config());
  const Mat x = random_tokens(5, arch.hidden, 3);
  int controls = 0;
  for (int layer = 0; layer < arch.layers; ++layer) {
    const Mat expected = decoder_block(arch, weights_of(before), layer, x);
    const Mat got = decoder_block(arch, weights_of(after), layer, x);
    EXPECT_LT(relative_difference(got, expected), 1e-4) << "layer " << layer;
    // The control: the transformed model with one transformed tensor put back as it was.
    const std::string swapped = "model.layers." + std::to_string(layer) + "." + c.control;
    if (same_bytes(before, after, swapped)) continue;  // e.g. an identity permutation drawn
    ++controls;
    const Weights mixed = [&](const std::string& name) {
      return matrix(name == swapped ? before : after, name);
    };
    EXPECT_GT(relative_difference(decoder_block(arch, mixed, layer, x), expected), 1e-3) << swapped;
  }
  EXPECT_GE(controls, 1) << "no layer changed " << c.control;
  if (c.kind == PerturbKind::kFoldNorms) {  // model.norm folded into lm_head
    EXPECT_LT(relative_difference(final_logits(weights_of(after), x),
                                  final_logits(weights_of(before), x)),
              1e-4);
    EXPECT_FALSE(same_bytes(before, after, "lm_head.weight"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Perturb, PerturbPreserves,
    testing::Values(
        PreservingCase{PerturbKind::kPermuteExperts, ModelFamily::kMoe, "mlp.gate.weight"},
        PreservingCase{PerturbKind::kPermuteNeurons, ModelFamily::kLlama, "mlp.up_proj.weight"},
        PreservingCase{PerturbKind::kPermuteNeurons, ModelFamily::kMoe,
                       "mlp.shared_expert.down_proj.weight"},
        PreservingCase{PerturbKind::kPermuteHeads, ModelFamily::kLlama, "self_attn.o_proj.weight"},
        PreservingCase{PerturbKind::kPermuteHeads, ModelFamily::kMoe, "self_attn.k_proj.weight"},
        PreservingCase{PerturbKind::kRescaleNeurons, ModelFamily::kLlama, "mlp.down_proj.weight"},
        PreservingCase{PerturbKind::kRescaleNeurons, ModelFamily::kMoe,
                       "mlp.shared_expert.up_proj.weight"},
        PreservingCase{PerturbKind::kFoldNorms, ModelFamily::kLlama, "input_layernorm.weight"},
        PreservingCase{PerturbKind::kFoldNorms, ModelFamily::kMoe,
                       "post_attention_layernorm.weight"}),
    case_name);

// ---- rotate-residual: the whole model's logits, before and after ----

// Token ids -> embeddings -> every decoder block -> final norm -> lm_head, in float64.
Mat model_logits(const alloy::Architecture& arch, const Weights& w, const std::vector<int>& ids) {
  const Mat embed = w("model.embed_tokens.weight");
  Mat x(Eigen::Index(ids.size()), embed.cols());
  for (size_t t = 0; t < ids.size(); ++t) x.row(Eigen::Index(t)) = embed.row(ids[t]);
  for (int layer = 0; layer < arch.layers; ++layer) x = decoder_block(arch, w, layer, x);
  return final_logits(w, x);
}

struct RotationCase {
  ModelFamily family;
  alloy::ResidualRotation rotation;
};

class PerturbRotation : public testing::TestWithParam<RotationCase> {};

TEST_P(PerturbRotation, LogitsUnchangedAndTruthMatchesTheWeights) {
  const RotationCase c = GetParam();
  TempDir dir;
  const fs::path base = make_base(dir, c.family);
  alloy::PerturbOptions o = options(PerturbKind::kRotateResidual);
  o.rotation = c.rotation;
  const json truth = alloy::perturb_model(base, dir / "out", o);
  EXPECT_EQ(truth, read_json(dir / "out" / "alloy_perturb.json"));
  EXPECT_TRUE(truth["function_preserving"].get<bool>());
  const auto before = alloy::Model::open(base), after = alloy::Model::open(dir / "out");
  const auto arch = alloy::architecture_from_config(after.config());
  const std::vector<int> ids = {3, 17, 0, 31, 8, 8, 22};
  const Mat expected = model_logits(arch, weights_of(before), ids);
  EXPECT_LT(relative_difference(model_logits(arch, weights_of(after), ids), expected), 1e-4);
  // Q as documented: orthogonal, the embeddings are exactly E Q, its hash is recorded.
  const std::vector<double> qv = alloy::residual_rotation(11, arch.hidden, c.rotation);
  const Mat q = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      qv.data(), arch.hidden, arch.hidden);
  EXPECT_LT((q.transpose() * q - Mat::Identity(arch.hidden, arch.hidden)).norm(), 1e-12);
  EXPECT_LT(relative_difference(matrix(after, "model.embed_tokens.weight"),
                                matrix(before, "model.embed_tokens.weight") * q),
            1e-6);
  EXPECT_EQ(truth["rotation"]["sha256"], alloy::sha256_hex(qv.data(), qv.size() * sizeof(double)));
  EXPECT_EQ(truth["rotation"]["kind"], alloy::residual_rotation_name(c.rotation));
  if (c.rotation == alloy::ResidualRotation::kHadamard) {
    EXPECT_LT((q.cwiseAbs().array() * std::sqrt(double(arch.hidden)) - 1).abs().maxCoeff(), 1e-12);
    EXPECT_EQ(truth["rotation"]["signs"].size(), size_t(arch.hidden));
  }
  // Every norm gain is now 1 (RMSNorm commutes with Q only then), folded gains recorded.
  EXPECT_EQ(truth["layers"].size(), size_t(arch.layers));
  for (const auto& t : after.tensors()) {
    if (t.name().find("norm.weight") == std::string::npos) continue;
    EXPECT_EQ(matrix(after, t.name()).maxCoeff(), 1.0) << t.name();
    EXPECT_EQ(matrix(after, t.name()).minCoeff(), 1.0) << t.name();
  }
  const size_t writers = truth["rotated"]["writers"].size(), readers = truth["rotated"]["readers"].size();
  EXPECT_EQ(writers, size_t(arch.layers) * (c.family == ModelFamily::kMoe ? 2 + arch.experts : 2));
  EXPECT_EQ(truth["rotated"]["embeddings"], json::array({"model.embed_tokens.weight"}));
  EXPECT_GT(readers, writers);
  // The control: one writer left unrotated breaks the function.
  const std::string swapped = "model.layers.1.self_attn.o_proj.weight";
  const Weights mixed = [&](const std::string& name) { return matrix(name == swapped ? before : after, name); };
  EXPECT_GT(relative_difference(model_logits(arch, mixed, ids), expected), 1e-3);
  // Another seed, another Q.
  EXPECT_NE(alloy::residual_rotation(12, arch.hidden, c.rotation), qv);
}

INSTANTIATE_TEST_SUITE_P(
    Perturb, PerturbRotation,
    testing::Values(RotationCase{ModelFamily::kLlama, alloy::ResidualRotation::kRandom},
                    RotationCase{ModelFamily::kMoe, alloy::ResidualRotation::kRandom},
                    RotationCase{ModelFamily::kLlama, alloy::ResidualRotation::kHadamard}),
    [](const testing::TestParamInfo<RotationCase>& info) {
      return std::string(alloy::family_name(info.param.family)) + "_" +
             alloy::residual_rotation_name(info.param.rotation);
    });

TEST(PerturbRotation, RefusesWhatItCannotRotate) {
  TempDir dir;
  EXPECT_THROW(alloy::residual_rotation(1, 48, alloy::ResidualRotation::kHadamard), alloy::Error);
  EXPECT_THROW(alloy::residual_rotation(1, 0, alloy::ResidualRotation::kRandom), alloy::Error);
  // Tied embeddings: the final norm cannot be folded into lm_head.
  alloy::BaseModelOptions b = small(ModelFamily::kLlama);
  b.arch.tie_embeddings = true;
  alloy::synth_base_model(dir / "tied", b);
  try {
    alloy::perturb_model(dir / "tied", dir / "out", options(PerturbKind::kRotateResidual));
    ADD_FAILURE() << "no error";
  } catch (const alloy::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// ---- the ground truth of the structural kinds matches the weights ----

TEST(PerturbTruth, ExpertPermutationMovesExpertsAndRouterRows) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kMoe);
  const json truth = alloy::perturb_model(base, dir / "out", options(PerturbKind::kPermuteExperts));
  const auto before = alloy::Model::open(base), after = alloy::Model::open(dir / "out");
  ASSERT_EQ(truth["layers"].size(), 2u);
  bool moved = false;
  for (const auto& layer : truth["layers"]) {
    const std::string p = "model.layers." + std::to_string(layer["layer"].get<int>()) + ".mlp.";
    const auto perm = layer["experts"].get<std::vector<int>>();
    ASSERT_EQ(perm.size(), 4u);
    std::vector<int> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2, 3}));
    const Mat router_before = matrix(before, p + "gate.weight"),
              router_after = matrix(after, p + "gate.weight");
    for (int j = 0; j < 4; ++j) {
      moved |= perm[j] != j;
      EXPECT_EQ(router_after.row(j), router_before.row(perm[j]));
      for (const char* part : {"gate_proj", "up_proj", "down_proj"}) {
        EXPECT_EQ(
            values(after, p + "experts." + std::to_string(j) + "." + part + ".weight"),
            values(before, p + "experts." + std::to_string(perm[j]) + "." + part + ".weight"));
      }
    }
  }
  EXPECT_TRUE(moved);
  EXPECT_TRUE(same_bytes(before, after, "model.embed_tokens.weight"));
}

TEST(PerturbTruth, NeuronAndHeadPermutationsAreThoseRecorded) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kMoe);
  const auto before = alloy::Model::open(base);
  {
    const json truth =
        alloy::perturb_model(base, dir / "neurons", options(PerturbKind::kPermuteNeurons));
    const auto after = alloy::Model::open(dir / "neurons");
    for (const auto& layer : truth["layers"]) {
      const std::string p = "model.layers." + std::to_string(layer["layer"].get<int>()) + ".mlp.";
      ASSERT_EQ(layer["experts"].size(), 4u);
      const auto check = [&](const std::string& prefix, const std::vector<int>& perm) {
        const Mat gate0 = matrix(before, prefix + "gate_proj.weight"),
                  gate1 = matrix(after, prefix + "gate_proj.weight");
        const Mat down0 = matrix(before, prefix + "down_proj.weight"),
                  down1 = matrix(after, prefix + "down_proj.weight");
        ASSERT_EQ(size_t(gate0.rows()), perm.size());
        for (size_t j = 0; j < perm.size(); ++j) {
          EXPECT_EQ(gate1.row(j), gate0.row(perm[j])) << prefix;
          EXPECT_EQ(down1.col(j), down0.col(perm[j])) << prefix;
        }
      };
      for (int e = 0; e < 4; ++e)
        check(p + "experts." + std::to_string(e) + ".", layer["experts"][e]);
      check(p + "shared_expert.", layer["shared_expert"]);
    }
  }
  {
    const json truth =
        alloy::perturb_model(base, dir / "heads", options(PerturbKind::kPermuteHeads));
    EXPECT_EQ(truth["group_size"], 2);
    bool groups_moved = false;
    const auto after = alloy::Model::open(dir / "heads");
    for (const auto& layer : truth["layers"]) {
      const auto heads = layer["heads"].get<std::vector<int>>(),
                 kv = layer["kv_heads"].get<std::vector<int>>();
      ASSERT_EQ(heads.size(), 8u);
      ASSERT_EQ(kv.size(), 4u);
      const std::string p =
          "model.layers." + std::to_string(layer["layer"].get<int>()) + ".self_attn.";
      const Mat q0 = matrix(before, p + "q_proj.weight"), q1 = matrix(after, p + "q_proj.weight");
      const Mat b0 = matrix(before, p + "k_proj.bias"), b1 = matrix(after, p + "k_proj.bias");
      for (int h = 0; h < 8; ++h) {
        EXPECT_EQ(heads[h] / 2, kv[h / 2]) << "query head " << h << " left its key-value group";
        EXPECT_EQ(q1.middleRows(h * 8, 8), q0.middleRows(heads[h] * 8, 8));
      }
      for (int g = 0; g < 4; ++g) {
        EXPECT_EQ(b1.middleCols(g * 8, 8), b0.middleCols(kv[g] * 8, 8));
        groups_moved |= kv[g] != g;
      }
    }
    EXPECT_TRUE(groups_moved);
  }
}

TEST(PerturbTruth, RescaleFactorsAndFoldedGainsAreThoseRecorded) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kLlama);
  const auto before = alloy::Model::open(base);
  alloy::PerturbOptions o = options(PerturbKind::kRescaleNeurons);
  o.strength = 3.0;
  const json truth = alloy::perturb_model(base, dir / "rescale", o);
  EXPECT_EQ(truth["strength"], 3.0);
  const auto after = alloy::Model::open(dir / "rescale");
  for (const auto& layer : truth["layers"]) {
    const std::string p = "model.layers." + std::to_string(layer["layer"].get<int>()) + ".mlp.";
    const auto c = layer["mlp"].get<std::vector<float>>();
    ASSERT_EQ(c.size(), 48u);
    const Mat up0 = matrix(before, p + "up_proj.weight"), up1 = matrix(after, p + "up_proj.weight");
    double low = 1e9, high = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      low = std::min<double>(low, c[i]), high = std::max<double>(high, c[i]);
      EXPECT_LT((up1.row(i) - up0.row(i) * c[i]).norm(), 1e-6 * up1.row(i).norm());
    }
    EXPECT_GE(low, 1 / 3.0 - 1e-6);
    EXPECT_LE(high, 3.0 + 1e-6);
    EXPECT_LT(low, 0.8);  // spread over the range, not all near 1
    EXPECT_GT(high, 1.25);
    EXPECT_TRUE(same_bytes(before, after, p + "gate_proj.weight"));
  }

  const json fold = alloy::perturb_model(base, dir / "fold", options(PerturbKind::kFoldNorms));
  const auto folded = alloy::Model::open(dir / "fold");
  for (const auto& layer : fold["layers"]) {
    const std::string p = "model.layers." + std::to_string(layer["layer"].get<int>()) + ".";
    EXPECT_EQ(layer["input_layernorm"].get<std::vector<float>>(),
              values(before, p + "input_layernorm.weight"));
    for (const char* norm : {"input_layernorm.weight", "post_attention_layernorm.weight"}) {
      for (float g : values(folded, p + norm)) ASSERT_EQ(g, 1.0f) << norm;
    }
  }
  EXPECT_EQ(fold["final_norm"].get<std::vector<float>>(), values(before, "model.norm.weight"));
}

// ---- value perturbations: the measured size is the strength ----

TEST(PerturbValues, NoiseNormIsTheStrengthTimesTheRmsOrTheDeviation) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kMoe);
  alloy::PerturbOptions o = options(PerturbKind::kNoise);
  o.strength = 0.02;
  const json truth = alloy::perturb_model(base, dir / "rms", o);
  EXPECT_EQ(truth["relative_to"], "rms");
  EXPECT_FALSE(truth["function_preserving"].get<bool>());
  const auto before = alloy::Model::open(base), after = alloy::Model::open(dir / "rms");
  ASSERT_EQ(truth["tensors"].size(), before.tensors().size());
  for (const auto& record : truth["tensors"]) {
    const std::string name = record["name"];
    const auto w = values(before, name), out = values(after, name);
    double base_sq = 0, noise_sq = 0;
    for (size_t i = 0; i < w.size(); ++i)
      base_sq += double(w[i]) * w[i], noise_sq += std::pow(double(out[i]) - w[i], 2);
    const double rms = std::sqrt(base_sq / w.size()), noise_rms = std::sqrt(noise_sq / w.size());
    EXPECT_NEAR(noise_rms / rms, 0.02, 0.05 * 0.02) << name;
    EXPECT_NEAR(record["applied_norm"].get<double>(), std::sqrt(noise_sq),
                1e-6 * std::sqrt(noise_sq))
        << name;
    EXPECT_NEAR(record["noise_norm"].get<double>() / record["norm"].get<double>(), 0.02, 1e-4)
        << name;
  }

  // Relative to a reference: ||OUT - IN|| = strength * ||IN - REF||.
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.05;
  alloy::synth_fine_tune(base, dir / "ft", ft);
  o.strength = 0.5;
  o.reference = base;
  const json ref_truth = alloy::perturb_model(dir / "ft", dir / "ref", o);
  EXPECT_EQ(ref_truth["relative_to"], "reference");
  EXPECT_EQ(ref_truth["reference"], "base");
  const auto tuned = alloy::Model::open(dir / "ft"), noisy = alloy::Model::open(dir / "ref");
  for (const auto& t : tuned.tensors()) {
    const auto in = values(tuned, t.name()), ref = values(before, t.name()),
               out = values(noisy, t.name());
    double deviation = 0, noise = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      deviation += std::pow(double(in[i]) - ref[i], 2),
          noise += std::pow(double(out[i]) - in[i], 2);
    }
    EXPECT_NEAR(std::sqrt(noise / deviation), 0.5, 0.05 * 0.5) << t.name();
  }
}

TEST(PerturbValues, RoundTripErrorsAreBoundedByHalfAQuantizationStep) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kLlama);
  const auto before = alloy::Model::open(base);
  for (const auto format : {alloy::ReroundFormat::kInt8, alloy::ReroundFormat::kInt4}) {
    alloy::PerturbOptions o = options(PerturbKind::kReround);
    o.format = format;
    const std::string name = alloy::reround_format_name(format);
    const json truth = alloy::perturb_model(base, dir / name, o);
    EXPECT_EQ(truth["format"], name);
    EXPECT_TRUE(truth["strength"].is_null());
    const auto after = alloy::Model::open(dir / name);
    const bool int8 = format == alloy::ReroundFormat::kInt8;
    const double levels = int8 ? 127 : 7;
    for (const auto& t : before.tensors()) {
      const auto w = values(before, t.name()), out = values(after, t.name());
      const uint64_t cols = t.info->shape.back();
      const uint64_t span = int8 ? cols : 32;
      bool changed = false;
      for (uint64_t start = 0; start < w.size(); start += std::min(span, cols - start % cols)) {
        const uint64_t width = std::min(span, cols - start % cols);
        double absmax = 0;
        for (uint64_t i = start; i < start + width; ++i)
          absmax = std::max(absmax, std::fabs(double(w[i])));
        const double step = absmax / levels;
        for (uint64_t i = start; i < start + width; ++i) {
          ASSERT_LE(std::fabs(double(out[i]) - w[i]), 0.5 * step * (1 + 1e-5))
              << name << " " << t.name() << " " << i;
          // Every value is (close to) an integer multiple of the step.
          const double q = double(out[i]) / step;
          ASSERT_NEAR(q, std::nearbyint(q), 1e-3) << name << " " << t.name() << " " << i;
          changed |= out[i] != w[i];
        }
      }
      EXPECT_TRUE(changed) << name << " " << t.name();
    }
  }
  for (const auto format : {alloy::ReroundFormat::kBf16, alloy::ReroundFormat::kF16}) {
    alloy::PerturbOptions o = options(PerturbKind::kReround);
    o.format = format;
    const std::string name = alloy::reround_format_name(format);
    alloy::perturb_model(base, dir / name, o);
    const auto after = alloy::Model::open(dir / name);
    const auto dtype =
        format == alloy::ReroundFormat::kBf16 ? alloy::DType::BF16 : alloy::DType::F16;
    for (const auto& t : before.tensors()) {
      const auto w = values(before, t.name()), out = values(after, t.name());
      for (size_t i = 0; i < w.size(); ++i)
        ASSERT_EQ(out[i], alloy::round_to(dtype, w[i])) << name << t.name();
    }
    EXPECT_EQ(after.tensors()[0].info->dtype, alloy::DType::F32);  // back to the original dtype
  }
}

TEST(PerturbValues, FineTuneIsSynthFineTuneWithTheStrengthAsDelta) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kMoe);
  alloy::PerturbOptions o = options(PerturbKind::kFineTune, 5);
  o.strength = 0.03;
  o.rank = 4;
  const json truth = alloy::perturb_model(base, dir / "out", o);
  for (const auto& record : truth["tensors"]) {
    EXPECT_NEAR(record["applied_norm"].get<double>() / record["norm"].get<double>(), 0.03, 1e-3)
        << record["name"];
  }
  alloy::FineTuneOptions ft;
  ft.relative_delta = 0.03;
  ft.rank = 4;
  ft.seed = 5;
  alloy::synth_fine_tune(base, dir / "ft", ft);
  EXPECT_EQ(alloy::test::read_bytes(dir / "out" / "model.safetensors"),
            alloy::test::read_bytes(dir / "ft" / "model.safetensors"));
  EXPECT_EQ(truth["rank"], 4);
}

// ---- stacking ----

TEST(PerturbStack, LayersFollowTheMapAndTheConfigCountsThem) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kLlama);
  alloy::PerturbOptions o = options(PerturbKind::kStackLayers);
  o.layer_map = alloy::parse_layer_map("0,1,1,0,1");
  const json truth = alloy::perturb_model(base, dir / "out", o);
  EXPECT_EQ(truth["layer_map"], json({0, 1, 1, 0, 1}));
  EXPECT_EQ(truth["source_layers"], 2);
  const auto before = alloy::Model::open(base), after = alloy::Model::open(dir / "out");
  EXPECT_EQ(after.config()["num_hidden_layers"], 5);
  EXPECT_EQ(alloy::architecture_from_config(after.config()).layers, 5);
  size_t per_layer = 0;
  for (const auto& t : before.tensors()) per_layer += t.name().rfind("model.layers.0.", 0) == 0;
  EXPECT_EQ(after.tensors().size(), before.tensors().size() + 3 * per_layer);
  for (const auto& t : after.tensors()) {
    alloy::SynthTensor info;
    ASSERT_TRUE(alloy::classify_tensor(t.name(), &info)) << t.name();
    std::string source = t.name();
    if (info.layer >= 0) {
      const std::string prefix = "model.layers." + std::to_string(info.layer) + ".";
      source = "model.layers." + std::to_string(o.layer_map[info.layer]) + "." +
               t.name().substr(prefix.size());
    }
    EXPECT_EQ(values(after, t.name()), values(before, source)) << t.name();
  }
  EXPECT_THROW(alloy::parse_layer_map("0,,1"), alloy::Error);
  EXPECT_THROW(alloy::parse_layer_map("0,-1"), alloy::Error);
  EXPECT_THROW(alloy::parse_layer_map(""), alloy::Error);
}

// ---- determinism ----

TEST(PerturbDeterminism, SameSeedSameBytesOnAnyThreadCountOtherSeedOtherBytes) {
  TempDir dir;
  const fs::path base = make_base(dir, ModelFamily::kMoe);
  for (const auto kind : {PerturbKind::kNoise, PerturbKind::kPermuteExperts,
                          PerturbKind::kPermuteHeads, PerturbKind::kRescaleNeurons}) {
    const std::string name = alloy::perturb_kind_name(kind);
    alloy::set_thread_count(1);
    alloy::perturb_model(base, dir / (name + "_a"), options(kind, 21));
    alloy::set_thread_count(2);
    alloy::perturb_model(base, dir / (name + "_b"), options(kind, 21));
    alloy::set_thread_count(0);
    alloy::perturb_model(base, dir / (name + "_c"), options(kind, 22));
    for (const char* file :
         {"model.safetensors", "alloy_perturb.json", "config.json", "tokenizer.json"}) {
      EXPECT_EQ(alloy::test::read_bytes(dir / (name + "_a") / file),
                alloy::test::read_bytes(dir / (name + "_b") / file))
          << name << " " << file;
    }
    EXPECT_NE(alloy::test::read_bytes(dir / (name + "_a") / "model.safetensors"),
              alloy::test::read_bytes(dir / (name + "_c") / "model.safetensors"))
        << name;
  }
}

// ---- errors ----

TEST(PerturbErrors, KindAndFormatNamesRoundTrip) {
  EXPECT_EQ(alloy::perturb_kinds().size(), 10u);
  int preserving = 0;
  for (const auto kind : alloy::perturb_kinds()) {
    EXPECT_EQ(alloy::perturb_kind_from_name(alloy::perturb_kind_name(kind)), kind);
    preserving += alloy::perturb_preserves_function(kind);
  }
  EXPECT_EQ(preserving, 6);
  EXPECT_EQ(alloy::perturb_default_strength(PerturbKind::kNoise), 0.01);
  EXPECT_FALSE(alloy::perturb_default_strength(PerturbKind::kPermuteExperts));
  EXPECT_FALSE(alloy::perturb_kind_from_name("Noise"));
  for (const auto f : {alloy::ReroundFormat::kBf16, alloy::ReroundFormat::kF16,
                       alloy::ReroundFormat::kInt8, alloy::ReroundFormat::kInt4}) {
    EXPECT_EQ(alloy::reround_format_from_name(alloy::reround_format_name(f)), f);
  }
  EXPECT_FALSE(alloy::reround_format_from_name("int3"));
}

TEST(PerturbErrors, BadOptionsAreRefusedBeforeAnythingIsWritten) {
  TempDir dir;
  const fs::path dense = make_base(dir, ModelFamily::kLlama);
  struct Case {
    const char* what;
    alloy::PerturbOptions options;
    const char* message;
  };
  std::vector<Case> cases;
  const auto with = [](PerturbKind kind, const std::function<void(alloy::PerturbOptions&)>& edit) {
    alloy::PerturbOptions o = options(kind);
    edit(o);
    return o;
  };
  cases.push_back({"moe-only kind", options(PerturbKind::kPermuteExperts), "needs an MoE model"});
  cases.push_back({"negative noise", with(PerturbKind::kNoise, [](auto& o) { o.strength = -0.1; }),
                   "--strength"});
  cases.push_back({"nan noise",
                   with(PerturbKind::kNoise, [](auto& o) { o.strength = std::nan(""); }),
                   "--strength"});
  cases.push_back({"rescale below 1",
                   with(PerturbKind::kRescaleNeurons, [](auto& o) { o.strength = 0.5; }),
                   "--strength"});
  cases.push_back({"strength on reround",
                   with(PerturbKind::kReround, [](auto& o) { o.strength = 1; }), "--strength"});
  cases.push_back({"no layer map", options(PerturbKind::kStackLayers), "--layer-map"});
  cases.push_back({"layer out of range",
                   with(PerturbKind::kStackLayers,
                        [](auto& o) {
                          o.layer_map = {0, 2};
                        }),
                   "--layer-map"});
  cases.push_back({"reference on fold",
                   with(PerturbKind::kFoldNorms, [&](auto& o) { o.reference = dense; }),
                   "--reference"});
  cases.push_back(
      {"bad rank", with(PerturbKind::kFineTune, [](auto& o) { o.rank = 0; }), "--rank"});
  cases.push_back({"rotation on noise",
                   with(PerturbKind::kNoise, [](auto& o) { o.rotation = alloy::ResidualRotation::kHadamard; }),
                   "--rotation"});
  for (const auto& c : cases) {
    try {
      alloy::perturb_model(dense, dir / "out", c.options);
      ADD_FAILURE() << c.what << ": no error";
    } catch (const alloy::Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << c.what << ": " << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "out")) << c.what;
  }
  // A reference that lacks a tensor of the model.
  const fs::path moe = make_base(dir, ModelFamily::kMoe, "moe");
  alloy::PerturbOptions o = options(PerturbKind::kNoise);
  o.reference = dense;
  EXPECT_THROW(alloy::perturb_model(moe, dir / "out", o), alloy::Error);
  EXPECT_FALSE(fs::exists(dir / "out"));
  // An existing output is kept unless overwrite.
  alloy::perturb_model(dense, dir / "out", options(PerturbKind::kPermuteNeurons));
  EXPECT_THROW(alloy::perturb_model(dense, dir / "out", options(PerturbKind::kPermuteHeads)),
               alloy::Error);
  EXPECT_EQ(read_json(dir / "out" / "alloy_perturb.json")["kind"], "permute-neurons");
  o = options(PerturbKind::kPermuteHeads);
  o.output.overwrite = true;
  alloy::perturb_model(dense, dir / "out", o);
  EXPECT_EQ(read_json(dir / "out" / "alloy_perturb.json")["kind"], "permute-heads");
  // The kinds that read the architecture refuse a model without its config.json, naming the kind
  // and the file.
  const fs::path bare = dir / "bare";
  fs::create_directories(bare);
  for (const auto& e : fs::directory_iterator(dense)) {
    if (e.path().extension() == ".safetensors") fs::copy_file(e.path(), bare / e.path().filename());
  }
  for (const PerturbKind kind :
       {PerturbKind::kPermuteNeurons, PerturbKind::kPermuteHeads, PerturbKind::kRescaleNeurons}) {
    try {
      alloy::perturb_model(bare, dir / "out-bare", options(kind));
      ADD_FAILURE() << alloy::perturb_kind_name(kind) << ": no error";
    } catch (const alloy::Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(std::string("--kind ") + alloy::perturb_kind_name(kind)),
                std::string::npos)
          << message;
      EXPECT_NE(message.find((bare / "config.json").string()), std::string::npos) << message;
    }
    EXPECT_FALSE(fs::exists(dir / "out-bare"));
  }
}

TEST(PerturbCli, WritesAModelAndNamesTheBadFlag) {
  TempDir dir;
  const fs::path moe = make_base(dir, ModelFamily::kMoe, "moe"),
                 dense = make_base(dir, ModelFamily::kLlama, "dense");
  const std::string synth = "'" + alloy::test::bin("alloy-synth") + "'";
  int status = -1;
  std::string out =
      alloy::test::run_command(synth + " perturb '" + moe.string() + "' '" + (dir / "p").string() +
                                   "' --kind permute-experts --seed 4 2>&1",
                               &status);
  ASSERT_EQ(status, 0) << out;
  const auto model = alloy::Model::open(dir / "p");
  EXPECT_EQ(model.tensors().size(), alloy::Model::open(moe).tensors().size());
  for (const char* file :
       {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(alloy::test::read_bytes(dir / "p" / file), alloy::test::read_bytes(moe / file))
        << file;
  }
  EXPECT_FALSE(fs::exists(dir / "p" / "alloy_synth.json"));
  EXPECT_EQ(read_json(dir / "p" / "alloy_perturb.json")["source_record"]["kind"], "base");
  // The library and the tool agree byte for byte.
  alloy::perturb_model(moe, dir / "lib", options(PerturbKind::kPermuteExperts, 4));
  EXPECT_EQ(alloy::test::read_bytes(dir / "p" / "model.safetensors"),
            alloy::test::read_bytes(dir / "lib" / "model.safetensors"));

  out = alloy::test::run_command(synth + " perturb '" + dense.string() + "' '" +
                                     (dir / "s").string() +
                                     "' --kind stack-layers --layer-map 1,0,1 2>&1",
                                 &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(read_json(dir / "s" / "config.json")["num_hidden_layers"], 3);
  out = alloy::test::run_command(
      synth + " perturb '" + dense.string() + "' '" + (dir / "n").string() +
          "' --kind noise --strength 0.1 --reference '" + dense.string() + "' 2>&1",
      &status);
  ASSERT_EQ(status, 0) << out;  // IN == REF: a zero deviation, so no noise at all
  EXPECT_EQ(alloy::test::read_bytes(dir / "n" / "model.safetensors"),
            alloy::test::read_bytes(dense / "model.safetensors"));

  struct Case {
    std::string args, message;
  };
  const std::string in = " perturb '" + dense.string() + "' '" + (dir / "x").string() + "' ";
  const Case cases[] = {
      {in + "--kind shuffle", "unknown --kind 'shuffle'"},
      {in + "--kind permute-experts", "needs an MoE model"},
      {in + "--kind noise --strength -1", "--strength"},
      {in + "--kind noise --strength inf", "--strength"},
      {in + "--kind rescale-neurons --strength 0.9", "--strength"},
      {in + "--kind permute-heads --strength 0.5", "--strength does not apply"},
      {in + "--kind reround --format int3", "--format"},
      {in + "--kind noise --relative-to reference", "--reference"},
      {in + "--kind noise --relative-to mean", "--relative-to"},
      {in + "--kind stack-layers", "--layer-map"},
      {in + "--kind stack-layers --layer-map 0,x", "--layer-map"},
      {in + "--kind stack-layers --layer-map 0,9", "--layer-map"},
      {in, "--kind"},
      {" perturb /nonexistent/model '" + (dir / "x").string() + "' --kind noise",
       "/nonexistent/model"},
      {" perturb '" + dense.string() + "' '" + (dir / "s").string() + "' --kind noise",
       "not empty"},
  };
  for (const auto& c : cases) {
    out = alloy::test::run_command(synth + c.args + " 2>&1", &status);
    EXPECT_NE(status, 0) << c.args;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
    EXPECT_FALSE(fs::exists(dir / "x")) << c.args;
  }
}

}  // namespace
