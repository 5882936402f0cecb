// The tests' JSON Schema validator (json_schema.h): each keyword accepts what it should and rejects
// what it should, $ref resolves within and across files, and an unsupported keyword or an
// unresolved $ref is an error, never a silent pass. The published CycloneDX schema's cross-file
// references (SPDX license ids, JSF signatures) resolve through it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "schema/json_schema.h"
#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Case {
  const char* schema;
  const char* document;
  bool valid;
};

TEST(JsonSchema, EachKeywordAcceptsAndRejects) {
  const Case cases[] = {
      {R"({"type": "string"})", R"("x")", true},
      {R"({"type": "string"})", R"(1)", false},
      {R"({"type": ["string", "null"]})", R"(null)", true},
      {R"({"type": "integer"})", R"(2.0)", true},
      {R"({"type": "integer"})", R"(2.5)", false},
      {R"({"type": "number"})", R"(2.5)", true},
      {R"({"type": "object"})", R"([])", false},
      {R"({"enum": ["a", 1]})", R"(1)", true},
      {R"({"enum": ["a", 1]})", R"("b")", false},
      {R"({"const": "x"})", R"("x")", true},
      {R"({"const": "x"})", R"("y")", false},
      {R"({"required": ["a"]})", R"({"a": 1})", true},
      {R"({"required": ["a"]})", R"({"b": 1})", false},
      {R"({"properties": {"a": {"type": "string"}}})", R"({"a": 1})", false},
      {R"({"properties": {"a": {"type": "string"}}})", R"({"b": 1})", true},
      {R"({"properties": {"a": {}}, "additionalProperties": false})", R"({"a": 1})", true},
      {R"({"properties": {"a": {}}, "additionalProperties": false})", R"({"a": 1, "b": 2})", false},
      {R"({"additionalProperties": {"type": "string"}})", R"({"a": "x", "b": 2})", false},
      {R"({"patternProperties": {"^x-": {"type": "number"}}, "additionalProperties": false})", R"({"x-a": 1})", true},
      {R"({"patternProperties": {"^x-": {"type": "number"}}, "additionalProperties": false})", R"({"x-a": "1"})", false},
      {R"({"patternProperties": {"^x-": {"type": "number"}}, "additionalProperties": false})", R"({"y": 1})", false},
      {R"({"minProperties": 1})", R"({})", false},
      {R"({"items": {"type": "number"}})", R"([1, 2])", true},
      {R"({"items": {"type": "number"}})", R"([1, "2"])", false},
      {R"({"items": [{"type": "number"}], "additionalItems": false})", R"([1])", true},
      {R"({"items": [{"type": "number"}], "additionalItems": false})", R"([1, 2])", false},
      {R"({"minItems": 2})", R"([1])", false},
      {R"({"maxItems": 1})", R"([1, 2])", false},
      {R"({"uniqueItems": true})", R"([1, 2])", true},
      {R"({"uniqueItems": true})", R"([{"a": 1}, {"a": 1}])", false},
      {R"({"minLength": 2})", R"("\u00e9")", false},  // one code point, two bytes
      {R"({"maxLength": 1})", R"("\u00e9")", true},
      {R"({"pattern": "^[a-f0-9]{4}$"})", R"("beef")", true},
      {R"({"pattern": "^[a-f0-9]{4}$"})", R"("BEEF")", false},
      {R"({"pattern": "b"})", R"("abc")", true},  // not anchored
      {R"({"minimum": 1})", R"(0.5)", false},
      {R"({"maximum": 1})", R"(1)", true},
      {R"({"exclusiveMaximum": 1})", R"(1)", false},
      {R"({"allOf": [{"type": "number"}, {"minimum": 2}]})", R"(1)", false},
      {R"({"anyOf": [{"type": "number"}, {"type": "string"}]})", R"("s")", true},
      {R"({"anyOf": [{"type": "number"}, {"type": "string"}]})", R"(null)", false},
      {R"({"oneOf": [{"type": "number"}, {"minimum": 0}]})", R"(5)", false},  // both match
      {R"({"oneOf": [{"type": "number"}, {"type": "string"}]})", R"(5)", true},
      {R"({"not": {"type": "string"}})", R"("s")", false},
      {R"({"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}, "else": {"required": ["c"]}})",
       R"({"a": 1, "c": 2})", false},
      {R"({"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}, "else": {"required": ["c"]}})",
       R"({"a": 2, "c": 2})", true},
      {R"({"definitions": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/definitions/n"}}})", R"({"a": "x"})", false},
      {R"({"definitions": {"a/b": {"type": "number"}}, "items": {"$ref": "#/definitions/a~1b"}})", R"([1, "x"])", false},
      {R"({"items": {"$ref": "other.json#/definitions/hex"}})", R"(["ab"])", true},
      {R"({"items": {"$ref": "other.json#/definitions/hex"}})", R"(["zz"])", false},
      {R"({"items": {"$ref": "urn:test:other"}})", R"([1])", false},  // by $id: the whole file
      {R"({"properties": {"a": {"$ref": "#"}}, "type": "object"})", R"({"a": {"a": 1}})", false},  // recursion
      {R"(false)", R"(1)", false},
      {R"({"title": "t", "description": "d", "format": "uri", "examples": [1]})", R"("not a uri")", true},
  };
  alloy::test::TempDir dir;
  alloy::test::write_bytes(dir.path() / "other.json",
                           R"({"$id": "urn:test:other", "type": "object", "definitions": {"hex": {"pattern": "^[a-f0-9]+$"}}})");
  for (size_t i = 0; i < std::size(cases); ++i) {
    alloy::test::write_bytes(dir.path() / ("case" + std::to_string(i) + ".json"), cases[i].schema);
  }
  const alloy::test::SchemaSet set(dir.path());
  for (size_t i = 0; i < std::size(cases); ++i) {
    const auto errors = set.validate(json::parse(cases[i].document), "case" + std::to_string(i) + ".json");
    EXPECT_EQ(errors.empty(), cases[i].valid) << cases[i].schema << " on " << cases[i].document
                                              << (errors.empty() ? "" : ": " + errors.front());
  }
}

TEST(JsonSchema, UnsupportedKeywordsAndUnresolvedReferencesAreErrors) {
  alloy::test::TempDir dir;
  alloy::test::write_bytes(dir.path() / "contains.json", R"({"contains": {"type": "number"}})");
  alloy::test::write_bytes(dir.path() / "dangling.json", R"({"$ref": "nowhere.json#/definitions/x"})");
  alloy::test::write_bytes(dir.path() / "pointer.json", R"({"$ref": "#/definitions/missing"})");
  const alloy::test::SchemaSet set(dir.path());
  EXPECT_THROW(set.validate(json::array(), "contains.json"), std::runtime_error);
  EXPECT_THROW(set.validate(1, "dangling.json"), std::runtime_error);
  EXPECT_THROW(set.validate(1, "pointer.json"), std::runtime_error);
  EXPECT_THROW(set.validate(1, "absent.json"), std::runtime_error);
}

// The shipped CycloneDX 1.6 schema through the validator: its SPDX license ids and JSF signature
// are references into the other two files.
TEST(JsonSchema, CycloneDxReferencesResolveAcrossFiles) {
  const alloy::test::SchemaSet set(alloy::test::data_dir() + "/schemas");
  json bom = json::parse(R"({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
    "components": [{"type": "library", "name": "x", "licenses": [{"license": {"id": "MIT"}}]}]})");
  EXPECT_TRUE(set.validate(bom, "bom-1.6.SNAPSHOT.schema.json").empty());
  bom["components"][0]["licenses"][0]["license"]["id"] = "NOT-A-LICENSE";
  EXPECT_FALSE(set.validate(bom, "bom-1.6.SNAPSHOT.schema.json").empty()) << "spdx.SNAPSHOT.schema.json's enum";
  bom["components"][0]["licenses"][0]["license"]["id"] = "MIT";
  bom["signature"] = json::object();  // JSF: a signature needs algorithm and value (or signers/chain)
  EXPECT_FALSE(set.validate(bom, "bom-1.6.SNAPSHOT.schema.json").empty()) << "jsf-0.82.SNAPSHOT.schema.json";
}

}  // namespace
