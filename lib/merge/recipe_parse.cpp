// Recipe parsing: YAML -> alloy::Recipe, with positions, and every structural check that needs no
// model: keys, types, the method and the parameters it takes.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "alloy/core/error.h"
#include "alloy/core/hub_cache.h"
#include "alloy/core/utf8.h"
#include "alloy/merge/recipe.h"
#include "chat_template.h"
#include "recipe_yaml.h"

namespace alloy {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the closest candidate within a small distance, else "".
std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
  std::string normalized = word;
  std::replace(normalized.begin(), normalized.end(), '-', '_');
  std::transform(normalized.begin(), normalized.end(), normalized.begin(), ::tolower);
  std::string best;
  size_t best_distance = 3;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(normalized, c);
    if (d < best_distance) best_distance = d, best = c;
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : ", ") + w;
  return out;
}

class Parser {
 public:
  Parser(const std::string& label) : label_(label) {}

  [[noreturn]] void fail(const YAML::Node& node, const std::string& message) const {
    fail_at(position(node), message);
  }
  // "FILE:LINE:COLUMN: message", or "FILE: message" where yaml-cpp knows no position.
  [[noreturn]] void fail_at(const RecipePosition& p, const std::string& message) const {
    if (p.line <= 0) throw Error(ErrorCode::kRecipe, label_ + ": " + message);
    throw Error(ErrorCode::kRecipe, label_ + ":" + std::to_string(p.line) + ":" + std::to_string(p.column) + ": " +
                                        message);
  }
  static RecipePosition position(const YAML::Node& node) {
    const YAML::Mark mark = node.Mark();
    return {mark.line + 1, mark.column + 1};
  }

  // The map's entries, refusing keys outside `allowed` (with a suggestion) and repeated keys.
  std::vector<std::pair<YAML::Node, YAML::Node>> entries(const YAML::Node& map, const std::vector<std::string>& allowed,
                                                         const std::string& what, bool any_key = false) const {
    if (!map.IsMap()) fail(map, what + " must be a mapping of keys to values");
    std::vector<std::pair<YAML::Node, YAML::Node>> out;
    std::set<std::string> seen;
    for (const auto& entry : map) {
      const std::string key = entry.first.as<std::string>();
      if (!any_key && std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        fail(entry.first, "unknown key '" + key + "' in " + what + suggestion(key, allowed) +
                              "; allowed: " + join(allowed));
      }
      if (!seen.insert(key).second) fail(entry.first, "key '" + key + "' appears twice in " + what);
      out.emplace_back(entry.first, entry.second);
    }
    return out;
  }
  // The map's entries under any keys, each once.
  std::vector<std::pair<YAML::Node, YAML::Node>> entries_any(const YAML::Node& map, const std::string& what) const {
    return entries(map, {}, what, true);
  }

  std::string scalar_string(const YAML::Node& node, const std::string& what) const {
    if (!node.IsScalar()) fail(node, what + " must be a string");
    return node.as<std::string>();
  }

  double number(const YAML::Node& node, const std::string& what) const {
    if (!node.IsScalar()) fail(node, what + " must be a number");
    double value;
    if (YAML::convert<double>::decode(node, value)) return value;
    bool flag;
    if (YAML::convert<bool>::decode(node, flag)) return flag ? 1.0 : 0.0;
    fail(node, what + " must be a number or true/false, not '" + node.as<std::string>() + "'");
  }

  // A parameter's value: a number inside the parameter's range (mergekit's validators, and NaN
  // and infinities refused), so that a bad value fails here and not at the last tensor.
  double parameter_value(const YAML::Node& node, const std::string& what, const MethodParameter& p) const {
    const double value = number(node, what);
    if (!std::isfinite(value)) fail(node, what + " is " + node.as<std::string>() + "; it must be a finite number");
    if (value < p.lowest || value > p.highest) {
      std::ostringstream range;
      range << what << " is " << node.as<std::string>() << "; it must be ";
      if (std::isinf(p.lowest)) {
        range << "at most " << p.highest;
      } else if (std::isinf(p.highest)) {
        range << "at least " << p.lowest;
      } else {
        range << "between " << p.lowest << " and " << p.highest;
      }
      fail(node, range.str());
    }
    return value;
  }

