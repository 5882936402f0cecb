// Planner stage 3: one output tensor, its sources, their resolved parameters and its dtypes.
#include <algorithm>

#include "plan_internal.h"

namespace alloy::detail {
namespace {

bool is_embedding_name(const std::string& name) {
  return name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos;
}

// Resolves the method's parameters for one source of one tensor, mergekit's way: the model's own
// parameters, then the slice's, then its module's (`modules:`), then the recipe's, then the method's default; each evaluated at the
// layer position t and against the tensor's name (input name for per-model parameters, output
// name for method-level ones).
void resolve_parameters(const PlanContext& context, const SliceSpec& slice, const RecipeSource& source, double t,
                        const std::string& input_name, PlannedSource* out, PlannedTensor* tensor) {
  const Recipe& r = context.plan.recipe;
  for (const auto& p : context.plan.method->parameters()) {
    std::optional<double> value;
    const std::string& match = p.per_model ? input_name : tensor->name;
    const Parameters* levels[] = {p.per_model ? &source.parameters : nullptr, slice.parameters,
                                  slice.module_parameters, &r.parameters};
    for (const Parameters* level : levels) {
      if (value || !level) continue;
      const auto it = level->find(p.name);
      if (it != level->end()) value = it->second.evaluate(t, match);
    }
    if (!value) value = p.default_value;
    if (p.per_model) {
      if (value) {
        out->params[p.name] = *value;
      } else if (p.required && !out->is_base) {
        context.fail(source.position,
                     "model '" + source.model + "' has no value for '" + p.name + "' (tensor " + input_name + ")");
      }
    } else if (value) {
      tensor->method_params[p.name] = *value;
    } else if (p.required) {
      context.fail(r.merge_method_position,
                   r.merge_method + " needs parameter '" + p.name + "' (tensor " + tensor->name + ")");
    }
  }
}

// The input tensor of `source` (lm_head falls back to the tied embeddings); fails if it is missing.
// *present is set when the tensor was found under its own name.
const ModelTensor& find_input(const PlanContext& context, const RecipeSource& source, const std::string& output_name,
                              std::string* input, bool* present) {
  const Model& model = context.model_of(source);
  const ModelTensor* found = model.find(*input);
  const std::string tied = found ? "" : context.architecture_of(source).tied_to(output_name);
  if (!found && !tied.empty()) {
    *input = tied;  // tied embeddings
    found = model.find(*input);
  } else if (found) {
    *present = true;
  }
  if (!found) {
    context.fail(source.position, "model '" + source.model + "' has no tensor '" + *input + "'",
                 ErrorCode::kMissingTensor);
  }
  return *found;
}

// Compute dtype: the recipe's, else the stored one (torch promotes mixed half types to float32).
void choose_dtypes(const PlanContext& context, const std::vector<const TensorInfo*>& infos, const SliceSpec& slice,
                   PlannedTensor* tensor) {
  const Recipe& r = context.plan.recipe;
  DType stored = infos[0]->dtype;
  for (const auto* info : infos) {
    if (info->dtype != stored) stored = DType::F32;
  }
  tensor->compute_dtype = r.dtype.value_or(stored);
  tensor->out_dtype = r.out_dtype.value_or(context.plan.method->result_dtype(tensor->compute_dtype));
  for (const auto* info : infos) {
    if (!can_load_as_f32(info->dtype)) {
      context.fail(slice.position, "tensor '" + tensor->name + "' is " + dtype_name(info->dtype) +
                                       ", which alloy cannot merge (floating-point tensors only)");
    }
  }
}

}  // namespace

void add_tensor(PlanContext& context, const std::string& output_name, const SliceSpec& slice, size_t source_limit,
                double t, const InputNameFor& input_for, bool optional) {
  PlannedTensor tensor;
  tensor.name = output_name;
  tensor.layer_t = t;
  tensor.is_embedding = is_embedding_name(output_name);
  const size_t count = std::min(source_limit, slice.sources.size());
  std::vector<const TensorInfo*> infos;
  bool any_present = false;
  for (size_t k = 0; k < count; ++k) {
    const RecipeSource& s = slice.sources[k];
    std::string input = input_for(s);
    const ModelTensor& found = find_input(context, s, output_name, &input, &any_present);
    PlannedSource planned;
    planned.model = static_cast<size_t>(context.model_index(s.model, s.position));
    planned.tensor = input;
    planned.is_base = slice.base_model && s.model == *slice.base_model;
    if (planned.is_base) tensor.base_index = static_cast<int>(tensor.sources.size());
    resolve_parameters(context, slice, s, t, input, &planned, &tensor);
    tensor.sources.push_back(planned);
    infos.push_back(found.info);
  }
  if (optional && !any_present) return;  // no source has an lm_head: none is written
  reconcile_shapes(context, &tensor, infos, slice);
  choose_dtypes(context, infos, slice, &tensor);
  context.plan.tensors.push_back(std::move(tensor));
}

}  // namespace alloy::detail
