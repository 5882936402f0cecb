// alloy/merge/recipe.h: mergekit-style YAML recipes, validated and resolved into a per-tensor merge plan.
//
// The schema and the resolution rules are mergekit's (mergekit/config.py, mergekit/plan.py); they
// are written out in docs/recipes.md. Every recipe error is an Error(kRecipe) whose message starts
// with "FILE:LINE:COLUMN: " pointing at the offending YAML node. Nothing here reads tensor data:
// plan_merge() opens the models' headers and configs only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/architecture.h"
#include "alloy/core/dtype.h"
#include "alloy/merge/merge_method.h"
#include "alloy/core/model.h"

namespace alloy {

class LoraAdapter;  // alloy/merge/lora.h

struct RecipePosition {
  int line = 0;    // 1-based
  int column = 0;  // 1-based
};

// A parameter value as written: a number, a gradient (list of numbers interpolated over the layer
// position), or a list of {filter, value} entries (first filter that is a substring of the tensor
// name wins; an entry without filter matches everything).
struct Setting {
  enum class Kind { kScalar, kGradient, kFilters };
  Kind kind = Kind::kScalar;
  double scalar = 0;
  std::vector<double> gradient;
  struct Filtered {
    std::optional<std::string> filter;
    std::shared_ptr<Setting> value;  // a scalar or a gradient
  };
  std::vector<Filtered> filters;
  RecipePosition position;

  // The value for a tensor at layer position t in [0, 1], or nullopt when no filter matches.
  std::optional<double> evaluate(double t, const std::string& tensor_name) const;
};

using Parameters = std::map<std::string, Setting>;

struct RecipeSource {
  std::string model;                        // as written in the recipe
  std::optional<std::pair<int, int>> layer_range;  // half-open [begin, end)
  Parameters parameters;
  RecipePosition position;
};

struct RecipeSlice {
  std::vector<RecipeSource> sources;
  Parameters parameters;
  std::optional<std::string> base_model;
  // mergekit's OutputSliceDefinition.residual_weight: a number its schema accepts and no mergekit
  // code reads; alloy accepts it too, and says (a plan warning) that it changes nothing.
  std::optional<double> residual_weight;
  RecipePosition position;
};

// One `tokenizer.tokens` entry: where a token's embedding row comes from (mergekit's
// TokenEmbeddingConfig; docs/methods.md, "Tokenizers and vocabularies").
struct TokenSourceSpec {
  enum class Kind { kModel, kZero, kModelToken };
  Kind kind = Kind::kModel;
  std::string model;                  // kModel, kModelToken
  std::optional<std::string> token;   // kModelToken: the token's text in `model`'s vocabulary...
  std::optional<int64_t> token_id;    // ...or its id there
  bool force = false;                 // use this row even in models that have the token
  RecipePosition position;
};

// The output vocabulary: `tokenizer_source: X` or the `tokenizer:` block.
struct TokenizerSpec {
  std::string source = "union";       // "base", "union" or a model of the recipe
  RecipePosition position;
  std::vector<std::pair<std::string, TokenSourceSpec>> tokens;  // recipe order; each token once
  std::optional<uint64_t> pad_to_multiple_of;
};

// One entry of `modules:` (mergekit's OutputModuleDefinition): a module of a multi-module
// architecture (the text decoder, a vision tower, a projector; alloy/core/architecture.h
// module_names()) merged by its own models or slices, with parameters between the slices' and
// the recipe's.
struct RecipeModule {
  std::string name;
  RecipePosition position;
  bool uses_slices = false;
  std::vector<RecipeSource> models;         // when !uses_slices
  std::vector<RecipeSlice> slices;          // when uses_slices
  Parameters parameters;
};

struct Recipe {
  std::string label;                        // file name used in messages
  std::string text;                         // the recipe exactly as given
  std::string merge_method;
  RecipePosition merge_method_position;
  std::optional<std::string> base_model;
  RecipePosition base_model_position;
  bool uses_slices = false;
  std::vector<RecipeSource> models;         // when !uses_slices
  std::vector<RecipeSlice> slices;          // when uses_slices
  std::vector<RecipeModule> modules;        // `modules:` instead of models or slices (then both empty)
  Parameters parameters;
  std::optional<DType> dtype, out_dtype;
  std::optional<TokenizerSpec> tokenizer;  // absent: the base's (first model's) files, copied
  std::optional<std::string> chat_template;
  std::optional<std::string> name;

