// Planner stage 4: sources whose shapes differ, under the merge method's crop policy.
#include <algorithm>

#include "plan_internal.h"
#include "tokenizer_plan.h"

namespace alloy::detail {
namespace {

// "ft_1 [4,8], ft_2 [4,6]": the models' shapes, for the error messages.
std::string describe_shapes(const PlanContext& context, const PlannedTensor& tensor,
                            const std::vector<const TensorInfo*>& infos) {
  std::string text;
  for (size_t k = 0; k < infos.size(); ++k) {
    if (k) text += ", ";
    text += context.plan.model_names[tensor.sources[k].model] + " [";
    for (size_t d = 0; d < infos[k]->shape.size(); ++d) {
      if (d) text += ",";
      text += std::to_string(infos[k]->shape[d]);
    }
    text += "]";
  }
  return text;
}

// Embeddings of differing vocabularies cropped without a tokenizer spec: rows past the cut are
// lost and the rest are merged by id, not by token; said once per tensor, never silently.
void warn_cropped(PlanContext& context, const PlannedTensor& tensor, const std::vector<const TensorInfo*>& infos,
                  const std::vector<uint64_t>& shape) {
  context.plan.warnings.push_back(
      "tensor '" + tensor.name + "': the models' vocabularies differ (" + describe_shapes(context, tensor, infos) +
      "); cropped to " + std::to_string(shape[0]) + " rows and merged row by row by id, as mergekit does without a "
      "tokenizer spec; set tokenizer_source (base, union or a model) to map the rows token by token");
}

// kToBase: embeddings are cropped to the base's shape (every source must be at least as large);
// any other tensor keeps only the sources whose shape is the base's, as mergekit skips the rest.
void crop_to_base(PlanContext& context, PlannedTensor* tensor, std::vector<const TensorInfo*>& infos,
                  const SliceSpec& slice) {
  const auto& base_shape = infos[static_cast<size_t>(tensor->base_index)]->shape;
  if (tensor->is_embedding) {
    warn_cropped(context, *tensor, infos, base_shape);
    for (const auto* info : infos) {
      for (size_t d = 0; d < base_shape.size(); ++d) {
        if (info->shape[d] < base_shape[d]) {
          context.fail(slice.position,
                       "tensor '" + tensor->name + "' is smaller than the base's: " +
                           describe_shapes(context, *tensor, infos),
                       ErrorCode::kShapeMismatch);
        }
      }
    }
  } else {
    std::vector<PlannedSource> kept;
    std::vector<const TensorInfo*> kept_infos;
    for (size_t k = 0; k < infos.size(); ++k) {
      if (infos[k]->shape == base_shape) {
        if (static_cast<int>(k) == tensor->base_index) tensor->base_index = static_cast<int>(kept.size());
        kept.push_back(tensor->sources[k]);
        kept_infos.push_back(infos[k]);
      } else {
        auto& [count, first] = context.skipped_for_shape[tensor->sources[k].model];
        if (count++ == 0) first = "'" + tensor->name + "': " + describe_shapes(context, *tensor, infos);
      }
    }
    tensor->sources = kept;
    infos = kept_infos;
  }
  tensor->shape = base_shape;
}

}  // namespace

void reconcile_shapes(PlanContext& context, PlannedTensor* tensor, std::vector<const TensorInfo*>& infos,
                      const SliceSpec& slice) {
  std::vector<uint64_t> shape = infos[0]->shape;
  if (context.plan.tokenizer && tensor->is_embedding) {
    // Rows mapped token by token to the output vocabulary (tokenizer_embed.cpp); widths must agree.
    for (const auto* info : infos) {
      if (info->shape.size() != 2 || info->shape[1] != shape[1] || shape.size() != 2) {
        context.fail(slice.position, "tensor '" + tensor->name + "': embeddings must be 2-D and of one width to map "
                                     "their rows through the tokenizers: " + describe_shapes(context, *tensor, infos),
                     ErrorCode::kShapeMismatch);
      }
    }
    tensor->shape = {context.plan.tokenizer->rows, shape[1]};
    return;
  }
  const CropPolicy policy = context.plan.method->crop_policy();
  bool mismatch = false;
  for (const auto* info : infos) mismatch |= info->shape != shape;
  if (!mismatch) {
    tensor->shape = shape;
    return;
  }
  for (const auto* info : infos) {
    if (info->shape.size() != shape.size()) {
      context.fail(slice.position,
                   "tensor '" + tensor->name + "' has different ranks: " + describe_shapes(context, *tensor, infos),
                   ErrorCode::kShapeMismatch);
    }
  }
  if (policy == CropPolicy::kToBase && tensor->base_index >= 0) {
    crop_to_base(context, tensor, infos, slice);
    return;
  }
  if (!tensor->is_embedding || policy == CropPolicy::kNone) {
    context.fail(slice.position,
                 "tensor '" + tensor->name + "' has different shapes: " + describe_shapes(context, *tensor, infos),
                 ErrorCode::kShapeMismatch);
  }
  // Embeddings of differing vocabularies are cropped to the smallest (mergekit's default).
  for (const auto* info : infos) {
    for (size_t d = 0; d < shape.size(); ++d) shape[d] = std::min(shape[d], info->shape[d]);
  }
  warn_cropped(context, *tensor, infos, shape);
  tensor->shape = shape;
}

}  // namespace alloy::detail
