// The tests' JSON Schema validator (json_schema.h).
#include "json_schema.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

namespace alloy::test {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::set<std::string> kAnnotations = {"$schema", "$id", "$comment", "title", "description", "examples",
                                            "default", "format", "definitions", "meta:enum", "readOnly",
                                            "writeOnly", "deprecated", "contentEncoding", "contentMediaType"};

bool has_type(const json& v, const std::string& type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  if (type == "number") return v.is_number();
  if (type == "integer") {
    return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  }
  throw std::runtime_error("unknown type '" + type + "' in a schema");
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string unescape_pointer(std::string token) {
  for (size_t i = 0; (i = token.find('~', i)) != std::string::npos; ++i) {
    token.replace(i, 2, token.compare(i, 2, "~1") == 0 ? "/" : "~");
  }
  return token;
}

}  // namespace

SchemaSet::SchemaSet(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    json schema = json::parse(text.str());
    const std::string name = entry.path().filename().string();
    if (schema.is_object() && schema.contains("$id")) ids_[schema["$id"].get<std::string>()] = name;
    files_[name] = std::move(schema);
  }
}

const json& SchemaSet::resolve(const std::string& ref, std::string* file) const {
  const size_t hash = ref.find('#');
  const std::string target = ref.substr(0, hash);
  if (!target.empty()) {
    if (files_.count(target)) {
      *file = target;
    } else if (ids_.count(target)) {
      *file = ids_.at(target);
    } else {
      throw std::runtime_error("unresolved $ref '" + ref + "'");
    }
  }
  const json* node = &files_.at(*file);
  const std::string pointer = hash == std::string::npos ? "" : ref.substr(hash + 1);
  std::stringstream tokens(pointer);
  std::string token;
  std::getline(tokens, token, '/');  // the empty token before the first '/'
  while (std::getline(tokens, token, '/')) {
    token = unescape_pointer(token);
    if (node->is_object() && node->contains(token)) {
      node = &(*node)[token];
    } else if (node->is_array() && !token.empty() && token.find_first_not_of("0123456789") == std::string::npos &&
               std::stoul(token) < node->size()) {
      node = &(*node)[std::stoul(token)];
    } else {
      throw std::runtime_error("unresolved $ref '" + ref + "' in " + *file);
    }
  }
  return *node;
}

const std::regex& SchemaSet::regex(const std::string& pattern) const {
  auto it = regexes_.find(pattern);
  if (it == regexes_.end()) it = regexes_.emplace(pattern, std::regex(pattern, std::regex::ECMAScript)).first;
  return it->second;
}

std::vector<std::string> SchemaSet::validate(const json& doc, const std::string& schema) const {
  if (!files_.count(schema)) throw std::runtime_error("no schema file '" + schema + "'");
  std::vector<std::string> errors;
  check(doc, files_.at(schema), schema, "", &errors, 0);
  return errors;
}

