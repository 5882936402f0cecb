// The HTML report's parts (lib/assay/report*.cpp): defensive JSON access, number formatting for
// readers, the SVG charts and the page's sections. Internal to the assay library.
#pragma once

#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace alloy::report {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Field access that never throws: missing, null or mistyped fields read as empty / NaN / [].
const json& field(const json& j, const char* key);
std::string text_of(const json& j);
std::string text(const json& j, const char* key);
double number_of(const json& j);
double number(const json& j, const char* key);
bool flag(const json& j, const char* key);
const json& list(const json& j, const char* key);
std::string dump(const json& j);

// Numbers for readers (report_format.cpp).
// `digits` significant digits; "—" for NaN; exponents compact ("1e6", "2.5e-7").
std::string fmt(double x, int digits = 3);
// A value shown to the precision of its uncertainty: the uncertainty to one significant digit
// (two when it starts with 1), the value to the same decimal place: "0.86 ± 0.01".
std::string fmt_estimate(double value, double uncertainty);
// A value to the decimal place its uncertainty supports, without the "±" part.
std::string fmt_to_precision(double value, double uncertainty);
// A bound given as log10 of a probability: "< 1e-300" (floor), "< 1e-40", "up to 0.03".
std::string fmt_chance(double log10_p);
// z: one decimal below 10, whole numbers to 9999, then "1e6".
std::string fmt_z(double z);
// cos_fit: three decimals, more when close to 1 so 0.9999 does not print as 1.
std::string fmt_cos(double x);
// A correlation: three decimals, "> 0.999" above that.
std::string fmt_correlation(double r);
std::string fmt_count(double x);
std::string fmt_percent(double fraction);  // "100%", "99.7%", "0.22%"
std::string fmt_bytes(double bytes);       // "1.2 MB"
// Prose from the verdict with long decimals ("0.869739", "29.836461") rounded to 3 digits.
std::string tidy_numbers(const std::string& prose);

// Short display names for model paths: the folder name ("ft_1" for "/x/fam/ft_1"), the Hub name
// for a Hub cache snapshot ("name" for ".../models--org--name/snapshots/REV"), with more of the
// path where two would read the same.
std::vector<std::string> short_names(const std::vector<std::string>& paths);

// Charts (report_chart.cpp): inline SVG that scales to its container's width.
struct Series {
  std::string label, color;
  std::vector<double> x, y;  // y may hold NaN (no point there)
  bool dashed = false;
};
struct ChartFrame {
  std::string title, x_label, y_label;
  double width = 960, height = 250;
  double y_lo = 0, y_hi = 1;  // fixed: values outside are drawn at the edge
  double x_lo = kNaN, x_hi = kNaN;  // default: the data's range
};
std::string svg_chart(const ChartFrame& frame, const std::vector<Series>& series);
// Horizontal bars on the fixed scale [0, 1] (negative values draw no bar), the value beside each.
std::string svg_bars(const std::string& title, const std::vector<std::string>& labels, const std::vector<double>& values,
                     const std::vector<std::string>& colors);
// A row of coloured swatches with labels (HTML), the legend shared by a group of charts.
std::string legend(const std::vector<std::pair<std::string, std::string>>& label_colors);
extern const char* const kPalette[8];
const char* component_color(const std::string& component);

// What the page is about, gathered once from the document.
struct Page {
  const json& doc;
  std::vector<std::string> paths, names;  // candidates in document order; short names
  std::vector<size_t> charted;            // candidates whose weights the tables and charts show
  std::string verdict, method;
  bool sparse = false;                    // ties / dare_ties: the plain fit's weights are not the recipe's
  explicit Page(const json& document);
  std::string name_of(const std::string& path) const;  // short name, or the path if no candidate
  std::string method_name() const;                      // "TIES", "DARE-TIES", "linear", ...
};

// Sections (report_sections.cpp, report_layers.cpp, report_evidence.cpp).
std::string headline_section(const Page& page);
std::string recipe_section(const Page& page);
std::string candidates_section(const Page& page);
std::string components_section(const Page& page);
std::string checks_section(const Page& page);
std::string per_layer_section(const Page& page);
std::string permutations_section(const Page& page);
std::string audit_section(const Page& page);

// A section's numbers with their "How to read this" beside them.
// `wide`: the numbers need the page's width (a wide table), so the explanation goes above them.
std::string with_explanation(const std::string& content_html, const std::string& explanation_html,
                             bool wide = false);
std::string td(const std::string& html, bool numeric = false);
std::string code(const std::string& text);  // escaped, in <code>

}  // namespace alloy::report
