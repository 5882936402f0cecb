#include "alloy/core/linear_assignment.h"

#include <limits>

namespace alloy {

std::vector<uint32_t> linear_assignment(const std::vector<double>& cost, size_t n) {
  // Row i is inserted into the matching by a shortest augmenting path over reduced costs
  // cost - u - v (1-based arrays, column 0 a sentinel); the potentials keep reduced costs >= 0.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0), v(n + 1, 0), way_cost(n + 1);
  std::vector<size_t> match(n + 1, 0), way(n + 1, 0);
  for (size_t i = 1; i <= n; ++i) {
    match[0] = i;
    size_t j0 = 0;
    std::vector<double> minv(n + 1, inf);
    std::vector<char> used(n + 1, 0);
    do {
      used[j0] = 1;
      const size_t i0 = match[j0];
      double delta = inf;
      size_t j1 = 0;
      for (size_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
        if (cur < minv[j]) minv[j] = cur, way[j] = j0;
        if (minv[j] < delta) delta = minv[j], j1 = j;
      }
      for (size_t j = 0; j <= n; ++j) {
        if (used[j]) u[match[j]] += delta, v[j] -= delta;
        else minv[j] -= delta;
      }
      j0 = j1;
    } while (match[j0] != 0);
    do {
      const size_t j1 = way[j0];
      match[j0] = match[j1];
      j0 = j1;
    } while (j0);
  }
  std::vector<uint32_t> result(n);
  for (size_t j = 1; j <= n; ++j) result[match[j] - 1] = uint32_t(j - 1);
  return result;
}

}  // namespace alloy
