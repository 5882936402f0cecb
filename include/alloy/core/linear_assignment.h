// Minimum-cost perfect matching of an n x n cost matrix (the linear assignment problem). Used by
// the assay's alignment (experts, neurons and heads) and by permutation matching of hidden units.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace alloy {

// The Hungarian method with potentials (Kuhn-Munkres), O(n^3). `cost` is row-major n x n and must
// hold finite values; result[i] is the column assigned to row i. Ties resolve to the lowest index,
// so the result is deterministic.
std::vector<uint32_t> linear_assignment(const std::vector<double>& cost, size_t n);

}  // namespace alloy
