// Which recovered methods drop deltas, and which drop them at random (alloy/assay/assay.h).
#include <algorithm>
#include <array>
#include <string_view>

#include "alloy/assay/assay.h"

namespace alloy {

bool is_sparse_method(const std::string& method) {
  static constexpr std::array<std::string_view, 8> kSparse = {
      "ties",        "breadcrumbs", "breadcrumbs_ties", "dare_ties",
      "dare_linear", "della",       "della_linear",     "ties_family"};
  return std::find(kSparse.begin(), kSparse.end(), method) != kSparse.end();
}

bool has_random_masks(const std::string& method) {
  return is_dare_method(method) || method.rfind("della", 0) == 0 || method == "ties_family";
}

bool is_dare_method(const std::string& method) {
  return method.rfind("dare", 0) == 0;
}

}  // namespace alloy
