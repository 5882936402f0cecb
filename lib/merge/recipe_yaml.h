// Internal to alloy_merge: the guarded YAML loading that recipes share (alloy-merge's recipes and
// alloy-moe's): size, UTF-8, NUL bytes, nesting and alias-expansion bounds, one document only.
// Throws Error(kRecipe) "LABEL:LINE:COLUMN: ...". yaml-cpp stays private to the library.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

namespace alloy::detail {

YAML::Node load_guarded_yaml(const std::string& text, const std::string& label);

}  // namespace alloy::detail