  // A scalar or a gradient (list of numbers).
  Setting plain_setting(const YAML::Node& node, const std::string& what, const MethodParameter& p) const {
    Setting s;
    s.position = position(node);
    if (node.IsScalar()) {
      s.scalar = parameter_value(node, what, p);
      return s;
    }
    if (!node.IsSequence()) fail(node, what + " must be a number or a list of numbers");
    if (node.size() == 0) fail(node, what + ": a gradient needs at least one value");
    s.kind = Setting::Kind::kGradient;
    for (const auto& item : node) s.gradient.push_back(parameter_value(item, what + " gradient entry", p));
    return s;
  }

  Setting setting(const YAML::Node& node, const std::string& what, const MethodParameter& p) const {
    if (node.IsSequence() && node.size() > 0 && node[0].IsMap()) {
      Setting s;
      s.kind = Setting::Kind::kFilters;
      s.position = position(node);
      for (const auto& item : node) {
        Setting::Filtered filtered;
        bool has_value = false;
        for (const auto& [key, value] : entries(item, {"filter", "value"}, what + " filter entry")) {
          if (key.as<std::string>() == "filter") {
            filtered.filter = scalar_string(value, "filter");
          } else {
            filtered.value = std::make_shared<Setting>(plain_setting(value, what, p));
            has_value = true;
          }
        }
        if (!has_value) fail(item, what + ": filter entry has no 'value'");
        s.filters.push_back(filtered);
      }
      return s;
    }
    return plain_setting(node, what, p);
  }

  Parameters parameters(const YAML::Node& node, const MergeMethod* method, bool per_model_level) const {
    std::vector<std::string> names;
    for (const auto& p : method->parameters()) names.push_back(p.name);
    Parameters out;
    const std::vector<MethodParameter> declared = method->parameters();
    for (const auto& [key_node, value] : entries(node, names, "parameters of " + std::string(method->name()))) {
      const std::string key = key_node.as<std::string>();
      const MethodParameter& p = *std::find_if(declared.begin(), declared.end(),
                                               [&](const MethodParameter& d) { return d.name == key; });
      if (per_model_level && !p.per_model) {
        fail(key_node, "'" + key + "' is a parameter of the whole merge, not of one model; set it under the "
                           "top-level or slice parameters");
      }
      out[key] = setting(value, "parameter '" + key + "'", p);
    }
    return out;
  }

  std::string model_reference(const YAML::Node& node) const {
    const std::string model = scalar_string(node, "model");
    if (model.empty()) fail(node, "model path is empty");
    // org/name@revision resolves through the Hub cache (alloy/core/hub_cache.h) when no local
    // folder has that name; '@' on anything else is a typo or a path we would not find.
    if (model.find('@') != std::string::npos && !looks_like_hub_id(model)) {
      fail(node, "model '" + model + "': '@revision' belongs to Hub ids (org/name@revision, found in the Hub cache)");
    }
    return model;
  }

  // tokenizer_source / tokenizer.source: base, union or a model reference.
  std::string tokenizer_source(const YAML::Node& node) const {
    const std::string source = scalar_string(node, "tokenizer source");
    return source == "base" || source == "union" ? source : model_reference(node);
  }

