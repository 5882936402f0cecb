// The assay's result does not depend on the number of threads. Its stages run work concurrently in
// ways a wrong merge of the results would show: the alignment's quick tests run layer by layer in
// parallel (a layer found quiet is skipped), the candidates' embeddings are compared in parallel,
// and the rebuild checks of the hypotheses' recipe variants run in rounds, one check per thread,
// their outcomes taken in the serial order; a sampled assay takes batches of tensors in parallel,
// one per task, their fits kept in the file's order. One thread runs everything in the serial
// order.
#include <string>

#include "alloy/core/parallel.h"
#include "alloy/perturb/perturb.h"
#include "test_assay_utils.h"

namespace alloy::test {
namespace {

// The assay's JSON without its audit record (timings, hashes, the thread count); with a fraction,
// of the assay that reads that share of the rows (--sample).
nlohmann::json assay_json(const std::filesystem::path& suspect,
                          const std::vector<std::string>& candidates, double sample_fraction = 0) {
  AssayOptions options;
  options.suspect = suspect;
  options.candidates = candidates;
  options.sample_fraction = sample_fraction;
  options.sample_seed = 7;
  options.hash_files = sample_fraction == 0;
  uint64_t last = 0, total = 0;
  options.progress = [&](uint64_t done, uint64_t all) {
    EXPECT_GE(done, last);  // progress only moves forward, whatever runs in parallel
    last = done, total = all;
  };
  nlohmann::json out = assay_to_json(run_assay(options));
  EXPECT_EQ(last, total);
  out.erase("audit");
  return out;
}

class AssayThreads : public ::testing::TestWithParam<ModelFamily> {
 protected:
  void TearDown() override { set_thread_count(0); }
};

TEST_P(AssayThreads, OneTwoAndThreeThreadsGiveTheSameResult) {
  const AssayFamily f(GetParam(), 23, 0.05);
  TempDir work;
  merge_linear_blend(f, "0.571", "0.429", work.path() / "merged");
  // The same merge with its neurons and heads permuted: the alignment has layers to undo.
  PerturbOptions permute;
  permute.kind = PerturbKind::kPermuteNeurons;
  permute.seed = 4;
  perturb_model(work.path() / "merged", work.path() / "neurons", permute);
  permute.kind = PerturbKind::kPermuteHeads;
  perturb_model(work.path() / "neurons", work.path() / "permuted", permute);
  for (const char* suspect : {"merged", "permuted"}) {
    set_thread_count(1);
    const nlohmann::json serial = assay_json(work.path() / suspect, f.candidates());
    // The linear recipe came back, confirmed by its rebuild after trying rounder weights first.
    ASSERT_EQ(serial["verdict"], "merge") << suspect;
    EXPECT_EQ(serial["evidence"]["rebuild"]["exact_fraction"], 1.0) << suspect;
    if (std::string(suspect) == "permuted") {
      EXPECT_FALSE(serial["permutations"].empty());
    }
    // A sampled assay: its tensors in parallel, the permuted suspect's aligned ones too.
    set_thread_count(1);
    const nlohmann::json sampled = assay_json(work.path() / suspect, f.candidates(), 0.2);
    ASSERT_EQ(sampled["verdict"], "merge") << suspect;
    ASSERT_GT(sampled["sampling"]["tensors_sampled"].get<int>(), 0) << suspect;
    for (int threads : {2, 3}) {
      set_thread_count(threads);
      const nlohmann::json parallel = assay_json(work.path() / suspect, f.candidates());
      EXPECT_EQ(parallel, serial) << suspect << " with " << threads << " threads";
      EXPECT_EQ(assay_json(work.path() / suspect, f.candidates(), 0.2), sampled)
          << suspect << " sampled with " << threads << " threads";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, AssayThreads, ::testing::Values(ModelFamily::kLlama, ModelFamily::kMoe),
                         [](const auto& info) { return info.param == ModelFamily::kMoe ? "Moe" : "Llama"; });

}  // namespace
}  // namespace alloy::test
