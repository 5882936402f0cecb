// The held-source budget of a merge: the capacity where saved reads best outweigh fresh memory
// (see held_budget.h).
#include "held_budget.h"

#include <algorithm>

namespace alloy::detail {

uint64_t held_budget_for(std::vector<uint64_t> totals, uint64_t limit) {
  std::sort(totals.begin(), totals.end());
  // Gains in read-equivalent bytes, signed: a capacity can cost more than it saves.
  long double saved = 0.0L, best_gain = 0.0L;
  uint64_t best = 0;
  for (size_t i = 0; i < totals.size() && totals[i] <= limit; ++i) {
    saved += static_cast<long double>(totals[i]);
    if (i + 1 < totals.size() && totals[i + 1] == totals[i]) continue;  // all tensors of this size
    const long double gain = saved - static_cast<long double>(kHeldByteCostInReads) * totals[i];
    if (gain > best_gain) best_gain = gain, best = totals[i];
  }
  return best;
}

uint64_t held_budget(const MergePlan& plan, uint64_t limit) {
  std::vector<uint64_t> totals;
  for (const PlannedTensor& t : plan.tensors) {
    uint64_t total = 0;
    bool holdable = !t.sources.empty();
    for (const PlannedSource& s : t.sources) {
      const ModelTensor* input =
          s.model < plan.models.size() ? plan.models[s.model]->find(s.tensor) : nullptr;
      if (input == nullptr || input->info->shape != t.shape) {
        holdable = false;
        break;
      }
      total += input->info->nbytes();
    }
    if (holdable && total > 0) totals.push_back(total);
  }
  return held_budget_for(std::move(totals), limit);
}

}  // namespace alloy::detail