  // One entry of tokenizer.tokens: {source: MODEL | {kind: zero} | {kind: model_token, model,
  // token | token_id}, force: bool} (mergekit's TokenEmbeddingConfig).
  TokenSourceSpec token_source(const YAML::Node& node, const std::string& token) const {
    TokenSourceSpec spec;
    spec.position = position(node);
    const std::string what = "tokenizer.tokens['" + token + "']";
    bool has_source = false;
    for (const auto& [key_node, value] : entries(node, {"source", "force"}, what)) {
      if (key_node.as<std::string>() == "force") {
        bool force = false;
        if (!value.IsScalar() || !YAML::convert<bool>::decode(value, force)) fail(value, what + ".force must be true or false");
        spec.force = force;
        continue;
      }
      has_source = true;
      if (value.IsScalar()) {
        spec.model = model_reference(value);
        continue;
      }
      std::optional<std::string> kind;
      for (const auto& [k, v] : entries(value, {"kind", "model", "token", "token_id"}, what + ".source")) {
        const std::string key = k.as<std::string>();
        if (key == "kind") kind = scalar_string(v, "kind");
        if (key == "model") spec.model = model_reference(v);
        if (key == "token") spec.token = scalar_string(v, "token");
        if (key == "token_id") {
          const double id = number(v, "token_id");
          if (!(id >= 0 && id < 2147483648.0) || id != static_cast<double>(static_cast<int64_t>(id))) {
            fail(v, "token_id must be a whole number from 0");
          }
          spec.token_id = static_cast<int64_t>(id);
        }
      }
      if (kind == "zero") {
        spec.kind = TokenSourceSpec::Kind::kZero;
      } else if (kind == "model_token") {
        spec.kind = TokenSourceSpec::Kind::kModelToken;
        if (spec.model.empty()) fail(value, what + ": kind model_token needs a model");
        if (spec.token.has_value() == spec.token_id.has_value()) fail(value, what + ": give exactly one of token or token_id");
      } else {
        fail(value, what + ".source needs kind: zero or kind: model_token (or a model path)");
      }
    }
    if (!has_source) fail(node, what + " has no source (a model, {kind: zero} or {kind: model_token, ...})");
    return spec;
  }

  TokenizerSpec tokenizer_block(const YAML::Node& node) const {
    TokenizerSpec spec;  // source defaults to union, as in mergekit's TokenizerConfig
    spec.position = position(node);
    for (const auto& [key_node, value] : entries(node, {"source", "tokens", "pad_to_multiple_of"}, "tokenizer")) {
      const std::string key = key_node.as<std::string>();
      if (key == "source") {
        spec.source = tokenizer_source(value);
        spec.position = position(value);
      } else if (key == "pad_to_multiple_of") {
        const double n = number(value, "pad_to_multiple_of");
        if (!(n >= 1 && n <= 1048576) || n != static_cast<double>(static_cast<uint64_t>(n))) {
          fail(value, "pad_to_multiple_of must be a whole number from 1 to 1048576");
        }
        spec.pad_to_multiple_of = static_cast<uint64_t>(n);
      } else if (!value.IsNull()) {
        if (!value.IsMap()) fail(value, "tokenizer.tokens must map each token to its source");
        for (const auto& [token_node, entry] : entries_any(value, "tokenizer.tokens")) {
          const std::string token = scalar_string(token_node, "a token");
          spec.tokens.emplace_back(token, token_source(entry, token));
        }
      }
    }
    return spec;
  }

  RecipeSource source(const YAML::Node& node, const MergeMethod* method, bool with_layer_range) const {
    RecipeSource s;
    s.position = position(node);
    if (node.IsScalar()) {
      s.model = model_reference(node);
      return s;
    }
    std::vector<std::string> keys = {"model", "parameters"};
    if (with_layer_range) keys.push_back("layer_range");
    bool has_model = false;
    for (const auto& [key_node, value] : entries(node, keys, "model entry")) {
      const std::string key = key_node.as<std::string>();
      if (key == "model") {
        s.model = model_reference(value);
        has_model = true;
      } else if (key == "parameters") {
        s.parameters = parameters(value, method, true);
      } else {
        if (!value.IsSequence() || value.size() != 2) fail(value, "layer_range must be [begin, end]");
        const double begin = number(value[0], "layer_range begin"), end = number(value[1], "layer_range end");
        // Range first: converting a double outside int's range (1e32, NaN) is undefined behaviour.
        const auto whole = [](double x) { return x >= 0 && x <= 1048576 && x == std::floor(x); };
        if (!whole(begin) || !whole(end) || end <= begin) {
          fail(value, "layer_range must be two whole numbers with 0 <= begin < end <= 1048576");
        }
        s.layer_range = std::make_pair(static_cast<int>(begin), static_cast<int>(end));
      }
    }
    if (!has_model) fail(node, "model entry has no 'model'");
    return s;
  }

