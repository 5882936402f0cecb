// The progress bar (alloy/core/progress.h).
#include "alloy/core/progress.h"

#include <unistd.h>

#include <chrono>
#include <cmath>

namespace alloy {
namespace {

constexpr int kWidth = 24;               // characters between the brackets
constexpr double kRedrawSeconds = 0.1;

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string printf_text(const char* format, double value) {
  char text[32];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

}  // namespace

bool progress_enabled(bool quiet, bool forced) {
  if (quiet) return false;
  return forced || ::isatty(STDERR_FILENO) == 1;
}

std::string ProgressBar::bytes_text(double bytes) {
  static const char* const kUnits[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  int unit = 0;
  while (bytes >= 1000 && unit < 5) {
    bytes /= 1000;
    ++unit;
  }
  if (unit == 0) return printf_text("%.0f", bytes) + " B";
  return printf_text(bytes >= 100 ? "%.1f" : "%.2f", bytes) + " " + kUnits[unit];
}

std::string ProgressBar::duration_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 360000) return "--:--";
  const auto total = static_cast<long>(std::lround(seconds));
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof(text), "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
  } else {
    std::snprintf(text, sizeof(text), "%ld:%02ld", total / 60, total % 60);
  }
  return text;
}

std::string ProgressBar::format(const std::string& label, uint64_t done, uint64_t total, double elapsed) {
  if (done > total) done = total;
  const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(fraction * kWidth);
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  const std::string eta =
      done == total ? duration_text(elapsed) : rate > 0 ? duration_text(static_cast<double>(total - done) / rate) : "--:--";
  char percent[8];
  std::snprintf(percent, sizeof(percent), "%3d%%", static_cast<int>(fraction * 100));
  return label + " [" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "] " + percent + "  " +
         bytes_text(static_cast<double>(done)) + " / " + bytes_text(static_cast<double>(total)) + "  " +
         (rate > 0 ? bytes_text(rate) + "/s" : std::string("-- B/s")) + "  " + (done == total ? "in " : "ETA ") + eta;
}

ProgressBar::ProgressBar(std::string label, uint64_t total_bytes, std::FILE* out, Clock clock)
    : label_(std::move(label)), total_(total_bytes), out_(out), clock_(clock ? std::move(clock) : Clock(steady_seconds)) {
  start_ = clock_();
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(uint64_t done) {
  if (finished_) return;
  const double now = clock_();
  if (done >= total_ || last_draw_ < 0 || now - last_draw_ >= kRedrawSeconds) {
    last_draw_ = now;
    draw(done);
  }
  if (done >= total_) finish();
}

std::function<void(uint64_t, uint64_t)> ProgressBar::callback() {
  return [this](uint64_t done, uint64_t total) {
    if (finished_ && done < total) {  // the next job (a family's next model): a new line
      start_ = clock_();
      last_draw_ = -1;
      drawn_ = finished_ = false;
    }
    total_ = total;
    update(done);
  };
}

void ProgressBar::draw(uint64_t done) {
  // Trailing spaces clear what a longer earlier line left.
  std::fprintf(out_, "\r%s   ", format(label_, done, total_, clock_() - start_).c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_ && !finished_) std::fputc('\n', out_);
  finished_ = true;
}

}  // namespace alloy
