// Text inside the HTML and SVG that alloy writes (assay reports, classroom charts).
#pragma once

#include <string>

namespace alloy {

// `text` with & < > " ' as character references, safe in element content and quoted attributes.
std::string html_escape(const std::string& text);

}  // namespace alloy