 private:
  std::string label_;
};

}  // namespace

std::optional<double> Setting::evaluate(double t, const std::string& tensor_name) const {
  switch (kind) {
    case Kind::kScalar:
      return scalar;
    case Kind::kGradient: {
      // mergekit: s = t * (len - 1), i0 = int(s), i1 = min(len - 1, i0 + 1), f = s - i0.
      const size_t n = gradient.size();
      if (n == 1) return gradient[0];
      const double s = t * static_cast<double>(n - 1);
      const size_t i0 = std::min(static_cast<size_t>(s), n - 1);
      const size_t i1 = std::min(n - 1, i0 + 1);
      const double f = s - static_cast<double>(i0);
      return (1 - f) * gradient[i0] + f * gradient[i1];
    }
    case Kind::kFilters:
      for (const auto& entry : filters) {
        if (!entry.filter || *entry.filter == "*" || tensor_name.find(*entry.filter) != std::string::npos) {
          return entry.value->evaluate(t, tensor_name);
        }
      }
      return std::nullopt;
  }
  return std::nullopt;
}

std::string Recipe::where(const RecipePosition& p) const {
  return label + ":" + std::to_string(p.line) + ":" + std::to_string(p.column) + ": ";
}

std::vector<std::string> Recipe::referenced_models() const {
  std::vector<std::string> out;
  auto add = [&](const std::string& m) {
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  };
  if (base_model) add(*base_model);
  for (const auto& s : models) add(s.model);
  auto add_slices = [&](const std::vector<RecipeSlice>& list) {
    for (const auto& slice : list) {
      if (slice.base_model) add(*slice.base_model);
      for (const auto& s : slice.sources) add(s.model);
    }
  };
  add_slices(slices);
  for (const auto& module : modules) {
    for (const auto& s : module.models) add(s.model);
    add_slices(module.slices);
  }
  return out;
}

