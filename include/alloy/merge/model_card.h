// alloy/merge/model_card.h: the README.md model card that credits every source model of a merge.
//
// The card follows mergekit's layout (front matter with base_model and tags, the method with its
// paper, the models, the recipe) so that Hugging Face shows the merge lineage, and adds the `alloy`
// tag. Output is deterministic for the same input.
#pragma once

#include <string>
#include <vector>

namespace alloy {

struct ModelCardInfo {
  std::string name = "merged";             // title of the card
  std::string merge_method;                // e.g. "ties"
  std::string base_model;                  // recipe text of the base model, empty if none
  std::vector<std::string> models;         // every source model (recipe text), in recipe order
  std::string recipe_yaml;                 // the recipe exactly as given
  std::string tool_version;                // alloy version
};

std::string render_model_card(const ModelCardInfo& info);

// A human name and paper reference for a merge method ("TIES", "arXiv:2306.01708"), for cards and
// reports; unknown methods get their own name and no reference.
struct MethodReference {
  std::string display_name;
  std::string reference;  // URL, may be empty
};
MethodReference method_reference(const std::string& method);

}  // namespace alloy
