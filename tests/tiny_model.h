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

// A tiny model of a real family's layout (alloy/synth/synth.h families: tensor names, config
// fields, experts where the family has them): hidden 32, intermediate 24, 4 heads over 2 KV heads,
// vocabulary 48, 4 experts of intermediate 8.
inline alloy::BaseModelOptions tiny_family_model(alloy::ModelFamily family, int layers) {
  alloy::BaseModelOptions o;
  o.arch.family = family;
  o.arch.layers = layers;
  o.arch.hidden = 32;
  o.arch.intermediate = 24;
  o.arch.heads = 4;
  o.arch.kv_heads = 2;
  o.arch.vocab = 48;
  o.arch.experts = 4;
  o.arch.moe_intermediate = 8;
  return o;
}

}  // namespace alloy::test
