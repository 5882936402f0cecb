// alloy/core/progress.h: the one progress bar of every long job (alloy-merge, alloy-assay, alloy-moe,
// alloy-synth), on standard error:
//
//   alloy-merge [############............]  48%  1.21 GB / 2.52 GB  310.4 MB/s  ETA 0:04
//
// bytes done and total (decimal units), the rate since the start, and the time left at that rate
// ("ETA --:--" until a rate is known). Drawn with '\r' at most ten times a second and once at the
// end, then a newline. Tools show it when standard error is a terminal or --progress is given,
// never with --quiet (progress_enabled). Library code only reports bytes through a callback.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace alloy {

// Whether a tool shows its bar: never when quiet, always when forced, else when stderr is a TTY.
bool progress_enabled(bool quiet, bool forced);

class ProgressBar {
 public:
  // Seconds since some fixed start; tests pass a fake.
  using Clock = std::function<double()>;
  ProgressBar(std::string label, uint64_t total_bytes, std::FILE* out = stderr, Clock clock = {});
  ~ProgressBar();  // finishes the line if anything was drawn
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Records `done_bytes` (of the total) and redraws when 0.1 s have passed since the last draw,
  // or when done reaches the total (then the line is finished).
  void update(uint64_t done_bytes);
  // A callback for the library's (done, total) progress hooks; the total given there replaces
  // the constructor's. After the end, a report short of its total starts a new job on a new line.
  std::function<void(uint64_t, uint64_t)> callback();

  // The line for a state, without '\r': what update() draws.
  static std::string format(const std::string& label, uint64_t done, uint64_t total, double elapsed_seconds);
  // "1.21 GB", "310.4 MB", "512 B" (decimal units); "0:04", "1:02:03" for durations.
  static std::string bytes_text(double bytes);
  static std::string duration_text(double seconds);

 private:
  void draw(uint64_t done);
  void finish();

  std::string label_;
  uint64_t total_ = 0;
  std::FILE* out_;
  Clock clock_;
  double start_ = 0, last_draw_ = -1;
  bool drawn_ = false, finished_ = false;
};

}  // namespace alloy
