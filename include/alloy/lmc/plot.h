// alloy/lmc/plot.h: self-contained SVG line charts and an HTML report page for alloy-lmc (inline
// CSS and SVG, no scripts, no network; the style of the assay report, lib/assay/report.cpp).
#pragma once

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

}  // namespace alloy::lmc
