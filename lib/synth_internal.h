// Internals of alloy-synth shared with other library units (see alloy/synth.h).
#pragma once

#include <filesystem>

#include "alloy/model.h"
#include "alloy/synth.h"

namespace alloy::detail {

// Writes the weights of a fine-tune of `base` (base + delta per tensor, as synth_fine_tune
// describes, in each tensor's dtype) into the existing directory `dir`: the shards and the index,
// nothing else. `options` must already be valid; only relative_delta, low_rank_fraction, rank,
// seed and output.shard_bytes are read. Used by synth_fine_tune and perturb_model's finetune kind.
void write_fine_tune_weights(const Model& base, const std::filesystem::path& dir,
                             const FineTuneOptions& options);

}  // namespace alloy::detail
