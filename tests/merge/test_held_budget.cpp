// The held-source budget (lib/merge/held_budget.h): a merge holds the tensors whose second read
// pays for the held buffer's page faults, and no larger ones, whatever order they come in.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "alloy/merge/recipe.h"
#include "alloy/synth/synth.h"
#include "merge/held_budget.h"
#include "merge/methods/sparsify.h"
#include "test_utils.h"

namespace alloy::detail {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::vector<uint64_t> repeated(std::vector<std::pair<uint64_t, size_t>> runs) {
  std::vector<uint64_t> totals;
  for (const auto& [bytes, count] : runs) totals.insert(totals.end(), count, bytes);
  return totals;
}

TEST(HeldBudget, HoldsWhatIsReadOftenEnoughToPayForItsFaults) {
  // The 1 GB benchmark model's slerp (two sources per tensor): 48 MLP matrices of 2 x 12 MiB,
  // 32 of 2 x 4.5 MiB, 32 of 2 x 1.1 MiB, 33 norms, and the embeddings and lm_head, 2 x 94 MiB
  // each. Holding the MLP matrices saves 1.6 GB of reads for a 24 MiB buffer; the embeddings
  // would save 0.4 GB more for 164 MiB more of faults.
  std::vector<uint64_t> slerp =
      repeated({{25165824, 48}, {9437184, 32}, {2359296, 32}, {6144, 33}, {196608000, 2}});
  EXPECT_EQ(held_budget_for(slerp, kHeldSourceBytes), uint64_t{25165824});
  std::mt19937 gen(5);
  std::shuffle(slerp.begin(), slerp.end(), gen);
  EXPECT_EQ(held_budget_for(slerp, kHeldSourceBytes), uint64_t{25165824});
  // The limit caps the choice: with 10 MiB, the 9 MiB tensors are the largest that may be held.
  EXPECT_EQ(held_budget_for(slerp, 10 * kMiB), uint64_t{9437184});

  // kHeldByteCostInReads tensors of a size pay for exactly their buffer: no gain, nothing held;
  // one more, and they are held.
  EXPECT_EQ(held_budget_for(repeated({{kMiB, kHeldByteCostInReads}}), kHeldSourceBytes), 0u);
  EXPECT_EQ(held_budget_for(repeated({{kMiB, kHeldByteCostInReads + 1}}), kHeldSourceBytes), kMiB);
  // A larger size is held only where its own tensors save more than the capacity it adds costs:
  // 7 of 2 MiB save 14 MiB for 16 MiB more of faults, 9 save 18 MiB.
  EXPECT_EQ(held_budget_for(repeated({{kMiB, 40}, {2 * kMiB, 7}}), kHeldSourceBytes), kMiB);
  EXPECT_EQ(held_budget_for(repeated({{kMiB, 40}, {2 * kMiB, 9}}), kHeldSourceBytes), 2 * kMiB);
  // Nothing to hold, or nothing within the limit.
  EXPECT_EQ(held_budget_for({}, kHeldSourceBytes), 0u);
  EXPECT_EQ(held_budget_for(repeated({{300 * kMiB, 100}}), kHeldSourceBytes), 0u);
}

TEST(HeldBudget, APlansBudgetLeavesOutItsLargeFewTensors) {
  // 20 layers whose largest tensors are the MLP's 64 x 32 bf16 matrices, 60 of them, and a
  // vocabulary of 4096, whose embeddings and lm_head are 64 times larger but only two.
  test::TempDir dir;
  BaseModelOptions base;
  base.arch.layers = 20;
  base.arch.hidden = 32;
  base.arch.intermediate = 64;
  base.arch.vocab = 4096;
  base.dtype = DType::BF16;
  synth_family(dir.path(), base, 2, 0, FineTuneOptions{});
  PlanOptions po;
  po.base_dir = dir.path();
  const std::string slerp_yaml =
      "merge_method: slerp\nbase_model: ft_1\nmodels: [ft_1, ft_2]\nparameters: {t: 0.4}\n";
  const MergePlan slerp = plan_merge(parse_recipe(slerp_yaml, "slerp.yml"), po);
  EXPECT_EQ(held_budget(slerp, kHeldSourceBytes), uint64_t{2 * 64 * 32 * 2});
  const std::string ties_yaml =
      "merge_method: ties\nbase_model: base\nmodels:\n"
      "  - model: ft_1\n    parameters: {weight: 0.5, density: 0.5}\n"
      "  - model: ft_2\n    parameters: {weight: 0.5, density: 0.5}\n";
  const MergePlan ties = plan_merge(parse_recipe(ties_yaml, "ties.yml"), po);
  EXPECT_EQ(held_budget(ties, kHeldSourceBytes), uint64_t{3 * 64 * 32 * 2});
}

}  // namespace
}  // namespace alloy::detail
