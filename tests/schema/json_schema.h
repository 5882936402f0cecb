// A JSON Schema (draft-07) validator for the tests: it checks alloy's provenance and BOM documents
// against the published schemas in tests/data/schemas (Debian ships no JSON Schema validator usable
// from C++). It implements the keywords those schemas use: type, enum, const, properties,
// patternProperties, additionalProperties, required, minProperties, maxProperties, items (schema or list),
// additionalItems, minItems, maxItems, uniqueItems, minLength, maxLength, pattern, minimum, maximum,
// exclusiveMinimum, exclusiveMaximum, allOf, anyOf, oneOf, not, if/then/else and $ref (within a
// file and across files, by file name or $id, JSON pointers with ~0 ~1). Annotations (title,
// description, examples, default, format, $comment, ...) are ignored; any other keyword is an
// error, so a schema that needs more than this validator knows is never passed silently.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

namespace alloy::test {

class SchemaSet {
 public:
  // Loads every *.json file of `dir`, by file name and by its $id.
  explicit SchemaSet(const std::filesystem::path& dir);
  // The violations of `doc` against the schema file `schema` (empty: valid), each naming the
  // document location (a JSON pointer) and the keyword. Throws std::runtime_error on a schema it
  // cannot apply (unsupported keyword, unresolved $ref).
  std::vector<std::string> validate(const nlohmann::json& doc, const std::string& schema) const;

 private:
  bool check(const nlohmann::json& doc, const nlohmann::json& schema, const std::string& file,
             const std::string& where, std::vector<std::string>* errors, int depth) const;
  const nlohmann::json& resolve(const std::string& ref, std::string* file) const;
  const std::regex& regex(const std::string& pattern) const;

  std::map<std::string, nlohmann::json> files_;     // by file name
  std::map<std::string, std::string> ids_;          // $id -> file name
  mutable std::map<std::string, std::regex> regexes_;
};

}  // namespace alloy::test
