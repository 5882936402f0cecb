// alloy/merge/model_card.h: the README.md model card that credits every source model of a merge.
//
// The card follows mergekit's layout (front matter, then "Merge Details": the method with its
// paper, the models, the recipe) and the Hugging Face Hub's model-card metadata, so that the Hub
// shows the merge lineage: `base_model` lists the parents as Hub ids (local paths as their folder's
// name, never a path), `base_model_relation: merge`, `license` (inherited when every parent's card
// declares the same one, else `other`), `library_name: transformers` and the tags merge, mergekit,
// alloy. Output is deterministic for the same input.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace alloy {

struct ModelCardInfo {
  std::string name = "merged";             // title of the card
  std::string merge_method;                // e.g. "ties"
  std::string base_model;                  // how the body names the base model, empty if none
  std::vector<std::string> models;         // how the body names every source model, in recipe order
  // The front matter's base_model list (Hub ids or folder names), each once; empty: base_model and
  // models, each once.
  std::vector<std::string> parents;
  std::string license = "other";           // the front matter's license
  std::string recipe_yaml;                 // the recipe exactly as given
  std::string tool_version;                // alloy version
};

// How a card names a model that a recipe names `recipe_name` and that was found at `path`: its Hub
// id (without the revision, which alloy_provenance.json records) when it was found in the Hub
// cache, else the name of its folder (or file), so that no local path is published.
std::string card_model_name(const std::string& recipe_name, const std::filesystem::path& path);

// The top-level `license:` value of a model card's YAML front matter (the block between a first
// line "---" and the next "---"), unquoted; empty when there is none.
std::string front_matter_license(const std::string& readme_text);

// The license a merge inherits from its parents (name, model folder): the one every parent's
// README.md declares, else "other", with a warning that lists what each declares ("none" for a
// parent without a card or a license) when at least one declares one (when none does, there is
// nothing to inherit or contradict, and no warning). A README that is a link leaving the model's
// folder counts as none.
struct InheritedLicense {
  std::string license;
  std::string warning;  // empty when inherited
};
InheritedLicense inherited_license(const std::vector<std::pair<std::string, std::filesystem::path>>& parents);

std::string render_model_card(const ModelCardInfo& info);

// A human name and paper reference for a merge method ("TIES", "arXiv:2306.01708"), for cards and
// reports; unknown methods get their own name and no reference.
struct MethodReference {
  std::string display_name;
  std::string reference;  // URL, may be empty
};
MethodReference method_reference(const std::string& method);

}  // namespace alloy
