#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "alloy/assay/assay.h"

namespace {

using nlohmann::json;

const std::string kEvil = "a<script>alert(1)</script>";
const std::string kEvilEscaped = "a&lt;script&gt;alert(1)&lt;/script&gt;";
const std::string kModelA = "/models/alpha-7b";
const std::string kModelB = "/models/beta-" + kEvil;  // a hostile path must come out escaped

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + 1))
    ++n;
  return n;
}

// 2 candidates; attention, mlp and norms over layers 0..3, plus embeddings and lm_head outside the
// layers (one of them named hostilely).
json merge_document() {
  json doc;
  doc["suspect"] = "/models/suspect";
  doc["verdict"] = "merge";
  doc["method"] = "linear";
  doc["base"] = nullptr;
  doc["recipe"] = {{"merge_method", "linear"},
                   {"models",
                    {{{"model", kModelA}, {"parameters", {{"weight", 0.571}}}},
                     {{"model", kModelB}, {"parameters", {{"weight", 0.429}}}}}},
                   {"dtype", "bfloat16"}};
  doc["recipe_yaml"] =
      "merge_method: linear\nmodels:\n  - model: " + kModelA + "\n  - model: " + kModelB + "\n";
  doc["candidates"] = {{{"path", kModelA},
                        {"correlation", 0.93},
                        {"related", true},
                        {"involved", true},
                        {"weight", 0.571},
                        {"weight_std", 0.002},
                        {"density", 1.0}},
                       {{"path", kModelB},
                        {"correlation", 0.91},
                        {"related", true},
                        {"involved", true},
                        {"weight", 0.429},
                        {"weight_std", 0.002},
                        {"density", 1.0}}};
  json components = json::array(), tensors = json::array();
  for (const char* comp : {"embeddings", "lm_head", "attention", "mlp", "norms"}) {
    components.push_back({{"name", comp},
                          {"tensors", 4},
                          {"numel", 65536},
                          {"weights",
                           {{kModelA, {{"mean", 0.571}, {"std", 0.001}}},
                            {kModelB, {{"mean", 0.429}, {"std", 0.001}}}}},
                          {"cos_fit", {{"mean", 0.9999}, {"min", 0.998}}},
                          {"z", 1.0e6},
                          {"log10_false_positive", -40.3}});
  }
  doc["components"] = components;
  auto tensor = [](const std::string& name, const std::string& comp, int layer, double wa) {
    return json{{"name", name},
                {"component", comp},
                {"layer", layer},
                {"expert", -1},
                {"numel", 4096},
                {"fitted", true},
                {"reference", kModelA},
                {"weights", {{kModelA, wa}, {kModelB, 1 - wa}}},
                {"cos_fit", 0.999},
                {"null_cos", 0.0156},
                {"z", 64.0},
                {"deviation", 0.1},
                {"residual", 0.01}};
  };
  tensors.push_back(tensor(kEvil, "embeddings", -1, 0.57));
  tensors.push_back(tensor("lm_head.weight", "lm_head", -1, 0.57));
  for (int layer = 0; layer < 4; ++layer) {
    std::string p = "model.layers." + std::to_string(layer);
    tensors.push_back(tensor(p + ".self_attn.q_proj.weight", "attention", layer, 0.571));
    tensors.push_back(tensor(p + ".self_attn.k_proj.weight", "attention", layer, 0.573));
    tensors.push_back(tensor(p + ".mlp.up_proj.weight", "mlp", layer, 0.570));
    tensors.push_back(tensor(p + ".input_layernorm.weight", "norms", layer, 0.56));
  }
  doc["tensors"] = tensors;
  doc["permutations"] = {
      {{"layer", 3}, {"kind", "experts"}, {"permutation", {1, 0, 2, 3}}, {"note", kEvil}}};
  doc["evidence"] = {{"summary", "Every component fits the blend; " + kEvil},
                     {"z_min", 1.0e6},
                     {"log10_false_positive", -40.3},
                     {"rebuild", {{"tensors", 6}, {"exact_fraction", 0.99}, {"max_ulp", 1}}},
                     {"notes", {"bf16 rounding accounts for the residual"}}};
  return doc;
}

void expect_safe_page(const std::string& html) {
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count(html, "<html"), 1u);
  EXPECT_EQ(count(html, "</html>"), 1u);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  // No raw NaN/inf leaks into text or SVG coordinates.
  EXPECT_FALSE(
      std::regex_search(html, std::regex("[^A-Za-z](-?nan|inf)[^A-Za-z]", std::regex::icase)));
}

