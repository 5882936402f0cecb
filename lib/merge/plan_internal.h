// The merge planner's stages (plan_merge in recipe_plan.cpp runs them in order) and the state they
// share. Internal to lib/merge.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "alloy/core/error.h"
#include "alloy/merge/recipe.h"

namespace alloy::detail {

// One slice of the output: its sources (each with a layer range), the slice-level parameters and
// base model. A recipe without slices is one slice over every layer of every model.
struct SliceSpec {
  std::vector<RecipeSource> sources;
  const Parameters* parameters = nullptr;  // slice-level, may be null
  const Parameters* module_parameters = nullptr;  // its module's under `modules:`, may be null
  std::optional<std::string> base_model;
  RecipePosition position;
  int length = 0;  // layers, the same for every source
};

// A module of `modules:` other than the language model (a vision tower, a projector): the family's
// sub-model entries that make it (alternative prefixes of the same module) and its slices, whose
// layer ranges count the module's own layers.
struct ModuleSpec {
  std::string name;
  std::vector<const SubModelDef*> parts;
  std::vector<SliceSpec> slices;
  int output_layers = 0;
};

// What the stages read and build: the plan being filled in and the slices it is made of.
struct PlanContext {
  PlanContext(Recipe recipe, const PlanOptions& plan_options);

  // Throws Error(code) with the recipe's file, line and column of `where` before `message`.
  [[noreturn]] void fail(const RecipePosition& where, const std::string& message,
                         ErrorCode code = ErrorCode::kRecipe) const;
  // The index of the model named `name` in plan.models; fails at `where` if it is not one.
  int model_index(const std::string& name, const RecipePosition& where) const;
  const Model& model_of(const RecipeSource& source) const;
  const ModelArchitecture& architecture_of(const RecipeSource& source) const;
  // Where the recipe first names `model` (for errors about the model itself).
  RecipePosition position_of(const std::string& model) const;

  PlanOptions options;
  MergePlan plan;
  std::vector<SliceSpec> slices;            // the language model's
  bool uses_modules = false;                // the recipe has `modules:`
  std::vector<ModuleSpec> modules;          // its modules other than the language model's
  // Per model index: how many of its tensors reconcile_shapes skipped, and the first one's story.
  std::map<int, std::pair<size_t, std::string>> skipped_for_shape;
};

// plan_sources.cpp: opens every referenced model, lays out the slices and checks their layer
// ranges and base models, and refuses differing architectures unless crimes are allowed.
void open_models(PlanContext& context);
void build_slices(PlanContext& context);
void check_architectures(const PlanContext& context);

// plan_sources.cpp: the models' architectures (alloy/core/architecture.h: layer prefix, layer
// count, per-layer tensor sets), one per model, and the notices of those inferred from names.
void detect_architectures(PlanContext& context);

// plan_layers.cpp: the output's tensor list: embeddings, then each output layer's tensors (the
// suffixes of the layer its slice's first source names, renamed under the output's layer prefix),
// then the rest, then lm_head where any source has one; and the output layers' origins.
void plan_tensors(PlanContext& context);

// plan_modules.cpp: the sub-model part of `module` that `model` has (the first whose prefix names
// one of its tensors), or null; its layer count (the config's layer_count_key, else one more than
// the highest block index); and every module's tensors, after the language model's.
const SubModelDef* module_part(const Model& model, const ModuleSpec& module);
int module_layer_count(const Model& model, const ModuleSpec& module);
void plan_module_tensors(PlanContext& context);
// The module name (mergekit's) of a sub-model tensor of `arch`, "" for the language model's.
std::string module_of_tensor(const ModelArchitecture& arch, const std::string& name);

// plan_tensor.cpp: one output tensor from the first `source_limit` sources of `slice`, reading
// `input_for(source)` from each, with resolved parameters, shape and dtypes. An optional tensor
// (lm_head) that no source has is skipped.
using InputNameFor = std::function<std::string(const RecipeSource&)>;
void add_tensor(PlanContext& context, const std::string& output_name, const SliceSpec& slice,
                size_t source_limit, double t, const InputNameFor& input_for, bool optional);

// plan_shapes.cpp: makes the sources' shapes agree under the method's crop policy (mergekit's
// rules: crop embeddings, skip a model whose tensor differs from the base's) or fails naming them.
void reconcile_shapes(PlanContext& context, PlannedTensor* tensor,
                      std::vector<const TensorInfo*>& infos, const SliceSpec& slice);

}  // namespace alloy::detail
