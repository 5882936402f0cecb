#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "alloy/assay/assay.h"
#include "assay/report_internal.h"

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
  json doc = merge_document();
  doc["evidence"]["summary"] = "linear merge; every major component fits with z >= 44.288518; " + kEvil;
  doc["components"][4]["log10_false_positive"] = -3774.3;
  const std::string html = alloy::assay_report_html(doc);
  expect_safe_page(html);
  // The verdict first, in plain words, with short model names, then coverage, confidence, chance.
  const size_t verdict = html.find("class=\"verdict merge\"");
  ASSERT_NE(verdict, std::string::npos);
  EXPECT_LT(verdict, html.find("<h2>"));
  EXPECT_NE(html.find("A linear merge of <code>alpha-7b</code> (weight 0.571) and <code>"), std::string::npos);
  EXPECT_NE(html.find("matches this blend of the candidates"), std::string::npos);
  EXPECT_NE(html.find("<b>Coverage</b><span>100%</span>"), std::string::npos);
  EXPECT_NE(html.find("<b>Confidence</b><span>Full</span>"), std::string::npos);
  EXPECT_NE(html.find("<span>&lt; 1e-40</span>"), std::string::npos);
  EXPECT_NE(html.find("<span>99% identical</span>"), std::string::npos);
  // "How to read this" beside the numbers it explains, not at the bottom.
  EXPECT_GE(count(html, "How to read this"), 5u);
  EXPECT_LT(html.find("How to read this"), html.find("<h2>The candidates"));
  // Numbers rounded to what they support: weights to their spread, bounds floored, z whole.
  EXPECT_NE(html.find(">0.571 ± 0.002<"), std::string::npos);   // candidates: spread 0.002
  EXPECT_NE(html.find(">0.5710 ± 0.0010<"), std::string::npos);  // components: spread 0.001
  EXPECT_NE(html.find(">&lt; 1e-300<"), std::string::npos);
  EXPECT_EQ(html.find("3774"), std::string::npos);
  EXPECT_EQ(html.find("44.288518"), std::string::npos);
  EXPECT_NE(html.find("z &gt;= 44.3"), std::string::npos);
  EXPECT_NE(html.find(">1e6<"), std::string::npos);
  EXPECT_EQ(html.find("1e+06"), std::string::npos);
  // Charts: the correlation bars, the per-layer fit, and one weight panel per parent side by side.
  EXPECT_EQ(count(html, "<svg"), 4u);
  EXPECT_EQ(count(html, "</svg>"), 4u);
  EXPECT_EQ(count(html, "<div class=\"panels\">"), 1u);
  EXPECT_NE(html.find("Weight of alpha-7b per layer (overall 0.571, dashed)"), std::string::npos);
  // Fit chart: one line per layered component (attention, mlp, norms) with a point per layer;
  // each panel: the same three plus the dashed overall weight.
  EXPECT_EQ(count(html, "<polyline"), 3u + 2u * 4u);
  EXPECT_EQ(count(html, "stroke-dasharray"), 2u);
  EXPECT_EQ(count(html, "<circle"), 3u * 3u * 4u);
  // Fixed scales: the weights vary in the third decimal, yet every line chart runs 0 to 1 in quarters.
  EXPECT_EQ(count(html, "text-anchor=\"end\">0.25</text>"), 3u);
  EXPECT_EQ(count(html, "text-anchor=\"end\">1</text>"), 3u);
  EXPECT_NE(html.find("text-anchor=\"middle\">3</text>"), std::string::npos);
  // The hostile tensor name, note and path appear only escaped.
  EXPECT_EQ(html.find(kEvil), std::string::npos);
  EXPECT_GE(count(html, kEvilEscaped), 3u);
  EXPECT_NE(html.find("<code>" + kEvilEscaped + "</code>"), std::string::npos);
  EXPECT_NE(html.find("lm_head.weight"), std::string::npos);
  EXPECT_NE(html.find("experts"), std::string::npos);
  // No evidence record in this document: said so, nothing folded.
  EXPECT_NE(html.find("carries no record of the tool version"), std::string::npos);
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
  EXPECT_EQ(count(html, "<svg"), 3u);  // bars, fit, one panel
  EXPECT_NE(html.find("layer 0: 0.4</title>"), std::string::npos);
  EXPECT_NE(html.find("layer 0: 0.75</title>"), std::string::npos);
}