namespace {

// Bounds on what a recipe may make the parser do. Aliases let a few hundred bytes of YAML name
// billions of nodes ("billion laughs"); real recipes have a few hundred nodes and little nesting.
constexpr size_t kMaxRecipeBytes = 16 << 20;
constexpr size_t kMaxRecipeNodes = 200000;  // counted with aliases expanded
constexpr int kMaxRecipeDepth = 64;

// What must hold before yaml-cpp sees the text: no NUL byte (it would end a model name early and
// reach the model card), UTF-8 (a UTF-16 file would parse as garbage), a bounded size, and a
// bounded nesting of flow collections (yaml-cpp's parser recurses on them).
void check_recipe_text(const Parser& p, const std::string& text) {
  if (text.size() > kMaxRecipeBytes) {
    p.fail_at({0, 0}, "the recipe is " + std::to_string(text.size()) + " bytes; recipes are limited to 16 MiB");
  }
  if (text.size() >= 2 && ((text[0] == '\xFF' && text[1] == '\xFE') || (text[0] == '\xFE' && text[1] == '\xFF'))) {
    p.fail_at({0, 0}, "the recipe is UTF-16; save it as UTF-8");
  }
  int line = 1, column = 1, depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\0') p.fail_at({line, column}, "the recipe contains a NUL byte");
    if (c == '[' || c == '{') ++depth;
    if ((c == ']' || c == '}') && depth > 0) --depth;
    if (depth > kMaxRecipeDepth) {
      p.fail_at({line, column}, "brackets nest deeper than " + std::to_string(kMaxRecipeDepth) + " levels");
    }
    if (c == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  if (!is_valid_utf8(text)) p.fail_at({0, 0}, "the recipe is not valid UTF-8");
}

// Counts the nodes reachable from `node` with aliases expanded, as the parser would visit them,
// and refuses past kMaxRecipeNodes or kMaxRecipeDepth; stops as soon as a bound is crossed.
void check_expansion(const Parser& p, const YAML::Node& node, int depth, size_t* visited) {
  if (++*visited > kMaxRecipeNodes) {
    p.fail_at({0, 0}, "the recipe expands to more than " + std::to_string(kMaxRecipeNodes) +
                          " YAML nodes (anchors and aliases repeated?); refusing it");
  }
  if (depth > kMaxRecipeDepth) p.fail(node, "the recipe nests deeper than " + std::to_string(kMaxRecipeDepth) + " levels");
  if (node.IsSequence()) {
    for (const auto& item : node) check_expansion(p, item, depth + 1, visited);
  } else if (node.IsMap()) {
    for (const auto& entry : node) {
      check_expansion(p, entry.first, depth + 1, visited);
      check_expansion(p, entry.second, depth + 1, visited);
    }
  }
}

// Where a second YAML document would start: a "---" line after the first document's content, or
// content after a "..." end marker (lines at column 0; inside a document, content is indented or
// is a key, so these are always document markers). 0 when there is none. Found in the text
// because yaml-cpp's LoadAll can loop without end on malformed input after the first document.
int second_document_line(const std::string& text) {
  std::istringstream lines(text);
  std::string line;
  bool content = false, ended = false;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#' || line[0] == '%') continue;  // blank, comment, directive
    const auto marker = [&](const char* m) {
      return line.compare(0, 3, m) == 0 && (line.size() == 3 || line[3] == ' ' || line[3] == '\t');
    };
    if (marker("---")) {
      if (content || ended) return number;
      const size_t rest = line.find_first_not_of(" \t", 3);
      content = rest != std::string::npos && line[rest] != '#';  // "--- {a: 1}" starts the content
      continue;
    }
    if (marker("...")) {
      ended = true;
      continue;
    }
    if (ended) return number;
    content = true;
  }
  return 0;
}

// The one YAML document of a recipe; a second one ("---") would be silently ignored by a loader
// that reads the first, so it is refused.
YAML::Node load_document(const Parser& p, const std::string& text) {
  if (const int line = second_document_line(text)) {
    p.fail_at({line, 1}, "a recipe is one YAML document, but a second one starts here");
  }
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    p.fail_at({e.mark.line + 1, e.mark.column + 1}, "not valid YAML: " + e.msg);
  }
  size_t visited = 0;
  check_expansion(p, root, 0, &visited);
  return root;
}

Recipe parse_structure(const Parser& p, const YAML::Node& root, const std::string& text, const std::string& label);

}  // namespace

Recipe parse_recipe(const std::string& text, const std::string& label) {
  Parser p(label);
  check_recipe_text(p, text);
  const YAML::Node root = load_document(p, text);
  try {
    return parse_structure(p, root, text, label);
  } catch (const YAML::Exception& e) {
    // yaml-cpp's own conversions ("bad conversion") carry a position but no file name.
    p.fail_at({e.mark.line + 1, e.mark.column + 1}, e.msg);
  }
}

