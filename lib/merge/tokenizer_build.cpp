// The output vocabulary and each model's map into it (mergekit/tokenizer/build.py's rules,
// docs/methods.md "Tokenizers and vocabularies"), and the output's tokenizer files.
#include <algorithm>
#include <memory>

#include "plan_internal.h"
#include "tokenizer_plan.h"

namespace alloy {
namespace detail {
namespace {

using ojson = nlohmann::ordered_json;

std::string quoted(const std::string& token) { return "'" + token + "'"; }

// The first few items of a list, for messages: "'a', 'b', 'c' and 4 more".
std::string sample(const std::vector<std::string>& items) {
  std::string text;
  for (size_t i = 0; i < items.size() && i < 3; ++i) text += (i ? ", " : "") + quoted(items[i]);
  if (items.size() > 3) text += " and " + std::to_string(items.size() - 3) + " more";
  return text;
}

std::string file_text(const Model& model, const std::string& name) {
  const auto& names = model.auxiliary_files();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] != name) continue;
    const MappedFile& file = model.auxiliary(i);
    std::string text(file.size(), '\0');
    file.read(0, file.size(), text.data());
    return text;
  }
  return {};
}

bool has_file(const Model& model, const std::string& name) {
  const auto& names = model.auxiliary_files();
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The vocabulary without the ids at or above `limit` (mergekit's get_stripped_tokenizer).
Vocabulary stripped(const Vocabulary& v, int64_t limit, std::vector<std::string>* removed) {
  Vocabulary out;
  out.file = v.file;
  for (const auto& [token, id] : v.by_id) {
    if (id >= limit) {
      removed->push_back(token);
      continue;
    }
    out.by_id.emplace_back(token, id);
    out.ids.emplace(token, id);
  }
  for (const auto& entry : v.added) {
    if (entry["id"].get<int64_t>() >= limit) continue;
    out.added.push_back(entry);
    out.added_contents.insert(entry["content"].get<std::string>());
  }
  return out;
}

// An added_tokens entry for a token added as mergekit's tokenizer.add_tokens(str) adds it.
ojson plain_added_token(const std::string& token, int64_t id) {
  return ojson{{"id", id}, {"content", token}, {"single_word", false}, {"lstrip", false},
               {"rstrip", false}, {"normalized", true}, {"special", false}};
}

// The donor's tokenizer.json and tokenizer_config.json with `removed` tokens taken out and
// `appended` added tokens put in (their ids follow the donor's).
void rewrite_files(const Model& donor, const Vocabulary& vocab, const std::vector<std::string>& removed,
                   const std::vector<ojson>& appended, TokenizerPlan* plan) {
  ojson tok = ojson::parse(file_text(donor, "tokenizer.json"));  // parsed once before: valid
  if (!removed.empty()) {
    const std::unordered_set<std::string> gone(removed.begin(), removed.end());
    ojson& model_vocab = tok["model"]["vocab"];
    if (!model_vocab.is_object()) {
      throw Error(ErrorCode::kBadConfig, vocab.file + ": has tokens at ids >= the config's vocab_size and a Unigram "
                                         "vocabulary; only BPE-style vocabularies can be stripped (as in mergekit)");
    }
    for (const auto& token : removed) model_vocab.erase(token);
    if (auto merges = tok["model"].find("merges"); merges != tok["model"].end() && merges->is_array()) {
      ojson kept = ojson::array();
      for (const auto& m : *merges) {
        std::vector<std::string> parts;
        if (m.is_string()) {
          const std::string s = m.get<std::string>();
          const size_t space = s.find(' ');
          parts = {s.substr(0, space), space == std::string::npos ? "" : s.substr(space + 1)};
        } else if (m.is_array()) {
          for (const auto& p : m) parts.push_back(p.is_string() ? p.get<std::string>() : "");
        }
        if (std::none_of(parts.begin(), parts.end(), [&](const std::string& p) { return gone.count(p) > 0; }))
          kept.push_back(m);
      }
      *merges = kept;
    }
  }
  ojson added = ojson::array();
  for (const auto& entry : vocab.added) added.push_back(entry);
  for (const auto& entry : appended) added.push_back(entry);
  tok["added_tokens"] = added;
  plan->tokenizer_json = tok.dump(2) + "\n";

  const std::string config_text = file_text(donor, "tokenizer_config.json");
  if (config_text.empty()) return;
  ojson config;
  try {
    config = ojson::parse(config_text);
  } catch (const ojson::exception& e) {
    throw Error(ErrorCode::kBadConfig, donor.path().string() + "/tokenizer_config.json: not valid JSON: " + e.what());
  }
  if (config.is_object() && config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
    ojson decoder = ojson::object();
    for (const auto& entry : added) {
      ojson info = entry;
      info.erase("id");
      decoder[std::to_string(entry["id"].get<int64_t>())] = info;
    }
    config["added_tokens_decoder"] = decoder;
  }
  plan->tokenizer_config_json = config.dump(2) + "\n";
}

}  // namespace

std::optional<int64_t> config_vocab_size(const nlohmann::json& config) {
  for (const nlohmann::json* c : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (c && c->is_object() && c->contains("vocab_size") && (*c)["vocab_size"].is_number_integer())
      return (*c)["vocab_size"].get<int64_t>();
  }
  return std::nullopt;
}

void plan_tokenizer(PlanContext& context) {
  MergePlan& plan = context.plan;
  const TokenizerSpec& spec = *plan.recipe.tokenizer;
  auto result = std::make_shared<TokenizerPlan>();
  TokenizerPlan& tp = *result;
  const size_t n_models = plan.models.size();
  const int base = tp.tokenizer_base = plan.base_model >= 0 ? plan.base_model : 0;
  auto limit_of = [&](size_t m, const Vocabulary& v) {
    return config_vocab_size(plan.models[m]->config()).value_or(static_cast<int64_t>(v.by_id.size()));
  };
  // Every model's vocabulary as mergekit reads it.
  std::vector<std::optional<Vocabulary>> read(n_models);
  for (size_t m = 0; m < n_models; ++m) {
    if (!has_file(*plan.models[m], "tokenizer.json")) continue;
    read[m] = parse_vocabulary(file_text(*plan.models[m], "tokenizer.json"),
                               (plan.model_paths[m] / "tokenizer.json").string());
  }
  if (!read[base]) {
    context.fail(spec.position, "tokenizer: the tokenizer base '" + plan.model_names[base] +
                                    "' has no tokenizer.json to build the output vocabulary from");
  }
  std::vector<std::string> base_removed;
  const Vocabulary base_vocab = stripped(*read[base], limit_of(base, *read[base]), &base_removed);
  if (!base_removed.empty()) {
    plan.warnings.push_back("tokenizer: " + std::to_string(base_removed.size()) + " token(s) of '" +
                            plan.model_names[base] + "' have ids >= its config's vocab_size and are left out (" +
                            sample(base_removed) + "), as mergekit strips them");
  }
  tp.vocabularies.resize(n_models);
  for (size_t m = 0; m < n_models; ++m) {
    if (static_cast<int>(m) == base) {
      tp.vocabularies[m] = base_vocab;
    } else if (read[m]) {
      tp.vocabularies[m] = *read[m];
    } else {
      tp.vocabularies[m] = base_vocab;
      plan.warnings.push_back("tokenizer: model '" + plan.model_names[m] + "' has no tokenizer.json; its rows are "
                              "taken to follow the vocabulary of '" + plan.model_names[base] + "' (as mergekit assumes)");
    }
  }

  // The output vocabulary.
  int donor = base;
  const Vocabulary* start = &base_vocab;
  std::vector<std::string> removed = base_removed;
  if (spec.source != "base" && spec.source != "union") {
    donor = context.model_index(spec.source, spec.position);
    if (!read[donor]) context.fail(spec.position, "tokenizer source '" + spec.source + "' has no tokenizer.json");
    start = &*read[donor];  // a named model's tokenizer is used whole (not stripped)
    removed.clear();
  }
  plan.tokenizer_donor = donor;
  for (size_t i = 0; i < start->by_id.size(); ++i) {
    if (start->by_id[i].second != static_cast<int64_t>(i)) {
      throw Error(ErrorCode::kBadConfig, start->file + ": token ids are not 0.." +
                                             std::to_string(start->by_id.size() - 1) + " without gaps (id " +
                                             std::to_string(start->by_id[i].second) + " for '" +
                                             start->by_id[i].first + "')");
    }
  }
  std::unordered_map<std::string, int64_t> out_ids;
  for (const auto& [token, id] : start->by_id) {
    tp.tokens.push_back(token);
    out_ids.emplace(token, id);
  }
  std::vector<ojson> appended;
  auto append = [&](const std::string& token, const ojson& entry) {
    if (out_ids.count(token)) return;
    const int64_t id = static_cast<int64_t>(tp.tokens.size());
    out_ids.emplace(token, id);
    tp.tokens.push_back(token);
    ojson e = entry.is_null() ? plain_added_token(token, id) : entry;
    e["id"] = id;
    appended.push_back(e);
  };
  if (spec.source == "union") {
    // Base first, then the recipe's order: each model's tokens below its vocab_size, in id order,
    // that are an added token in no model; then every model's added tokens, in that order.
    std::vector<size_t> order{static_cast<size_t>(base)};
    for (size_t m = 0; m < n_models; ++m) {
      if (static_cast<int>(m) != base && read[m]) order.push_back(m);
    }
    std::unordered_set<std::string> added_anywhere;
    std::vector<ojson> added_entries;
    for (size_t m : order) {
      const Vocabulary& v = tp.vocabularies[m];
      const int64_t limit = limit_of(m, v);
      for (const auto& entry : v.added) {
        if (entry["id"].get<int64_t>() < limit && added_anywhere.insert(entry["content"].get<std::string>()).second)
          added_entries.push_back(entry);
      }
    }
    for (size_t m : order) {
      const Vocabulary& v = tp.vocabularies[m];
      const int64_t limit = limit_of(m, v);
      for (const auto& [token, id] : v.by_id) {
        if (id < limit && !added_anywhere.count(token)) append(token, ojson());
      }
    }
    for (const auto& entry : added_entries) append(entry["content"].get<std::string>(), entry);
  }
  for (const auto& [token, rule] : spec.tokens) append(token, ojson());  // tokenizer.tokens adds its tokens

  const uint64_t count = tp.tokens.size();
  const uint64_t multiple = spec.pad_to_multiple_of.value_or(1);
  tp.rows = (count + multiple - 1) / multiple * multiple;

  // Each model's map: output id -> its row (its own vocabulary, ids below its vocab_size).
  tp.row_of.assign(n_models, std::vector<int64_t>(count, -1));
  for (size_t m = 0; m < n_models; ++m) {
    const Vocabulary& v = tp.vocabularies[m];
    const int64_t limit = limit_of(m, v);
    std::vector<std::string> missing, beyond;
    for (uint64_t id = 0; id < count; ++id) {
      const int64_t* row = v.find(tp.tokens[id]);
      if (row && *row < limit) {
        tp.row_of[m][id] = *row;
      } else {
        (row ? beyond : missing).push_back(tp.tokens[id]);
      }
    }
    if (!beyond.empty()) {
      plan.warnings.push_back("tokenizer: model '" + plan.model_names[m] + "' has " + std::to_string(beyond.size()) +
                              " output token(s) at ids >= its vocab_size (" + sample(beyond) +
                              "); they count as missing from it");
    }
    if (!missing.empty()) {
      plan.notices.push_back("tokenizer: model '" + plan.model_names[m] + "' lacks " + std::to_string(missing.size()) +
                             " of the " + std::to_string(count) + " output tokens (" + sample(missing) +
                             "); its rows for them follow mergekit's rules (docs/methods.md)");
    }
  }
  std::vector<std::string> nowhere;
  for (uint64_t id = 0; id < count; ++id) {
    bool any = false;
    for (size_t m = 0; m < n_models; ++m) any |= tp.row_of[m][id] >= 0;
    if (!any && !std::any_of(spec.tokens.begin(), spec.tokens.end(), [&](const auto& t) { return t.first == tp.tokens[id]; }))
      nowhere.push_back(tp.tokens[id]);
  }
  if (!nowhere.empty()) {
    plan.warnings.push_back("tokenizer: " + std::to_string(nowhere.size()) + " output token(s) are in no model (" +
                            sample(nowhere) + "); their rows are zero, as in mergekit");
  }

  // tokenizer.tokens rules, resolved against the models.
  for (const auto& [token, rule] : spec.tokens) {
    TokenizerPlan::Rule r;
    r.kind = rule.kind;
    r.force = rule.force;
    if (rule.kind != TokenSourceSpec::Kind::kZero) r.model = context.model_index(rule.model, rule.position);
    if (rule.kind == TokenSourceSpec::Kind::kModel && tp.row_of[r.model][out_ids.at(token)] < 0) {
      context.fail(rule.position, "tokenizer.tokens: token '" + token + "' is not in model '" + rule.model + "'");
    }
    if (rule.kind == TokenSourceSpec::Kind::kModelToken) {
      if (rule.token_id) {
        r.source_row = *rule.token_id;
      } else if (const int64_t* row = tp.vocabularies[r.model].find(*rule.token)) {
        r.source_row = *row;
      } else {
        context.fail(rule.position, "tokenizer.tokens: token '" + *rule.token + "' is not in model '" + rule.model + "'");
      }
    }
    tp.rules[out_ids.at(token)] = r;
  }

  const std::string what = spec.source == "union" || spec.source == "base" ? spec.source : "'" + spec.source + "'";
  plan.notices.push_back("tokenizer " + what + ": " + std::to_string(count) + " tokens" +
                         (appended.empty() ? "" : " (" + std::to_string(appended.size()) + " added to the vocabulary of '" +
                                                      plan.model_names[donor] + "')") +
                         (tp.rows != count ? ", padded to " + std::to_string(tp.rows) + " rows" : "") +
                         "; embed_tokens and lm_head rows are mapped token by token");
  if (!removed.empty() || !appended.empty()) rewrite_files(*plan.models[donor], *start, removed, appended, &tp);
  plan.tokenizer = std::move(result);
}

}  // namespace detail
}  // namespace alloy
