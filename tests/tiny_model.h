// A tiny synthetic base model for tests that need a real model directory and little else.
#pragma once

#include <cstdint>

#include "alloy/synth/synth.h"

namespace alloy::test {

// A two-layer Llama-like base model's options (hidden 32, intermediate 64, vocabulary 64).
inline alloy::BaseModelOptions tiny_model(uint64_t seed, alloy::DType dtype = alloy::DType::BF16) {
  alloy::BaseModelOptions o;
  o.arch.layers = 2;
  o.arch.hidden = 32;
  o.arch.intermediate = 64;
  o.arch.vocab = 64;
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

}  // namespace alloy::test
