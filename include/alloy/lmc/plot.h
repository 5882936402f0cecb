// alloy/lmc/plot.h: self-contained SVG line charts and an HTML report page for alloy-lmc (inline
// CSS and SVG, no scripts, no network; the style of the assay report, lib/assay/report.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace alloy::lmc {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color = "#1f77b4";
  bool dashed = false;
};

// A line chart with axes, ticks, a legend and a title; non-finite points are skipped.
std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<Series>& series,
                           int width = 640, int height = 360);

// An HTML page: a title, a summary table (label, value), the charts, then free HTML sections.
std::string html_report(const std::string& title,
                        const std::vector<std::pair<std::string, std::string>>& summary,
                        const std::vector<std::string>& svgs, const std::string& extra_html = "");

// A numeric CSV table with a header line (what alloy-lmc writes). Throws Error(kInvalidArgument)
// naming `label` on a malformed line or a non-numeric cell.
struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;
  // The values of a column; throws Error naming the column and `label` when absent.
  std::vector<double> column(const std::string& name, const std::string& label) const;
};
CsvTable parse_csv(const std::string& text, const std::string& label);

// One input of `alloy-lmc plot`: a parsed CSV file and the label its lines get in the legend.
struct CsvInput {
  std::string file, label;
  CsvTable table;
};

// The series `alloy-lmc plot` draws: one per input and y column, x from column `x`. The name is
// the input's label when there is one y column, the column when there is one input, else both;
// with several inputs and several columns each input has one colour and every column after the
// first is dashed. Throws Error naming the file when a column is absent.
std::vector<Series> csv_series(const std::vector<CsvInput>& inputs, const std::string& x,
                               const std::vector<std::string>& ys);

// The numbers of a chart, as plotted: {"title", "x_label", "y_label", "series": [{"name", "x",
// "y"}]}, every value of every series (a non-finite value, which the chart skips, is null).
nlohmann::json chart_json(const std::string& title, const std::string& x_label,
                          const std::string& y_label, const std::vector<Series>& series);

}  // namespace alloy::lmc
