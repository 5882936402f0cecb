// alloy-assay --sample: the rows drawn, and a sampled assay of a Rio-shaped merge against the full
// assay: the same verdict, weights within 0.002, and standard errors that cover the full assay's
// weights at their stated rate over 100 seeds; its neuron alignment on a sketch of the
// descriptors' coordinates, which must undo a permutation as the full assay does; and its search
// for copied layers on the sampled rows.
#include <cmath>
#include <set>

#include "alloy/perturb/perturb.h"
#include "assay/internal.h"
#include "test_assay_utils.h"

namespace alloy::test {
namespace {

TEST(AssaySampleRows, DrawsTheStatedNumberOfDistinctSortedRowsReproducibly) {
  const std::vector<uint64_t> shape = {4096, 512};
  const auto rows = detail::sampled_rows(shape, 0.01, 7, "model.layers.0.mlp.down_proj.weight");
  ASSERT_EQ(rows.size(), 41u);  // ceil(0.01 x 4096)
  EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
  EXPECT_EQ(std::set<uint64_t>(rows.begin(), rows.end()).size(), rows.size());
  EXPECT_LT(rows.back(), 4096u);
  EXPECT_EQ(rows, detail::sampled_rows(shape, 0.01, 7, "model.layers.0.mlp.down_proj.weight"));
  EXPECT_NE(rows, detail::sampled_rows(shape, 0.01, 8, "model.layers.0.mlp.down_proj.weight"));
  EXPECT_NE(rows, detail::sampled_rows(shape, 0.01, 7, "model.layers.1.mlp.down_proj.weight"));
  // Rows of a 3-D tensor are every axis but the last (experts x rows).
  EXPECT_EQ(detail::sampled_rows({8, 512, 64}, 0.1, 1, "experts").size(), 410u);
  // At least kMinSampledRows; read whole when that is every row, for 1-D tensors and for fraction 0 or 1.
  EXPECT_EQ(detail::sampled_rows({100, 64}, 0.001, 1, "t").size(), detail::kMinSampledRows);
  EXPECT_TRUE(detail::sampled_rows({8, 64}, 0.5, 1, "t").empty());
  EXPECT_TRUE(detail::sampled_rows({4096}, 0.01, 1, "norm").empty());
  EXPECT_TRUE(detail::sampled_rows(shape, 0, 1, "t").empty());
  EXPECT_TRUE(detail::sampled_rows(shape, 1, 1, "t").empty());
}

TEST(AssaySampleRows, EveryRowIsEquallyLikely) {
  // 2000 draws of 10 of 100 rows: each row is drawn about 200 times (binomial sd ~13).
  std::vector<int> hits(100, 0);
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    for (uint64_t r : detail::sampled_rows({100, 16}, 0.1, seed, "t")) ++hits[size_t(r)];
  }
  for (int h : hits) {
    EXPECT_GT(h, 140);
    EXPECT_LT(h, 260);
  }
}

// A Rio-shaped merge: 0.571 x ft_1 + 0.429 x ft_2 of one base, large enough that 1% of the rows of
// the big tensors is more than the minimum of 8 rows.
struct RioShaped {
  TempDir temp;
  std::filesystem::path dir = temp.path() / "fam";
  std::filesystem::path merged = temp.path() / "merged";
  RioShaped() {
    BaseModelOptions base;
    base.arch.family = ModelFamily::kLlama;
    base.arch.layers = 2;
    base.arch.hidden = 256;
    base.arch.intermediate = 1536;
    base.arch.vocab = 4096;
    base.seed = 11;
    FineTuneOptions ft;
    ft.relative_delta = 0.05;
    synth_family(dir, base, 2, 0, ft);
    merge_into("merge_method: linear\nmodels:\n  - model: " + (dir / "ft_1").string() +
                   "\n    parameters: {weight: 0.571}\n  - model: " + (dir / "ft_2").string() +
                   "\n    parameters: {weight: 0.429}\ndtype: bfloat16\n",
               merged);
  }
  AssayResult run(double fraction, uint64_t seed) const { return run_on(merged, fraction, seed); }
  AssayResult run_on(const std::filesystem::path& suspect, double fraction, uint64_t seed) const {
    AssayOptions options;
    options.suspect = suspect;
    options.candidates = {(dir / "ft_1").string(), (dir / "ft_2").string()};
    options.hash_files = false;
    options.rebuild_check_tensors = fraction > 0 ? 0 : 6;
    options.sample_fraction = fraction;
    options.sample_seed = seed;
    return run_assay(options);
  }
};

TEST(AssaySample, OnePercentOfTheRowsGivesTheFullAssaysVerdictAndWeightsAndHonestErrors) {
  const RioShaped rio;
  const AssayResult full = rio.run(0, 0);
  ASSERT_EQ(full.verdict, "merge");
  ASSERT_EQ(full.method, "linear");
  EXPECT_EQ(full.sampling.fraction, 0);
  int covered = 0, intervals = 0;
  double worst_weight_error = 0;
  uint64_t read = 0, total = 0;
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    const AssayResult sampled = rio.run(0.01, seed);
    ASSERT_EQ(sampled.verdict, full.verdict) << "seed " << seed;
    ASSERT_EQ(sampled.method, full.method) << "seed " << seed;
    ASSERT_EQ(sampled.tensors.size(), full.tensors.size());
    for (size_t c = 0; c < 2; ++c) {
      worst_weight_error =
          std::max(worst_weight_error, std::fabs(sampled.candidates[c].weight - full.candidates[c].weight));
    }
    // Each tensor's weight +- 1.96 standard errors against the full assay's weight of that tensor.
    for (size_t i = 0; i < full.tensors.size(); ++i) {
      const TensorAssay &s = sampled.tensors[i], &f = full.tensors[i];
      if (!f.fitted || f.numel < 100000) continue;  // the big tensors, which are sampled
      ASSERT_TRUE(s.fitted) << s.name;
      const double se = s.weight_se[0];
      ASSERT_TRUE(std::isfinite(se) && se > 0) << s.name;
      ++intervals;
      covered += std::fabs(s.weights[0] - f.weights[0]) <= 1.96 * se;
    }
    read = sampled.sampling.elements_read;
    total = sampled.sampling.elements_total;
    EXPECT_GT(sampled.sampling.tensors_sampled, 0u);
  }
  EXPECT_LT(worst_weight_error, 0.002);
  const double coverage = double(covered) / intervals;
  std::printf("sampled-assay coverage: %d of %d intervals (%.3f); worst weight error %.5f\n", covered, intervals,
              coverage, worst_weight_error);
  // Nominal 95%; the sample is part of the full data, so slightly more is expected, never much less.
  EXPECT_GE(coverage, 0.92) << covered << " of " << intervals;
  EXPECT_LE(coverage, 0.995) << covered << " of " << intervals;  // errors not inflated out of meaning
  // About 1% of the elements were read (the small tensors, read whole, add a little).
  EXPECT_LT(double(read) / double(total), 0.03);
  EXPECT_GT(double(read) / double(total), 0.009);
}