TEST(AssayReport, RendersMergeVerdictTablesAndCharts) {
  const std::string html = alloy::assay_report_html(merge_document());
  expect_safe_page(html);
  EXPECT_NE(html.find("This model is a merge: 0.571 × <code>/models/alpha-7b</code> + 0.429 × "
                      "<code>/models/beta-" +
                      kEvilEscaped + "</code> (linear)"),
            std::string::npos);
  EXPECT_NE(html.find("below 10<sup>-40</sup>"), std::string::npos);
  EXPECT_NE(html.find("Every component fits the blend"), std::string::npos);
  EXPECT_NE(html.find("<pre>merge_method: linear"), std::string::npos);
  EXPECT_NE(html.find(kModelA), std::string::npos);
  EXPECT_NE(html.find("/models/beta-" + kEvilEscaped), std::string::npos);
  EXPECT_NE(html.find("/models/suspect"), std::string::npos);
  // Huge z printed compactly, not as 1000000 or 1e+06.
  EXPECT_NE(html.find(">1e6<"), std::string::npos);
  EXPECT_EQ(html.find("1e+06"), std::string::npos);
  // Two charts (alpha, cos_fit) for each of the three layered components; none for
  // embeddings/lm_head.
  EXPECT_EQ(count(html, "<svg"), 6u);
  EXPECT_EQ(count(html, "</svg>"), 6u);
  EXPECT_NE(html.find("attention: mixing weight"), std::string::npos);
  EXPECT_NE(html.find("norms: cos_fit per layer"), std::string::npos);
  EXPECT_EQ(html.find("embeddings: mixing weight"), std::string::npos);
  // Each alpha chart draws one line per involved candidate with one point per layer.
  EXPECT_EQ(count(html, "<polyline"), 3u * 2u + 3u);
  EXPECT_EQ(count(html, "<circle"), 3u * (2u + 1u) * 4u);
  // Layer tick labels 0..3 appear on the x axis.
  EXPECT_NE(html.find("text-anchor=\"middle\">3</text>"), std::string::npos);
  // The hostile tensor name (embeddings table), note and path appear only escaped.
  EXPECT_EQ(html.find(kEvil), std::string::npos);
  EXPECT_GE(count(html, kEvilEscaped), 4u);
  EXPECT_NE(html.find("<code>" + kEvilEscaped + "</code>"), std::string::npos);
  EXPECT_NE(html.find("lm_head.weight"), std::string::npos);
  EXPECT_NE(html.find("experts"), std::string::npos);
}

TEST(AssayReport, AveragesTensorsOfAComponentPerLayer) {
  json doc = merge_document();
  doc["candidates"][1]["involved"] = false;  // only A charted
  json tensors = json::array();
  for (double w : {0.2, 0.6})  // mean 0.4 in layer 0; cos_fit 0.5 and 1.0 average to 0.75
    tensors.push_back({{"name", "t"},
                       {"component", "mlp"},
                       {"layer", 0},
                       {"weights", {{kModelA, w}}},
                       {"cos_fit", w == 0.2 ? 0.5 : 1.0}});
  doc["tensors"] = tensors;
  doc["components"] = json::array();
  const std::string html = alloy::assay_report_html(doc);
  expect_safe_page(html);
  EXPECT_EQ(count(html, "<svg"), 2u);
  EXPECT_NE(html.find("layer 0: 0.4</title>"), std::string::npos);
  EXPECT_NE(html.find("layer 0: 0.75</title>"), std::string::npos);
}

TEST(AssayReport, PlainVerdicts) {
  json doc = {{"verdict", "fine-tune"}, {"base", kModelA}};
  EXPECT_NE(alloy::assay_report_html(doc).find(
                "derived from <code>/models/alpha-7b</code> by fine-tuning"),
            std::string::npos);
  doc["verdict"] = "copy";
  EXPECT_NE(alloy::assay_report_html(doc).find("a copy of <code>/models/alpha-7b</code>"),
            std::string::npos);
  // Task-vector methods: the base is named once as the base, not as a term of the sum.
  json ties = {
      {"verdict", "merge"},
      {"method", "ties"},
      {"base", kModelA},
      {"recipe",
       {{"models", {{{"model", "/m/c"}, {"parameters", {{"weight", 0.5}, {"density", 0.5}}}}}}}},
      {"candidates",
       {{{"path", kModelA}, {"involved", true}, {"weight", 0.4}},
        {{"path", "/m/c"}, {"involved", true}, {"weight", 0.6}}}}};
  EXPECT_NE(
      alloy::assay_report_html(ties).find("a merge: 0.5 × <code>/m/c</code> (density 0.5) on base "
                                          "<code>/models/alpha-7b</code> (ties)."),
      std::string::npos);
  const std::string html = alloy::assay_report_html(json{{"verdict", "independent"}});
  expect_safe_page(html);
  EXPECT_NE(html.find("No relation to any candidate was found"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 0u);
  EXPECT_NE(html.find("None"), std::string::npos);  // permutations
}

TEST(AssayReport, SurvivesMissingNullNaNAndMistypedFields) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const json& doc :
       {json(), json::object(), json::array({1, 2}), json("text"),
        json{{"verdict", nullptr}, {"candidates", "oops"}, {"tensors", 3}, {"evidence", 1}}}) {
    std::string html;
    EXPECT_NO_THROW(html = alloy::assay_report_html(doc)) << doc.dump();
    expect_safe_page(html);
  }
  json doc = merge_document();
  doc["evidence"]["log10_false_positive"] = nullptr;
  doc["evidence"]["z_min"] = nan;
  doc["evidence"]["rebuild"] = {{"tensors", nullptr}};
  doc["candidates"][0]["weight"] = nan;
  doc["candidates"][1]["correlation"] = nullptr;
  doc["components"][2]["z"] = nan;
  doc["components"][3]["weights"] = nullptr;
  doc["tensors"][3]["cos_fit"] = nan;
  doc["tensors"][4]["weights"][kModelA] = std::numeric_limits<double>::infinity();
  doc["tensors"][5]["layer"] = nullptr;
  doc["tensors"][6]["weights"] = "bad";
  doc["tensors"][7]["layer"] = 1e300;
  doc["tensors"][8]["cos_fit"] = 1e6;  // clamped into the chart
  doc["permutations"] = nullptr;
  std::string html;
  ASSERT_NO_THROW(html = alloy::assay_report_html(doc));
  expect_safe_page(html);
  EXPECT_NE(html.find("—"), std::string::npos);
  EXPECT_EQ(html.find(kEvil), std::string::npos);
}

}  // namespace
