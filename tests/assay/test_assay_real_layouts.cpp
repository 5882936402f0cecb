// The assay on real checkpoint layouts (issue 10's acceptance): for every family alloy-synth writes
// in a real layout, a linear 0.7 / 0.3 merge of two fine-tunes is recovered within 0.005, as stored
// and after perturb permutes its experts, its neurons or its heads (whichever the family has), and
// every permutation perturb applied is found exactly (and nothing else); a sampled assay (25% of
// the rows) of the stored merge gives the same verdict and weights, and the sampled assay's
// sketched neuron matching finds the permuted neurons as the full one does. The layouts exercise
// the architecture model's units (alloy/core/units.h): Mixtral's w1/w3/w2 experts, Phi-3's fused
// qkv_proj and gate_up_proj, Qwen3-Next's gated q, Qwen3.5's stacked [E, 2I, H] experts under
// model.language_model., GPT-OSS's interleaved [E, H, 2I] experts with biases and sinks, DeepSeek's
// multi-head latent attention, Gemma 2, tied embeddings and sharded files. Below it, what real
// layouts broke once: tensors of 4 elements in the weights' tests, chance equalities of a further
// trained merge read as DELLA, and a Phi-3 merge whose sameness cannot be tested called a
// fine-tune.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "alloy/assay/assay.h"
#include "alloy/merge/merge.h"
#include "alloy/merge/recipe.h"
#include "alloy/perturb/perturb.h"
#include "alloy/synth/synth.h"
#include "assay/internal.h"
#include "test_assay_utils.h"

namespace alloy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct LayoutCase {
  std::string family;
  bool tie = false;
  bool sharded = false;
  std::string label() const { return family + (tie ? "_tied" : "") + (sharded ? "_sharded" : ""); }
};

class AssayRealLayouts : public ::testing::TestWithParam<LayoutCase> {};

// The candidates, opened (owned by `owned`).
std::vector<const Model*> open_all(const std::vector<std::string>& paths,
                                   std::vector<std::unique_ptr<Model>>* owned) {
  std::vector<const Model*> models;
  for (const std::string& c : paths) {
    owned->push_back(std::make_unique<Model>(Model::open(c)));
    models.push_back(owned->back().get());
  }
  return models;
}

// A sampled assay matches permuted neurons on a sketch of their descriptors' coordinates
// (detail::AlignOptions; 128 in the assay, more than these layouts' hidden width of 64, so 32
// here): on this layout's units (fused gate_up, experts, shared experts) the sketch must find
// every neuron permutation that all the coordinates find, and say how many it compared.
void expect_sketch_finds_the_same_neurons(const fs::path& suspect_dir,
                                          const std::vector<std::string>& candidates) {
  const Model suspect = Model::open(suspect_dir);
  std::vector<std::unique_ptr<Model>> owned;
  const std::vector<const Model*> models = open_all(candidates, &owned);
  const detail::Alignment full = detail::align_suspect(suspect, models);
  const detail::Alignment sketched =
      detail::align_suspect(suspect, models, {.sketch_coordinates = 32, .seed = 3});
  size_t compared = 0;
  for (const json& p : full.permutations) {
    if (p["kind"] != "neurons") continue;
    const auto same = std::find_if(
        sketched.permutations.begin(), sketched.permutations.end(), [&](const json& q) {
          return q["kind"] == "neurons" && q["layer"] == p["layer"] && q["unit"] == p["unit"];
        });
    ASSERT_NE(same, sketched.permutations.end()) << p["unit"] << " in layer " << p["layer"];
    EXPECT_EQ((*same)["permutation"], p["permutation"]) << p["unit"] << " in layer " << p["layer"];
    EXPECT_EQ((*same)["compared_coordinates"]["sketch"], 32) << p["unit"];
    ++compared;
  }
  EXPECT_GT(compared, 0u);
}

