// alloy/core/inspect.h: a validated model's contents as JSON and as a human-readable table.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "alloy/core/model.h"

namespace alloy {

// {"path", "shards": [{"file", "tensors", "bytes", "metadata"}], "tensors": [{"name", "dtype",
//  "shape", "bytes", "shard"}], "dtypes": {DTYPE: {"tensors", "elements", "bytes"}},
//  "total": {"tensors", "elements", "bytes"}, "config": {summary keys present in config.json},
//  "auxiliary_files": [...], "architecture": the detected architecture
//  (ModelArchitecture::summary(), alloy/core/architecture.h)}
// Without `list_tensors` the "tensors" list is left out (the rest is the same).
nlohmann::json inspect_model(const Model& model, bool list_tensors = true);

// The same information as aligned text for a terminal.
std::string format_inspection(const nlohmann::json& inspection);
// format_inspection(inspect_model(model)), byte for byte, without building the per-tensor JSON: a
// hostile header of a million tensors lists in seconds (bench/header_bench.cpp).
std::string format_model(const Model& model);

}  // namespace alloy