TEST(AssayReport, NonMergeDrawsNoNoiseAsSignal) {
  json doc = merge_document();
  doc["verdict"] = "independent";
  doc["method"] = nullptr;
  doc["recipe"] = json::object();
  doc["recipe_yaml"] = "";
  doc["evidence"] = {{"summary", "no candidate correlates with the suspect beyond chance"}, {"notes", json::array()}};
  for (auto& c : doc["candidates"]) {
    c["related"] = false, c["involved"] = false, c["correlation"] = 0.0012;
    c["weight"] = 0.853, c["weight_std"] = 0.541;
  }
  const std::string html = alloy::assay_report_html(doc);
  expect_safe_page(html);
  EXPECT_NE(html.find("class=\"verdict independent\""), std::string::npos);
  EXPECT_NE(html.find("Not made from any of the candidates."), std::string::npos);
  EXPECT_NE(html.find("closest: 0.001,"), std::string::npos);
  // The noise weights only to the digit their spread supports, in grey; no per-layer weight charts.
  EXPECT_NE(html.find("<span class=\"muted\">0.9 ± 0.5</span>"), std::string::npos);
  EXPECT_EQ(html.find("0.853"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 1u);  // only the correlation bars, on [0, 1]: flat at 0
  EXPECT_NE(html.find("No blend weights are drawn: no candidate is related"), std::string::npos);
  EXPECT_EQ(html.find("Weight of"), std::string::npos);
  // With per-tensor correlations, one line per candidate per layer on the fixed [0, 1] scale.
  for (auto& t : doc["tensors"]) t["correlation"] = {{kModelA, 0.002}, {kModelB, -0.001}};
  const std::string with_layers = alloy::assay_report_html(doc);
  expect_safe_page(with_layers);
  EXPECT_EQ(count(with_layers, "<svg"), 2u);
  EXPECT_NE(with_layers.find("per layer (correlation; 1 = the same"), std::string::npos);
  EXPECT_EQ(count(with_layers, "<polyline"), 2u);
  EXPECT_EQ(count(with_layers, "text-anchor=\"end\">0.25</text>"), 1u);
  EXPECT_NE(with_layers.find("layer 3: 0.002</title>"), std::string::npos);
}

TEST(AssayReport, PlainVerdicts) {
  json doc = {{"verdict", "fine-tune"}, {"base", kModelA}};
  EXPECT_NE(alloy::assay_report_html(doc).find("A fine-tune of <code>alpha-7b</code>."), std::string::npos);
  doc["verdict"] = "copy";
  EXPECT_NE(alloy::assay_report_html(doc).find("A copy of <code>alpha-7b</code>."), std::string::npos);
  // Task-vector methods: the base is named once as the base, not as a term; the tables' plain-fit
  // weights are explained as not the recipe's.
  json ties = {
      {"verdict", "merge"},
      {"method", "ties"},
      {"base", kModelA},
      {"recipe_yaml", "merge_method: ties\n"},
      {"recipe",
       {{"models", {{{"model", "/m/c"}, {"parameters", {{"weight", 0.5}, {"density", 0.5}}}}}}}},
      {"candidates",
       {{{"path", kModelA}, {"involved", true}, {"related", true}, {"weight", -0.5}, {"weight_std", 0.013}},
        {{"path", "/m/c"}, {"involved", true}, {"related", true}, {"weight", 1.5}, {"weight_std", 0.01}}}}};
  const std::string ties_html = alloy::assay_report_html(ties);
  EXPECT_NE(ties_html.find("A TIES merge of <code>c</code> (weight 0.5, density 0.5) on the base "
                           "<code>alpha-7b</code>."),
            std::string::npos);
  EXPECT_NE(ties_html.find("Why the tables below show other weights than the recipe"), std::string::npos);
  EXPECT_NE(ties_html.find("which gives <code>alpha-7b</code> -0.500 and <code>c</code> 1.500"), std::string::npos);
  const std::string html = alloy::assay_report_html(json{{"verdict", "independent"}});
  expect_safe_page(html);
  EXPECT_NE(html.find("Not made from any of the candidates"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 0u);
  EXPECT_NE(html.find("None"), std::string::npos);  // permutations
}

TEST(AssayReport, ExplainsAPlainFitResidualNextToAnExactRebuild) {
  json doc = merge_document();
  doc["method"] = "ties";
  doc["evidence"]["unexplained_level"] = 0.029;
  doc["evidence"]["rebuild"] = {{"tensors", 6}, {"elements", 99328}, {"exact_fraction", 1.0}, {"max_ulp", 0}};
  const std::string html = alloy::assay_report_html(doc);
  EXPECT_NE(html.find("<b>100%</b> of the elements bit for bit"), std::string::npos);
  EXPECT_NE(html.find("2.9% of the size of the weights"), std::string::npos);
  EXPECT_NE(html.find("The two agree: the plain fit is a straight blend"), std::string::npos);
}

TEST(AssayReport, EvidenceForCitationIsFolded) {
  json doc = merge_document();
  doc["audit"] = {{"alloy_version", "0.1.0"},
                  {"time", "2026-12-02T13:45:07Z"},
                  {"command_line", {"alloy-assay", "merged", "base", kEvil}},
                  {"models",
                   {{{"role", "suspect"},
                     {"path", "merged"},
                     {"hub", {{"id", "org/name"}, {"revision", "abc123"}}},
                     {"files",
                      {{{"path", "merged/model.safetensors"}, {"size", 1234567}, {"sha256", std::string(64, 'e')}},
                       {{"path", "merged/config.json"}, {"size", 321}, {"sha256", nullptr}}}}},
                    {{"role", "candidate"}, {"path", "base"}, {"hub", nullptr}, {"files", "bad"}}}}};
  const std::string html = alloy::assay_report_html(doc);
  expect_safe_page(html);
  const size_t details = html.find("<details><summary>alloy 0.1.0, run at 2026-12-02T13:45:07Z");
  ASSERT_NE(details, std::string::npos);
  EXPECT_GT(html.find(std::string(64, 'e')), details);
  EXPECT_NE(html.find("org/name @ abc123"), std::string::npos);
  EXPECT_NE(html.find(">1.23 MB<"), std::string::npos);
  EXPECT_NE(html.find(">not hashed<"), std::string::npos);
  EXPECT_NE(html.find("<code>alloy-assay merged base " + kEvilEscaped + "</code>"), std::string::npos);
}

TEST(AssayReport, FormatsNumbersForReaders) {
  using namespace alloy::report;
  EXPECT_EQ(fmt_estimate(0.853, 0.541), "0.9 ± 0.5");
  EXPECT_EQ(fmt_estimate(0.8612, 0.0096), "0.861 ± 0.010");
  EXPECT_EQ(fmt_estimate(-0.00003, 0.0003), "0.0000 ± 0.0003");  // no "-0.0000"
  EXPECT_EQ(fmt_estimate(0.857, 0), "0.857");                     // no spread: three digits
  EXPECT_EQ(fmt_chance(-3774.3), "&lt; 1e-300");
  EXPECT_EQ(fmt_chance(-40.3), "&lt; 1e-40");
  EXPECT_EQ(fmt_chance(-1.5), "up to 0.03");
  EXPECT_EQ(fmt_z(44.288518), "44");
  EXPECT_EQ(fmt_z(5.77), "5.8");
  EXPECT_EQ(fmt_percent(0.99996), "99.9%");  // a shortfall never rounds up to 100%
  EXPECT_EQ(fmt_percent(0.0022), "0.22%");
  EXPECT_EQ(tidy_numbers("z >= 29.836461, weight -0.499820, 1.000000 and 3 or 0.5"),
            "z >= 29.8, weight -0.5, 1 and 3 or 0.5");
  EXPECT_EQ(short_names({"/x/fam/ft_1", "/y/ft_1", "fam/base", "/c/hub/models--org--Qwen3-8B/snapshots/abc"}),
            (std::vector<std::string>{"fam/ft_1", "y/ft_1", "base", "Qwen3-8B"}));
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
  doc["audit"] = {{"models", {1, "x", {{"files", {2}}}}}, {"command_line", 5}};
  std::string html;
  ASSERT_NO_THROW(html = alloy::assay_report_html(doc));
  expect_safe_page(html);
  EXPECT_NE(html.find("—"), std::string::npos);
  EXPECT_EQ(html.find(kEvil), std::string::npos);
}

}  // namespace