// A sampled assay reads an aligned tensor's rows through its alignment (detail::load_aligned_rows):
// from the stored rows they come from, undoing a rotation on those rows (or, for a writer, from
// the blocks holding them). Every slot's rows, asked for in a scrambled order, must have the bits
// of the same rows of the whole aligned tensor. Returns how many slots had a rotation undone.
size_t expect_aligned_rows_are_the_whole_tensors(const fs::path& suspect_dir,
                                                 const std::vector<std::string>& candidates,
                                                 const std::string& what) {
  const Model suspect = Model::open(suspect_dir);
  std::vector<std::unique_ptr<Model>> owned;
  const std::vector<const Model*> models = open_all(candidates, &owned);
  const detail::Alignment alignment = detail::align_suspect(suspect, models);
  size_t compared = 0, rotated = 0;
  for (const auto& [name, slot] : alignment.tensors) {
    const std::vector<uint64_t>& shape = suspect.find(name)->info->shape;
    if (shape.size() < 2) continue;
    std::vector<float> whole;
    detail::load_aligned(suspect, alignment, name, &whole);
    const uint64_t length = shape.back(), rows = whole.size() / length;
    std::vector<uint64_t> picked;  // every third row, last first, then row 1 again
    for (uint64_t r = rows; r-- > 0;) {
      if (r % 3 == 0) picked.push_back(r);
    }
    if (rows > 1) picked.push_back(1);
    std::vector<float> got(picked.size() * length);
    detail::load_aligned_rows(suspect, alignment, name, picked, length, got.data());
    for (size_t i = 0; i < picked.size(); ++i) {
      const bool same = std::memcmp(got.data() + i * length, whole.data() + picked[i] * length,
                                    length * sizeof(float)) == 0;
      EXPECT_TRUE(same) << what << ": " << name << " row " << picked[i];
      if (!same) break;
    }
    ++compared;
    rotated += slot.rotation != nullptr;
    if (slot.rotation == nullptr) continue;
    // A rotated slot's stored rows read in slabs of 3 columns (a writer's block is read and
    // undone a slab at a time; these models' tensors are narrower than the default slab): the
    // rows of the whole stored tensor with its rotation undone.
    const ModelTensor& stored = *suspect.find(slot.source);
    std::vector<float> undone(stored.info->numel());
    detail::load_range(stored, 0, undone.size(), undone.data());
    detail::undo_rotation(slot, stored.info->shape, undone.data());
    const uint64_t stored_length = stored.info->shape.back();
    std::vector<uint64_t> stored_rows;
    for (uint64_t r = undone.size() / stored_length; r-- > 0;) {
      if (r % 2 == 1) stored_rows.push_back(r);
    }
    std::vector<float> slabbed(stored_rows.size() * stored_length);
    detail::load_rows_unrotated(slot, stored, stored_rows, slabbed.data(), 3);
    for (size_t i = 0; i < stored_rows.size(); ++i) {
      const bool same = std::memcmp(slabbed.data() + i * stored_length,
                                    undone.data() + stored_rows[i] * stored_length,
                                    stored_length * sizeof(float)) == 0;
      EXPECT_TRUE(same) << what << ": " << name << " stored row " << stored_rows[i] << " in slabs";
      if (!same) break;
    }
  }
  EXPECT_GT(compared, 0u) << what;
  return rotated;
}

// Every MLP that rescale-neurons scaled (perturb's truth: "mlp", "shared_expert", "experts")
// has its factors among the assay's "neuron_scales", each within 1%.
void expect_scales_found(const AssayResult& r, const json& truth) {
  size_t units = 0, found = 0;
  const auto expect_unit = [&](int layer, const std::string& unit, const json& applied) {
    ++units;
    for (const auto& p : r.permutations) {
      if (p["kind"] != "neuron_scales" || p["layer"] != layer || p["unit"] != unit) continue;
      ASSERT_EQ(p["scales"].size(), applied.size()) << unit;
      for (size_t i = 0; i < applied.size(); ++i) {
        EXPECT_NEAR(p["scales"][i].get<double>() / applied[i].get<double>(), 1.0, 0.01)
            << "layer " << layer << " " << unit << " neuron " << i;
      }
      ++found;
    }
  };
  for (const auto& layer : truth["layers"]) {
    const int l = layer["layer"];
    for (const char* unit : {"mlp", "shared_expert"}) {
      if (layer.contains(unit) && !layer[unit].is_null()) expect_unit(l, unit, layer[unit]);
    }
    if (layer.contains("experts")) {
      for (size_t e = 0; e < layer["experts"].size(); ++e)
        expect_unit(l, "experts." + std::to_string(e), layer["experts"][e]);
    }
  }
  EXPECT_GT(units, 0u);
  EXPECT_EQ(found, units) << "rescaled MLPs whose factors the assay reported";
}

