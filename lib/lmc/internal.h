// Helpers shared by the lmc library's files (private).
#pragma once

#include <cstddef>
#include <vector>

namespace alloy::lmc::detail {

// Offset of layer `layer`'s weight in a parameter buffer with these sizes.
size_t layer_offset(const std::vector<size_t>& sizes, size_t layer);

// Runs layers [0, upto) on x (count rows); ReLU after every layer but the last unless relu_last.
// `parallel` spreads the matrix products over threads (false inside an outer parallel loop).
template <class T>
void forward_to(const std::vector<size_t>& sizes, const T* params, const T* x, size_t count,
                size_t upto, bool relu_last, T* out, bool parallel);

}  // namespace alloy::lmc::detail