TEST(AssaySample, TheSameSeedReadsTheSameRowsAndGivesTheSameNumbers) {
  const RioShaped rio;
  const AssayResult a = rio.run(0.02, 5), b = rio.run(0.02, 5), c = rio.run(0.02, 6);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].weights, b.tensors[i].weights) << a.tensors[i].name;
  }
  EXPECT_NE(a.candidates[0].weight, c.candidates[0].weight);
  const auto doc = assay_to_json(a);
  ASSERT_TRUE(doc.contains("sampling"));
  EXPECT_EQ(doc["sampling"]["seed"], 5);
  EXPECT_NE(assay_summary(a).find("sampled: 2.00% of the rows"), std::string::npos) << assay_summary(a);
  EXPECT_FALSE(assay_to_json(rio.run(0, 0)).contains("sampling"));
}

// A passthrough frankenmerge (ft_1's layers 0-1, then ft_2's layer 1): a sampled assay fingerprints
// each tensor's sampled rows only, drawn for its name within the layer, so that a suspect layer and
// the candidate layer it copies are compared on the same rows; it must find the full assay's
// slices and layer map, and say that the copies were compared on the sampled rows. Rows drawn for
// the whole tensor name would differ between layer 2 and ft_2's layer 1, and no copy would be
// found.
TEST(AssaySample, FindsAStackOfCopiedLayersOnTheSampledRowsAsTheFullAssayDoes) {
  const RioShaped rio;
  const std::filesystem::path stacked = rio.temp.path() / "stacked";
  merge_into("merge_method: passthrough\nslices:\n  - sources:\n      - model: " +
                 (rio.dir / "ft_1").string() +
                 "\n        layer_range: [0, 2]\n  - sources:\n      - model: " +
                 (rio.dir / "ft_2").string() + "\n        layer_range: [1, 2]\ndtype: bfloat16\n",
             stacked);
  const AssayResult full = rio.run_on(stacked, 0, 0), sampled = rio.run_on(stacked, 0.05, 3);
  EXPECT_EQ(full.method, "passthrough") << full.evidence.dump();
  EXPECT_EQ(sampled.method, "passthrough") << sampled.evidence.dump();
  EXPECT_EQ(sampled.evidence["layer_map"], full.evidence["layer_map"]);
  ASSERT_EQ(sampled.evidence["layer_map"].size(), 3u);
  EXPECT_EQ(sampled.evidence["layer_map"][2]["source_layer"], 1);
  EXPECT_EQ(sampled.recipe["slices"], full.recipe["slices"]);
  EXPECT_NE(sampled.evidence["summary"].get<std::string>().find("sampled rows"), std::string::npos);
  EXPECT_EQ(full.evidence["summary"].get<std::string>().find("sampled rows"), std::string::npos);
}