TEST_P(AssayRealLayouts, LinearMergeRecoveredWithAndWithoutPermutations) {
  const LayoutCase& c = GetParam();
  const ModelFamily family = *family_from_name(c.family);
  test::TempDir dir;
  BaseModelOptions base;
  base.arch.family = family;
  // Qwen3-Next / Qwen3.5: every 4th layer is full attention, so four layers hold one of them.
  base.arch.layers = family == ModelFamily::kQwen3Next || family == ModelFamily::kQwen35Moe ? 4 : 2;
  base.arch.experts = 4;
  base.arch.tie_embeddings = c.tie;
  if (c.sharded) base.output.shard_bytes = 40'000;
  FineTuneOptions ft;
  if (c.sharded) ft.output.shard_bytes = 40'000;
  synth_family(dir / "fam", base, 2, 1, ft);
  if (c.sharded) {
    ASSERT_TRUE(fs::exists(dir / "fam" / "base" / "model.safetensors.index.json"));
  }
  PlanOptions plan_options;
  plan_options.base_dir = dir / "fam";
  MergePlan plan = plan_merge(parse_recipe("merge_method: linear\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.7}\n"
                                           "  - model: ft_2\n    parameters: {weight: 0.3}\n",
                                           "linear.yml"),
                              plan_options);
  MergeOptions merge_options;
  merge_options.out_dir = dir / "merged";
  merge_options.hash_inputs = merge_options.hash_outputs = false;
  run_merge(plan, merge_options);
  std::vector<std::string> candidates;
  for (const char* m : {"base", "ft_1", "ft_2", "unrelated_1"}) candidates.push_back((dir / "fam" / m).string());

  const auto check = [&](const fs::path& suspect, const std::string& what, double sample_fraction = 0) {
    AssayOptions options;
    options.suspect = suspect;
    options.candidates = candidates;
    options.sample_fraction = sample_fraction;
    AssayResult r = run_assay(options);
    // DeepSeek-V3's tiny MLA layernorms keep its norms' z under the merge bar (docs/architectures.md):
    // the weights are right, the verdict word is the verdict rules' business.
    if (family != ModelFamily::kDeepseekV3) {
      EXPECT_EQ(r.verdict, "merge") << what;
      EXPECT_EQ(r.method, "linear") << what;
    }
    EXPECT_NEAR(r.candidates[1].weight, 0.7, 0.005) << what;
    EXPECT_NEAR(r.candidates[2].weight, 0.3, 0.005) << what;
    EXPECT_FALSE(r.candidates[3].involved) << what << ": the unrelated model";
    // Every tensor was compared: nothing is left unchecked.
    EXPECT_FALSE(r.evidence.contains("unchecked")) << what << ": " << r.evidence["unchecked"].dump();
    for (const auto& t : r.tensors) EXPECT_TRUE(t.fitted) << what << ": " << t.name << ": " << t.skipped;
    return r;
  };
  const AssayResult plain = check(dir / "merged", "as merged");
  EXPECT_TRUE(plain.permutations.empty()) << plain.permutations.dump();
  // --sample on the real layout: rows of fused [E, 2I, H] / [E, H, 2I] experts are E x 2I or E x H.
  const AssayResult sampled = check(dir / "merged", "sampled 25%", 0.25);
  EXPECT_GT(sampled.sampling.tensors_sampled, 0u);
  EXPECT_LT(sampled.sampling.elements_read, sampled.sampling.elements_total);

  std::vector<PerturbKind> kinds = {PerturbKind::kPermuteNeurons, PerturbKind::kPermuteHeads};
  if (c.family == "mixtral" || c.family.rfind("qwen3_", 0) == 0 || c.family == "gpt_oss" || c.family == "deepseek_v3") {
    kinds.push_back(PerturbKind::kPermuteExperts);
  }
  // The merge disguised by `kind` (seed 9) into dir / the kind's name; returns perturb's truth.
  const auto disguise = [&](PerturbKind kind) {
    PerturbOptions o;
    o.kind = kind;
    o.seed = 9;
    return perturb_model(dir / "merged", dir / perturb_kind_name(kind), o);
  };
  for (const PerturbKind kind : kinds) {
    const std::string what = perturb_kind_name(kind);
    const json truth = disguise(kind);
    const AssayResult r = check(dir / what, what);
    EXPECT_GT(test::expect_permutations_found(r, kind, truth), 0u) << what;
    if (kind == PerturbKind::kPermuteNeurons)
      expect_sketch_finds_the_same_neurons(dir / what, candidates);
    expect_aligned_rows_are_the_whole_tensors(dir / what, candidates, what);
    fs::remove_all(dir / what);
  }
  // The disguises that scale or rotate what they align: their slots' rows too, where perturb
  // applies them (it refuses to rescale GPT-OSS's neurons, whose MLP adds 1 to the up projection,
  // and to fold or rotate through tied embeddings or Gemma's sandwich norms). A rescaled merge is
  // assayed as the permuted ones are.
  std::vector<PerturbKind> scaled;
  if (c.family != "gpt_oss") scaled.push_back(PerturbKind::kRescaleNeurons);
  if (!c.tie && c.family != "gemma2") {
    scaled.push_back(PerturbKind::kFoldNorms);
    scaled.push_back(PerturbKind::kRotateResidual);
  }
  for (const PerturbKind kind : scaled) {
    const std::string what = perturb_kind_name(kind);
    const json truth = disguise(kind);
    if (kind == PerturbKind::kRescaleNeurons) {
      expect_scales_found(check(dir / what, what), truth);
      expect_scales_found(check(dir / what, what + ", sampled 25%", 0.25), truth);
    }
    const size_t rotated = expect_aligned_rows_are_the_whole_tensors(dir / what, candidates, what);
    if (kind == PerturbKind::kRotateResidual) {
      EXPECT_GT(rotated, 0u) << what;
    }
    fs::remove_all(dir / what);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, AssayRealLayouts,
                         ::testing::Values(LayoutCase{"llama"}, LayoutCase{"llama", true}, LayoutCase{"mistral", false, true},
                                           LayoutCase{"gemma2"}, LayoutCase{"phi3"}, LayoutCase{"mixtral"},
                                           LayoutCase{"qwen3_moe"}, LayoutCase{"qwen3_next"}, LayoutCase{"qwen3_5_moe"},
                                           LayoutCase{"gpt_oss"}, LayoutCase{"deepseek_v3"}),
                         [](const auto& info) { return info.param.label(); });

// A 2-layer, hidden-128 family of `kind` (seed `seed`) with two fine-tunes 1% from the base and an
// unrelated model under `dir`/fam, and the bf16 linear merge 0.571 / 0.429 of ft_1 and ft_2 in
// `dir`/merged. Returns the candidates: base, ft_1, ft_2, unrelated_1.
std::vector<std::string> blend_of_small_parents(ModelFamily kind, uint64_t seed, const fs::path& dir) {
  FineTuneOptions ft;
  ft.relative_delta = 0.01;
  synth_family(dir / "fam", test::small_base(kind, 2, 128, 64, seed), 2, 1, ft);
  std::vector<std::string> candidates;
  for (const char* m : {"base", "ft_1", "ft_2", "unrelated_1"}) candidates.push_back((dir / "fam" / m).string());
  test::merge_into("merge_method: linear\nmodels:\n  - model: " + candidates[1] + "\n    parameters: {weight: 0.571}\n  - model: " +
                       candidates[2] + "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
                   dir / "merged");
  return candidates;
}

// GPT-OSS's attention sinks are 4 elements per layer. With parents 1% from their base, a bf16
// merge's sinks can round back onto the base's exactly: that tensor has no deviation to fit and no
// standard error, and another with 4 elements and 4 candidates has no residual degrees of freedom.
// Neither may enter the inverse-variance mean of the weights (it once made both weights' z 0 and a
// clean merge a fine-tune, folded norms or not) nor the sameness test.
TEST(AssayRealLayoutsTiny, TensorsWithoutStandardErrorsDoNotOutweighTheMatrices) {
  test::TempDir dir;
  const std::vector<std::string> candidates = blend_of_small_parents(ModelFamily::kGptOss, 3, dir.path());
  PerturbOptions fold;
  fold.kind = PerturbKind::kFoldNorms;
  perturb_model(dir / "merged", dir / "folded", fold);
  for (const char* suspect : {"merged", "folded"}) {
    const AssayResult r = test::assay(dir / suspect, candidates);
    size_t without_error = 0;
    for (const auto& t : r.tensors) without_error += t.fitted && !std::isfinite(t.weight_se[1]);
    EXPECT_GT(without_error, 0u) << suspect << ": the case this test is about (a tensor equal to its reference)";
    EXPECT_EQ(r.verdict, "merge") << suspect << ": " << r.evidence["summary"];
    EXPECT_EQ(r.method, "linear") << suspect;
    EXPECT_NEAR(test::weight_of(r, candidates[1]), 0.571, 0.005) << suspect;
    EXPECT_NEAR(test::weight_of(r, candidates[2]), 0.429, 0.005) << suspect;
  }
}

// A linear merge of parents 1% from their base, trained further by 1% of the weights' norm, in
// bf16: the suspect lies a few units in the last place from every candidate, so it equals each of
// them by chance in 3-5% of the elements, 12% together, and the chance equalities are likelier
// among the smallest deltas. On gpt-oss and Gemma 2 layouts that once read as DELLA's share and
// drop profile (or, through it, as TIES); DELLA's equalities are with the base alone.
class AssayFurtherTrained : public ::testing::TestWithParam<const char*> {};

TEST_P(AssayFurtherTrained, ChanceEqualitiesAreNotReadAsASparseMerge) {
  for (uint64_t seed = 3; seed <= 6; ++seed) {
    test::TempDir dir;
    const std::vector<std::string> candidates = blend_of_small_parents(*family_from_name(GetParam()), seed, dir.path());
    PerturbOptions train;
    train.kind = PerturbKind::kFineTune;
    train.strength = 0.01;
    perturb_model(dir / "merged", dir / "trained", train);
    const AssayResult r = test::assay(dir / "trained", candidates);
    EXPECT_EQ(r.verdict, "merge") << "seed " << seed << ": " << r.evidence["summary"];
    EXPECT_EQ(r.method, "linear") << "seed " << seed << ": " << r.evidence["summary"];
    EXPECT_FALSE(r.evidence.contains("confidence")) << "seed " << seed << ": " << r.evidence["summary"];
    EXPECT_NEAR(test::weight_of(r, candidates[1]), 0.571, 0.01) << "seed " << seed;
    EXPECT_NEAR(test::weight_of(r, candidates[2]), 0.429, 0.01) << "seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, AssayFurtherTrained, ::testing::Values("gpt_oss", "gemma2"));

// Phi-3 fuses q/k/v and gate/up, so a 2-layer model has 2 matrices per component and layer: under
// noise twice the merge's deviation the weights are significant (|z| > 5) but their sameness
// cannot be tested, and the per-component z rule falls short. That is an undecided case, not
// evidence of a fine-tune: the verdict's confidence is lowered and the summary and report say why.
TEST(AssayUndecided, AnUntestableSamenessWithTwoSignificantWeightsLowersAFineTune) {
  int undecided = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    test::TempDir dir;
    const std::vector<std::string> candidates = blend_of_small_parents(ModelFamily::kPhi3, seed, dir.path());
    PerturbOptions noise;
    noise.kind = PerturbKind::kNoise;
    noise.strength = 2.0;
    noise.reference = candidates[0];
    perturb_model(dir / "merged", dir / "noisy", noise);
    const AssayResult r = test::assay(dir / "noisy", candidates);
    if (r.verdict == "merge") continue;
    ASSERT_EQ(r.verdict, "fine-tune") << "seed " << seed << ": " << r.evidence["summary"];
    if (r.evidence["merge_signature"] != "untestable") continue;
    int significant = 0;
    for (const auto& [path, z] : r.evidence["weight_z"].items()) significant += z.is_number() && std::fabs(z.get<double>()) >= 5;
    if (significant < 2) continue;
    ++undecided;
    EXPECT_EQ(r.evidence.value("confidence", ""), "low") << "seed " << seed;
    EXPECT_EQ(r.evidence["summary"].get<std::string>().rfind("undecided, the weights' sameness untestable: ", 0), 0u)
        << r.evidence["summary"];
    const std::string html = assay_report_html(assay_to_json(r));
    EXPECT_NE(html.find("too weak to tell a recipe's one weight"), std::string::npos) << "seed " << seed;
  }
  EXPECT_GT(undecided, 0) << "no seed reached the case this test is about";
}

}  // namespace
}  // namespace alloy
