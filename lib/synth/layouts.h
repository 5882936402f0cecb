// The real Hugging Face layouts of synth's named families (layouts.cpp). Internal to lib/synth.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include "alloy/synth/synth.h"

namespace alloy::detail {

// True for every family but the two original ones (llama, moe), which architecture.cpp lays out.
bool has_real_layout(ModelFamily family);
// Whether the family's architecture has routed experts (experts, experts_per_token, moe_intermediate).
bool family_has_experts(ModelFamily family);
std::vector<SynthTensor> layout_tensors(const Architecture& arch);
nlohmann::json layout_config(const Architecture& arch, DType dtype);

}  // namespace alloy::detail
