// A model's vocabulary from its tokenizer.json (tokenizer_plan.h), read as untrusted input.
#include <algorithm>
#include <limits>

#include "alloy/core/error.h"
#include "tokenizer_plan.h"

namespace alloy {
namespace {

constexpr int kMaxDepth = 64;
constexpr int64_t kMaxId = std::numeric_limits<int32_t>::max();

[[noreturn]] void refuse(const std::string& file, const std::string& why) {
  throw Error(ErrorCode::kBadConfig, file + ": " + why);
}

int64_t token_id(const nlohmann::ordered_json& value, const std::string& file, const std::string& token) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > kMaxId) {
    refuse(file, "token '" + token + "' has id " + value.dump() + "; ids are whole numbers from 0 to 2^31-1");
  }
  return value.get<int64_t>();
}

}  // namespace

Vocabulary parse_vocabulary(std::string_view text, const std::string& file) {
  using json = nlohmann::ordered_json;
  json root;
  try {
    root = json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
          depth > kMaxDepth)
        refuse(file, "nests too deeply");
      return true;
    });
  } catch (const json::exception& e) {
    refuse(file, std::string("not valid JSON: ") + e.what());
  }
  if (!root.is_object()) refuse(file, "not a JSON object (a tokenizer.json has model and added_tokens)");
  const auto model = root.find("model");
  if (model == root.end() || !model->is_object()) refuse(file, "has no \"model\" object");
  const auto vocab = model->find("vocab");
  if (vocab == model->end()) refuse(file, "model has no \"vocab\"");

  Vocabulary v;
  v.file = file;
  std::unordered_map<int64_t, std::string> token_at;
  auto add = [&](const std::string& token, int64_t id) {
    const auto [it, fresh] = token_at.emplace(id, token);
    if (!fresh && it->second != token) {
      refuse(file, "id " + std::to_string(id) + " is given to both '" + it->second + "' and '" + token + "'");
    }
    const auto [at, added] = v.ids.emplace(token, id);
    if (!added && at->second != id) {
      refuse(file, "token '" + token + "' has two ids, " + std::to_string(at->second) + " and " + std::to_string(id));
    }
  };
  if (vocab->is_object()) {  // BPE, WordPiece, WordLevel
    for (auto it = vocab->begin(); it != vocab->end(); ++it) add(it.key(), token_id(it.value(), file, it.key()));
  } else if (vocab->is_array()) {  // Unigram: [token, score] pairs, the id is the position
    if (vocab->size() > static_cast<size_t>(kMaxId)) refuse(file, "model.vocab is too long");
    int64_t id = 0;
    for (const auto& entry : *vocab) {
      if (!entry.is_array() || entry.empty() || !entry[0].is_string()) {
        refuse(file, "model.vocab entry " + std::to_string(id) + " is not a [token, score] pair");
      }
      add(entry[0].get<std::string>(), id++);
    }
  } else {
    refuse(file, "model.vocab is neither an object (BPE, WordPiece) nor a list (Unigram)");
  }
  if (const auto added = root.find("added_tokens"); added != root.end() && !added->is_null()) {
    if (!added->is_array()) refuse(file, "added_tokens is not a list");
    for (const auto& entry : *added) {
      const auto content = entry.is_object() ? entry.find("content") : entry.end();
      const auto id = entry.is_object() ? entry.find("id") : entry.end();
      if (content == entry.end() || !content->is_string() || id == entry.end()) {
        refuse(file, "an added_tokens entry lacks a string \"content\" or an \"id\"");
      }
      add(content->get<std::string>(), token_id(*id, file, content->get<std::string>()));
      v.added.push_back(entry);
      v.added_contents.insert(content->get<std::string>());
    }
  }
  for (const auto& [id, token] : token_at) v.by_id.emplace_back(token, id);
  std::sort(v.by_id.begin(), v.by_id.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  std::sort(v.added.begin(), v.added.end(),
            [](const json& a, const json& b) { return a["id"].get<int64_t>() < b["id"].get<int64_t>(); });
  return v;
}

}  // namespace alloy
