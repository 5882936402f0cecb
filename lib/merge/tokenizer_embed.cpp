// embed_tokens / lm_head rows mapped to the output vocabulary, token by token (mergekit's
// PermutedEmbeddings, mergekit/tokenizer/embed.py; docs/methods.md "Tokenizers and vocabularies").
#include <algorithm>
#include <cstring>

#include "alloy/core/error.h"
#include "tokenizer_plan.h"

namespace alloy {

void map_embedding_rows(const TokenizerPlan& plan, const std::vector<size_t>& models, int base,
                        const std::vector<const float*>& inputs, const std::vector<uint64_t>& input_rows,
                        uint64_t hidden, DType dtype, const std::vector<float*>& outputs,
                        const std::vector<std::string>& model_names, const std::string& tensor) {
  const size_t count = models.size();
  const uint64_t tokens = plan.tokens.size();
  auto row_in = [&](size_t k, uint64_t id) { return plan.row_of[models[k]][id]; };
  auto source_of = [&](int model, const std::string& token) -> size_t {
    for (size_t k = 0; k < count; ++k) {
      if (static_cast<int>(models[k]) == model) return k;
    }
    throw Error(ErrorCode::kRecipe, "tensor '" + tensor + "': tokenizer.tokens['" + token + "'] takes its row from '" +
                                        model_names[static_cast<size_t>(model)] + "', which is not a source of it");
  };
  for (size_t k = 0; k < count; ++k) {
    for (uint64_t id = 0; id < tokens; ++id) {
      if (row_in(k, id) >= 0 && static_cast<uint64_t>(row_in(k, id)) >= input_rows[k]) {
        throw Error(ErrorCode::kShapeMismatch, "tensor '" + tensor + "' of '" + model_names[models[k]] + "' has " +
                                                   std::to_string(input_rows[k]) + " rows; its tokenizer puts '" +
                                                   plan.tokens[id] + "' at row " + std::to_string(row_in(k, id)));
      }
    }
  }
  std::vector<float> fallback(hidden);
  for (uint64_t id = 0; id < tokens; ++id) {
    const std::string& token = plan.tokens[id];
    const auto rule = plan.rules.find(static_cast<int64_t>(id));
    const bool force = rule != plan.rules.end() && rule->second.force;
    // The row a model that lacks the token (or is forced) gets: the rule's, else the only model
    // that has it, else the base's, else the mean of the models that have it; zero if none does.
    std::fill(fallback.begin(), fallback.end(), 0.0f);
    size_t present = 0, last = 0;
    for (size_t k = 0; k < count; ++k) {
      if (row_in(k, id) >= 0) ++present, last = k;
    }
    const float* from = nullptr;
    if (rule != plan.rules.end()) {
      const TokenizerPlan::Rule& r = rule->second;
      if (r.kind == TokenSourceSpec::Kind::kModel) {
        const size_t k = source_of(r.model, token);
        from = inputs[k] + static_cast<uint64_t>(row_in(k, id)) * hidden;
      } else if (r.kind == TokenSourceSpec::Kind::kModelToken) {
        const size_t k = source_of(r.model, token);
        if (r.source_row < 0 || static_cast<uint64_t>(r.source_row) >= input_rows[k]) {
          throw Error(ErrorCode::kRecipe, "tensor '" + tensor + "': tokenizer.tokens['" + token + "'] names row " +
                                              std::to_string(r.source_row) + " of '" + model_names[models[k]] +
                                              "', which has " + std::to_string(input_rows[k]) + " rows");
        }
        from = inputs[k] + static_cast<uint64_t>(r.source_row) * hidden;
      }
    } else if (present == 1) {
      from = inputs[last] + static_cast<uint64_t>(row_in(last, id)) * hidden;
    } else if (present > 1 && base >= 0 && row_in(static_cast<size_t>(base), id) >= 0) {
      from = inputs[base] + static_cast<uint64_t>(row_in(static_cast<size_t>(base), id)) * hidden;
    } else if (present > 1) {
      // mergekit sums in the tensor's dtype, then divides by the count.
      for (size_t k = 0; k < count; ++k) {
        if (row_in(k, id) < 0) continue;
        const float* row = inputs[k] + static_cast<uint64_t>(row_in(k, id)) * hidden;
        for (uint64_t j = 0; j < hidden; ++j) fallback[j] = round_to(dtype, fallback[j] + row[j]);
      }
      for (uint64_t j = 0; j < hidden; ++j) fallback[j] = round_to(dtype, fallback[j] / static_cast<float>(present));
    }
    if (from != nullptr) std::memcpy(fallback.data(), from, hidden * sizeof(float));
    for (size_t k = 0; k < count; ++k) {
      const int64_t row = row_in(k, id);
      const float* src = row >= 0 && !force ? inputs[k] + static_cast<uint64_t>(row) * hidden : fallback.data();
      std::memcpy(outputs[k] + id * hidden, src, hidden * sizeof(float));
    }
  }
  // Padding rows (pad_to_multiple_of): the mean of the model's own mapped rows.
  if (plan.rows > tokens) {
    for (size_t k = 0; k < count; ++k) {
      std::vector<double> mean(hidden, 0.0);
      for (uint64_t id = 0; id < tokens; ++id) {
        for (uint64_t j = 0; j < hidden; ++j) mean[j] += outputs[k][id * hidden + j];
      }
      for (uint64_t id = tokens; id < plan.rows; ++id) {
        for (uint64_t j = 0; j < hidden; ++j)
          outputs[k][id * hidden + j] = round_to(dtype, static_cast<float>(mean[j] / static_cast<double>(tokens)));
      }
    }
  }
}

}  // namespace alloy