  // Every model the recipe references, base first if any, each once, in order of appearance.
  std::vector<std::string> referenced_models() const;
  // "LABEL:LINE:COLUMN: " for messages.
  std::string where(const RecipePosition& position) const;
};

// Parses and validates the recipe's structure (keys, types, method name, parameter names for the
// method). Throws Error(kRecipe) with the position of the first problem.
Recipe parse_recipe(const std::string& text, const std::string& label);
Recipe load_recipe(const std::filesystem::path& path);

struct TokenizerPlan;  // lib/merge/tokenizer_plan.h

struct PlanOptions {
  std::filesystem::path base_dir = ".";  // model paths resolve against it (mergekit: the cwd)
  bool allow_crimes = false;             // allow differing architectures and shapes
  ModelOpenOptions open;                 // how the models are opened (unindexed shards)
};

struct PlannedSource {
  size_t model = 0;                       // index into MergePlan::models
  std::string tensor;                     // input tensor name in that model
  std::map<std::string, double> params;   // resolved per-model parameters (unset ones absent)
  bool is_base = false;
};

struct PlannedTensor {
  std::string name;                       // output tensor name
  double layer_t = 0;
  std::vector<PlannedSource> sources;     // in mergekit's order
  int base_index = -1;
  std::map<std::string, double> method_params;
  std::vector<uint64_t> shape;            // output shape (after cropping)
  DType compute_dtype = DType::F32;
  DType out_dtype = DType::F32;
  bool is_embedding = false;              // embed_tokens / lm_head: crop rather than refuse
};

// Where an output decoder layer comes from: the layer of the model that its slice's first source
// names (the slice's template; the other sources' layers are merged into it).
struct LayerOrigin {
  size_t model = 0;  // index into MergePlan::models
  int layer = 0;     // that model's layer
};

struct MergePlan {
  Recipe recipe;
  const MergeMethod* method = nullptr;
  std::vector<std::string> model_names;   // as written in the recipe
  std::vector<std::filesystem::path> model_paths;
  std::vector<std::unique_ptr<Model>> models;
  // Per model: the LoRA adapter applied to it (`model: base+adapter`, alloy/merge/lora.h), or null.
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;
  int base_model = -1;                    // index into models, or -1
  std::vector<PlannedTensor> tensors;
  std::vector<ModelArchitecture> architectures;  // one per model (alloy/core/architecture.h)
  int output_layers = 0;
  std::vector<LayerOrigin> layer_origins; // one per output layer
  int config_donor = 0;                   // model whose config.json the output starts from
  // The output's config.json (without torch_dtype, which the executor sets from the tensors): the
  // donor's, with the layer count and every per-layer list of its family remapped to the output's
  // layers (merged_config).
  nlohmann::json output_config;
  // Models whose architecture was inferred from tensor names, one sentence each.
  std::vector<std::string> notices;
  // What the merge leaves out that the recipe did not ask to leave out (a model's tensors skipped
  // for a shape that differs from the base's, as mergekit skips them), one sentence per model.
  std::vector<std::string> warnings;
  int tokenizer_donor = 0;                // model whose tokenizer files are copied (or rewritten)
  // With a tokenizer spec: the output vocabulary and each model's map into it (tokenizer_plan.h).
  std::shared_ptr<const TokenizerPlan> tokenizer;
  // The model card's license: the one every model's README.md declares, else "other" (with a
  // warning in `warnings`; alloy/merge/model_card.h, inherited_license).
  std::string license = "other";
  // `modules:`: each merged module's layer-count config key (dotted, "vision_config.depth") and
  // its output layer count, which merged_config() writes where the donor's config has that key.
  std::vector<std::pair<std::string, int>> module_layer_counts;

  uint64_t output_bytes() const;
};

// Opens every referenced model (headers and configs only), checks the recipe against them
// (layer ranges, shapes, architectures), and resolves every output tensor's sources and parameters.
MergePlan plan_merge(Recipe recipe, const PlanOptions& options);

// The donor's config.json for the output layers: the layer count (inside text_config where the
// family keeps it there) and the family's per-layer lists (layer_types, mlp_only_layers,
// first_k_dense_replace, ...) remapped through layer_origins. Throws Error(kRecipe) when a list
// cannot describe the output's layers (a dense-prefix count over layers that are not a prefix).
nlohmann::json merged_config(const MergePlan& plan);

// The resolved plan as JSON, for --dry-run: tensors with sources, parameters and shapes.
nlohmann::json plan_to_json(const MergePlan& plan);

}  // namespace alloy