bool SchemaSet::check(const json& v, const json& s, const std::string& file, const std::string& where,
                      std::vector<std::string>* errors, int depth) const {
  if (depth > 200) throw std::runtime_error("schema recursion deeper than 200 at " + where);
  if (s.is_boolean()) {
    if (!s.get<bool>()) errors->push_back(where + ": the schema is false");
    return s.get<bool>();
  }
  if (!s.is_object()) throw std::runtime_error("a schema in " + file + " is neither an object nor a boolean");
  const size_t before = errors->size();
  const auto fail = [&](const std::string& keyword, const std::string& what) {
    errors->push_back((where.empty() ? "/" : where) + ": " + keyword + ": " + what);
  };
  // A sub-schema's verdict without keeping its messages (anyOf, oneOf, not, if).
  const auto passes = [&](const json& sub, const std::string& sub_file) {
    std::vector<std::string> ignored;
    return check(v, sub, sub_file, where, &ignored, depth + 1);
  };
  if (s.contains("$ref")) {
    // Draft-07: $ref alone decides; its siblings are ignored.
    std::string target_file = file;
    const json& target = resolve(s["$ref"].get<std::string>(), &target_file);
    return check(v, target, target_file, where, errors, depth + 1);
  }
  for (const auto& [keyword, value] : s.items()) {
    if (kAnnotations.count(keyword)) continue;
    if (keyword == "type") {
      bool ok = false;
      if (value.is_string()) ok = has_type(v, value.get<std::string>());
      else for (const auto& t : value) ok |= has_type(v, t.get<std::string>());
      if (!ok) fail("type", "not " + value.dump());
    } else if (keyword == "enum") {
      bool ok = false;
      for (const auto& e : value) ok |= e == v;
      if (!ok) fail("enum", v.dump() + " is not one of the allowed values");
    } else if (keyword == "const") {
      if (v != value) fail("const", v.dump() + " is not " + value.dump());
    } else if (keyword == "required") {
      if (!v.is_object()) continue;
      for (const auto& name : value) {
        if (!v.contains(name.get<std::string>())) fail("required", "'" + name.get<std::string>() + "' is missing");
      }
    } else if (keyword == "properties" || keyword == "patternProperties" || keyword == "additionalProperties") {
      if (keyword != "properties" && keyword != "patternProperties") {
        // additionalProperties: members that neither properties nor patternProperties name.
        if (!v.is_object()) continue;
        const json patterns = s.value("patternProperties", json::object());
        for (const auto& [name, member] : v.items()) {
          bool named = s.contains("properties") && s["properties"].contains(name);
          for (const auto& [pattern, sub] : patterns.items()) {
            named |= std::regex_search(name, regex(pattern));
          }
          if (named) continue;
          if (value.is_boolean() && !value.get<bool>()) fail("additionalProperties", "'" + name + "' is not allowed");
          else check(member, value, file, where + "/" + name, errors, depth + 1);
        }
      } else if (v.is_object()) {
        for (const auto& [name, sub] : value.items()) {
          if (keyword == "properties") {
            if (v.contains(name)) check(v[name], sub, file, where + "/" + name, errors, depth + 1);
          } else {
            for (const auto& [member, mv] : v.items()) {
              if (std::regex_search(member, regex(name))) check(mv, sub, file, where + "/" + member, errors, depth + 1);
            }
          }
        }
      }
    } else if (keyword == "items") {
      if (!v.is_array()) continue;
      if (value.is_array()) {
        for (size_t i = 0; i < v.size() && i < value.size(); ++i) {
          check(v[i], value[i], file, where + "/" + std::to_string(i), errors, depth + 1);
        }
      } else {
        for (size_t i = 0; i < v.size(); ++i) check(v[i], value, file, where + "/" + std::to_string(i), errors, depth + 1);
      }
    } else if (keyword == "additionalItems") {
      if (!v.is_array() || !s.contains("items") || !s["items"].is_array()) continue;
      for (size_t i = s["items"].size(); i < v.size(); ++i) {
        check(v[i], value, file, where + "/" + std::to_string(i), errors, depth + 1);
      }
    } else if (keyword == "minItems" || keyword == "maxItems") {
      if (!v.is_array()) continue;
      const bool ok = keyword == "minItems" ? v.size() >= value.get<size_t>() : v.size() <= value.get<size_t>();
      if (!ok) fail(keyword, std::to_string(v.size()) + " items");
    } else if (keyword == "minProperties" || keyword == "maxProperties") {
      if (!v.is_object()) continue;
      const bool ok = keyword == "minProperties" ? v.size() >= value.get<size_t>() : v.size() <= value.get<size_t>();
      if (!ok) fail(keyword, std::to_string(v.size()) + " members");
    } else if (keyword == "uniqueItems") {
      if (!v.is_array() || !value.get<bool>()) continue;
      for (size_t i = 0; i < v.size(); ++i) {
        for (size_t j = i + 1; j < v.size(); ++j) {
          if (v[i] == v[j]) fail("uniqueItems", "items " + std::to_string(i) + " and " + std::to_string(j) + " are equal");
        }
      }
    } else if (keyword == "minLength" || keyword == "maxLength") {
      if (!v.is_string()) continue;
      const size_t n = code_points(v.get<std::string>());
      if (keyword == "minLength" ? n < value.get<size_t>() : n > value.get<size_t>()) fail(keyword, std::to_string(n) + " characters");
    } else if (keyword == "pattern") {
      if (v.is_string() && !std::regex_search(v.get<std::string>(), regex(value.get<std::string>()))) {
        fail("pattern", v.dump() + " does not match " + value.get<std::string>());
      }
    } else if (keyword == "minimum" || keyword == "maximum" || keyword == "exclusiveMinimum" ||
               keyword == "exclusiveMaximum") {
      if (!v.is_number()) continue;
      const double x = v.get<double>(), bound = value.get<double>();
      const bool ok = keyword == "minimum" ? x >= bound : keyword == "maximum" ? x <= bound
                      : keyword == "exclusiveMinimum" ? x > bound : x < bound;
      if (!ok) fail(keyword, v.dump() + " is out of range");
    } else if (keyword == "allOf") {
      for (const auto& sub : value) check(v, sub, file, where, errors, depth + 1);
    } else if (keyword == "anyOf") {
      bool ok = false;
      for (const auto& sub : value) ok = ok || passes(sub, file);
      if (!ok) fail("anyOf", "matches none of " + std::to_string(value.size()) + " schemas");
    } else if (keyword == "oneOf") {
      size_t matched = 0;
      for (const auto& sub : value) matched += passes(sub, file);
      if (matched != 1) fail("oneOf", "matches " + std::to_string(matched) + " of " + std::to_string(value.size()) + " schemas, not exactly one");
    } else if (keyword == "not") {
      if (passes(value, file)) fail("not", "matches a schema it must not");
    } else if (keyword == "if") {
      const bool condition = passes(value, file);
      const char* branch = condition ? "then" : "else";
      if (s.contains(branch)) check(v, s[branch], file, where, errors, depth + 1);
    } else if (keyword == "then" || keyword == "else") {
      // applied by "if"
    } else {
      throw std::runtime_error("unsupported schema keyword '" + keyword + "' in " + file);
    }
  }
  return errors->size() == before;
}

}  // namespace alloy::test