// The merge with its MLP neurons permuted: a sampled assay compares the neurons on 128 of the 256
// hidden coordinates (kSketchCoordinates) and must find the permutation the full assay finds, in
// every layer, say so in the record, and give the full assay's verdict. With a wrong sketch (the
// two models' descriptors on different coordinates) the neurons would not match.
TEST(AssaySample, ItsSketchedNeuronAlignmentUndoesAPermutationAsTheFullAssayDoes) {
  const RioShaped rio;
  const std::filesystem::path permuted = rio.temp.path() / "permuted";
  PerturbOptions permute;
  permute.kind = PerturbKind::kPermuteNeurons;
  permute.seed = 9;
  perturb_model(rio.merged, permuted, permute);
  const AssayResult full = rio.run_on(permuted, 0, 0);
  ASSERT_EQ(full.verdict, "merge");
  const auto neurons = [](const AssayResult& r) {
    std::map<int, nlohmann::json> by_layer;
    for (const auto& p : r.permutations) {
      if (p["kind"] == "neurons") by_layer[p["layer"].get<int>()] = p;
    }
    return by_layer;
  };
  const auto expected = neurons(full);
  ASSERT_EQ(expected.size(), 2u);  // both layers were permuted
  for (uint64_t seed : {1, 2, 3}) {
    const AssayResult sampled = rio.run_on(permuted, 0.05, seed);
    EXPECT_EQ(sampled.verdict, full.verdict) << "seed " << seed;
    EXPECT_EQ(sampled.method, full.method) << "seed " << seed;
    EXPECT_NEAR(sampled.candidates[0].weight, 0.571, 0.01) << "seed " << seed;
    const auto found = neurons(sampled);
    ASSERT_EQ(found.size(), expected.size()) << "seed " << seed;
    for (const auto& [layer, record] : found) {
      EXPECT_EQ(record["permutation"], expected.at(layer)["permutation"])
          << "layer " << layer << ", seed " << seed;
      EXPECT_EQ(record["compared_coordinates"]["sketch"], detail::kSketchCoordinates);
      EXPECT_EQ(record["compared_coordinates"]["hidden"], 256);
      EXPECT_FALSE(
          expected.at(layer).contains("compared_coordinates"));  // the full assay compares all
    }
    const std::string notes = sampled.evidence["notes"].dump();
    EXPECT_NE(
        notes.find("the neurons of 2 permuted MLP units were matched on 128 seeded coordinates"),
        std::string::npos)
        << notes;
  }
}

}  // namespace
}  // namespace alloy::test
