// The progress bar's line and its redraw rule, with a fake clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "alloy/core/progress.h"

namespace {

using alloy::ProgressBar;

TEST(Progress, FormatsBytesRateAndEta) {
  EXPECT_EQ(ProgressBar::format("alloy-merge", 0, 2'520'000'000, 0),
            "alloy-merge [........................]   0%  0 B / 2.52 GB  -- B/s  ETA --:--");
  // 1.21 GB in 3.9 s: 310.3 MB/s; 1.31 GB left at that rate is 4.2 s.
  EXPECT_EQ(ProgressBar::format("alloy-merge", 1'210'000'000, 2'520'000'000, 3.9),
            "alloy-merge [###########.............]  48%  1.21 GB / 2.52 GB  310.3 MB/s  ETA 0:04");
  EXPECT_EQ(ProgressBar::format("alloy-assay", 2'520'000'000, 2'520'000'000, 8.4),
            "alloy-assay [########################] 100%  2.52 GB / 2.52 GB  300.0 MB/s  in 0:08");
  EXPECT_EQ(ProgressBar::format("x", 0, 0, 0), "x [########################] 100%  0 B / 0 B  -- B/s  in 0:00");
}

TEST(Progress, FormatsUnitsAndDurations) {
  EXPECT_EQ(ProgressBar::bytes_text(512), "512 B");
  EXPECT_EQ(ProgressBar::bytes_text(1500), "1.50 kB");
  EXPECT_EQ(ProgressBar::bytes_text(140'200'000), "140.2 MB");
  EXPECT_EQ(ProgressBar::bytes_text(3.5e12), "3.50 TB");
  EXPECT_EQ(ProgressBar::duration_text(59.4), "0:59");
  EXPECT_EQ(ProgressBar::duration_text(3723), "1:02:03");
  EXPECT_EQ(ProgressBar::duration_text(-1), "--:--");
}

TEST(Progress, RedrawsAtMostTenTimesASecondAndEndsTheLine) {
  char* text = nullptr;
  size_t length = 0;
  std::FILE* out = ::open_memstream(&text, &length);
  double now = 100.0;
  {
    ProgressBar bar("job", 1000, out, [&] { return now; });
    bar.update(0);      // drawn: the first update
    now = 100.05;
    bar.update(100);    // not drawn: 0.05 s later
    now = 100.2;
    bar.update(400);    // drawn
    now = 101.0;
    bar.update(1000);   // drawn and finished
    bar.update(1000);   // nothing after the end
  }
  std::fclose(out);
  const std::string drawn(text, length);
  std::free(text);
  EXPECT_EQ(std::count(drawn.begin(), drawn.end(), '\r'), 3) << drawn;
  EXPECT_EQ(std::count(drawn.begin(), drawn.end(), '\n'), 1) << drawn;
  EXPECT_NE(drawn.find("job [#########...............]  40%  400 B / 1.00 kB  2.00 kB/s  ETA 0:00"),
            std::string::npos) << drawn;
  EXPECT_NE(drawn.find("100%  1.00 kB / 1.00 kB  1.00 kB/s  in 0:01"), std::string::npos) << drawn;
  EXPECT_EQ(drawn.back(), '\n');
}

TEST(Progress, QuietWinsAndForcedShows) {
  EXPECT_FALSE(alloy::progress_enabled(true, true));
  EXPECT_TRUE(alloy::progress_enabled(false, true));
}

}  // namespace
