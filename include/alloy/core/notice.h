// alloy/core/notice.h: what the library did on the user's behalf that the user should hear about
// (a stale staging folder removed, ...). Libraries never print; they call notice(), and the sink,
// by default a line "alloy: notice: ..." on standard error, decides where it goes.
#pragma once

#include <functional>
#include <string>

namespace alloy {

void notice(const std::string& message);
// Replaces the sink (nullptr restores the default); returns the previous one. Thread-safe.
std::function<void(const std::string&)> set_notice_sink(std::function<void(const std::string&)> sink);

}  // namespace alloy
