// Tokenizers and vocabularies, as mergekit merges them (mergekit/tokenizer/: build.py, embed.py;
// the rules are written out in docs/methods.md, "Tokenizers and vocabularies"). Internal to
// lib/merge:
//   tokenizer_vocab.cpp  a model's vocabulary from its tokenizer.json (checked defensively);
//   tokenizer_build.cpp  the output vocabulary (base | union | a model, plus tokenizer.tokens) and
//                        each model's map into it; the output tokenizer files;
//   tokenizer_embed.cpp  embed_tokens / lm_head rows mapped token by token.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "alloy/core/dtype.h"
#include "alloy/merge/recipe.h"

namespace alloy {

// A tokenizer.json's vocabulary: model.vocab (an object token -> id for BPE, WordPiece and
// WordLevel; a list of [token, score] for Unigram, the id being the position) and added_tokens.
// Ids are whole numbers below 2^31; one id for two different tokens is refused.
struct Vocabulary {
  std::string file;                                  // for messages
  std::vector<std::pair<std::string, int64_t>> by_id;  // every token, in id order
  std::unordered_map<std::string, int64_t> ids;
  std::vector<nlohmann::ordered_json> added;         // added_tokens entries, in id order
  std::unordered_set<std::string> added_contents;

  const int64_t* find(const std::string& token) const {
    const auto it = ids.find(token);
    return it == ids.end() ? nullptr : &it->second;
  }
};

// Parses tokenizer.json text; Error(kBadConfig) naming `file` and the problem.
Vocabulary parse_vocabulary(std::string_view text, const std::string& file);

// The output vocabulary and how each model's rows map into it.
struct TokenizerPlan {
  std::vector<std::string> tokens;            // the output vocabulary, by id
  uint64_t rows = 0;                          // tokens.size() rounded up to pad_to_multiple_of
  // Per model (MergePlan::models order): output id -> that model's row, or -1 where it lacks the
  // token (or has it at an id >= its config's vocab_size).
  std::vector<std::vector<int64_t>> row_of;
  // Per model: its vocabulary as mergekit reads it (the tokenizer base's stripped of ids >= its
  // vocab_size; a model without tokenizer.json takes the tokenizer base's), for model_token rules.
  std::vector<Vocabulary> vocabularies;
  struct Rule {                               // a resolved tokenizer.tokens entry
    TokenSourceSpec::Kind kind = TokenSourceSpec::Kind::kZero;
    int model = -1;                           // kModel, kModelToken
    int64_t source_row = -1;                  // kModelToken: the row in that model's tensor
    bool force = false;
  };
  std::unordered_map<int64_t, Rule> rules;    // output id -> rule
  int tokenizer_base = 0;                     // the model whose tokenizer the output starts from
  // The output's tokenizer.json and tokenizer_config.json when they differ from the donor's files
  // (tokens added or stripped); empty when the donor's files are copied as they are.
  std::string tokenizer_json, tokenizer_config_json;
};

namespace detail {
struct PlanContext;
// Builds plan.tokenizer from the recipe's TokenizerSpec (models already open); adds notices and
// warnings for every mismatch it resolves. Sets plan.tokenizer_donor.
void plan_tokenizer(PlanContext& context);
// The config's vocabulary size (vocab_size, else text_config.vocab_size), if it gives one.
std::optional<int64_t> config_vocab_size(const nlohmann::json& config);
}  // namespace detail

// One embedding tensor of every source, mapped to the output vocabulary (mergekit's
// PermutedEmbeddings). inputs[k] holds source k's rows (input_rows[k] of them, `hidden` wide) of
// model models[k]; base is the index into the sources of the base model, or -1. Writes plan.rows
// x hidden values into outputs[k], rounded to `dtype`. Error(kRecipe) when a tokens rule names a
// model that is not a source of the tensor or a token that model lacks.
void map_embedding_rows(const TokenizerPlan& plan, const std::vector<size_t>& models, int base,
                        const std::vector<const float*>& inputs, const std::vector<uint64_t>& input_rows,
                        uint64_t hidden, DType dtype, const std::vector<float*>& outputs,
                        const std::vector<std::string>& model_names, const std::string& tensor);

}  // namespace alloy