namespace {

// `models:` or `slices:` (exactly one of them present) into *uses_slices, *models, *slices: the
// recipe's own, or those of one module of `modules:`.
void parse_inputs(const Parser& p, const std::optional<YAML::Node>& models_node,
                  const std::optional<YAML::Node>& slices_node, const MergeMethod* method, bool* uses_slices,
                  std::vector<RecipeSource>* models, std::vector<RecipeSlice>* slices) {
  if (models_node) {
    const YAML::Node& list = *models_node;
    if (!list.IsSequence() || list.size() == 0) p.fail(list, "models must be a non-empty list");
    for (const auto& item : list) models->push_back(p.source(item, method, false));
    return;
  }
  const YAML::Node& list = *slices_node;
  *uses_slices = true;
  if (!list.IsSequence() || list.size() == 0) p.fail(list, "slices must be a non-empty list");
  for (const auto& item : list) {
    RecipeSlice slice;
    slice.position = Parser::position(item);
    bool has_sources = false;
    for (const auto& [key_node, value] :
         p.entries(item, {"sources", "parameters", "base_model", "residual_weight"}, "a slice")) {
      const std::string key = key_node.as<std::string>();
      if (key == "sources") {
        if (!value.IsSequence() || value.size() == 0) p.fail(value, "sources must be a non-empty list");
        for (const auto& s : value) {
          slice.sources.push_back(p.source(s, method, true));
          if (!slice.sources.back().layer_range) p.fail(s, "a slice source needs layer_range: [begin, end]");
        }
        has_sources = true;
      } else if (key == "parameters") {
        slice.parameters = p.parameters(value, method, false);
      } else if (key == "residual_weight") {
        // mergekit's schema: Optional[float]; null is the same as absent.
        if (!value.IsNull()) {
          const double weight = p.number(value, "residual_weight");
          if (!std::isfinite(weight)) p.fail(value, "residual_weight must be a finite number");
          slice.residual_weight = weight;
        }
      } else {
        slice.base_model = p.model_reference(value);
      }
    }
    if (!has_sources) p.fail(item, "slice has no sources");
    slices->push_back(std::move(slice));
  }
}

// The map entry `key` of `entries`, if present.
std::optional<YAML::Node> entry_of(const std::vector<std::pair<YAML::Node, YAML::Node>>& entries,
                                   const std::string& key) {
  for (const auto& [k, v] : entries) {
    if (k.as<std::string>() == key) return v;
  }
  return std::nullopt;
}

Recipe parse_structure(const Parser& p, const YAML::Node& root, const std::string& text, const std::string& label) {
  Recipe recipe;
  recipe.label = label;
  recipe.text = text;
  if (!root.IsMap()) p.fail_at({1, 1}, "a recipe is a YAML mapping with at least merge_method and models or slices");

  const std::vector<std::string> top_keys = {"merge_method", "base_model", "models", "slices", "parameters", "dtype",
                                             "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name",
                                             "modules"};
  const auto top = p.entries(root, top_keys, "the recipe");
  // yaml-cpp has no public "undefined" node to return, so absence is an empty optional.
  auto find = [&](const std::string& key) -> std::optional<YAML::Node> {
    for (const auto& [k, v] : top) {
      if (k.as<std::string>() == key) return v;
    }
    return std::nullopt;
  };

  const auto method_found = find("merge_method");
  if (!method_found) p.fail_at({1, 1}, "the recipe has no merge_method; known methods: " + join(merge_method_names()));
  const YAML::Node method_node = *method_found;
  recipe.merge_method = p.scalar_string(method_node, "merge_method");
  recipe.merge_method_position = Parser::position(method_node);
  const MergeMethod* method = find_merge_method(recipe.merge_method);
  if (!method) {
    p.fail(method_node, "unknown merge_method '" + recipe.merge_method + "'" +
                            suggestion(recipe.merge_method, merge_method_names()) +
                            "; known methods: " + join(merge_method_names()));
  }

  if (const auto found = find("base_model")) {
    const YAML::Node base = *found;
    recipe.base_model = p.model_reference(base);
    recipe.base_model_position = Parser::position(base);
  }
  if (const auto params = find("parameters")) recipe.parameters = p.parameters(*params, method, false);
  for (const char* key : {"dtype", "out_dtype"}) {
    if (const auto found = find(key)) {
      const YAML::Node node = *found;
      const std::string name = p.scalar_string(node, key);
      const auto dtype = dtype_from_torch_name(name);
      if (!dtype || !can_store_from_f32(*dtype)) {
        p.fail(node, std::string(key) + " '" + name + "' is not one of bfloat16, float16, float32, float64");
      }
      (std::string(key) == "dtype" ? recipe.dtype : recipe.out_dtype) = *dtype;
    }
  }
  const auto source_found = find("tokenizer_source"), tokenizer_found = find("tokenizer");
  if (source_found && tokenizer_found) {
    p.fail(*tokenizer_found, "use either tokenizer_source or tokenizer, not both (mergekit refuses both too)");
  }
  if (source_found) {
    TokenizerSpec spec;
    spec.source = p.tokenizer_source(*source_found);
    spec.position = Parser::position(*source_found);
    recipe.tokenizer = spec;
  }
  if (tokenizer_found) recipe.tokenizer = p.tokenizer_block(*tokenizer_found);
  if (const auto node = find("chat_template")) {
    std::string problem;
    recipe.chat_template = detail::chat_template_choice(p.scalar_string(*node, "chat_template"), &problem);
    if (!recipe.chat_template) p.fail(*node, problem);
  }
  if (const auto node = find("name")) recipe.name = p.scalar_string(*node, "name");

  const auto models_found = find("models"), slices_found = find("slices"), modules_found = find("modules");
  if (int(bool(models_found)) + int(bool(slices_found)) + int(bool(modules_found)) > 1) {
    // mergekit: exactly one of 'models', 'slices', or 'modules'; the second one found is the error.
    bool seen = false;
    for (const auto& [key, value] : top) {
      const std::string k = key.as<std::string>();
      if (k != "models" && k != "slices" && k != "modules") continue;
      if (seen) p.fail(key, "use one of models, slices or modules, not several ('" + k + "' after another)");
      seen = true;
    }
  }
  if (!models_found && !slices_found && !modules_found) {
    p.fail_at({1, 1}, "the recipe lists no models: add models:, slices: or modules:");
  }
  if (!modules_found) {
    parse_inputs(p, models_found, slices_found, method, &recipe.uses_slices, &recipe.models, &recipe.slices);
    return recipe;
  }
  const YAML::Node& modules = *modules_found;
  if (!modules.IsMap() || modules.size() == 0) {
    p.fail(modules, "modules must be a mapping of module names (text_decoder, vision_tower, ...) to models or slices");
  }
  std::set<std::string> names;
  for (const auto& entry : modules) {
    RecipeModule module;
    module.name = p.scalar_string(entry.first, "a module name");
    module.position = Parser::position(entry.first);
    if (!names.insert(module.name).second) p.fail(entry.first, "module '" + module.name + "' appears twice");
    const auto fields = p.entries(entry.second, {"models", "slices", "parameters"}, "module '" + module.name + "'");
    const auto module_models = entry_of(fields, "models"), module_slices = entry_of(fields, "slices");
    if (bool(module_models) == bool(module_slices)) {
      p.fail(entry.second, "module '" + module.name + "' needs either models or slices (one of them)");
    }
    if (const auto params = entry_of(fields, "parameters")) module.parameters = p.parameters(*params, method, false);
    parse_inputs(p, module_models, module_slices, method, &module.uses_slices, &module.models, &module.slices);
    recipe.modules.push_back(std::move(module));
  }
  return recipe;
}

}  // namespace

namespace detail {

YAML::Node load_guarded_yaml(const std::string& text, const std::string& label) {
  Parser p(label);
  check_recipe_text(p, text);
  return load_document(p, text);
}

}  // namespace detail

Recipe load_recipe(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kRecipe, path.string() + ": cannot open the recipe");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_recipe(text.str(), path.string());
}

}  // namespace alloy
