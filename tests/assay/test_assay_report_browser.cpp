// The HTML report in a real browser: four suspects made with the real tools (a linear merge, a
// model unrelated to every candidate, a TIES merge, a linear merge with its experts permuted),
// each assayed with --report and rendered by headless chromium (Debian's package, installed by
// scripts/install-deps.sh); each screenshot must have the window's size, not be blank, and show
// the verdict card of the right kind at the top. Skipped when chromium is absent.
// With ALLOY_REPORT_SCREENSHOTS=DIR the PNGs are copied to DIR (docs/report/ holds them).
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "test_utils.h"

namespace {

namespace fs = std::filesystem;
using alloy::test::run_command;

constexpr int kWidth = 1200, kHeight = 3300;  // tall enough for the charts of every report

// An 8-bit RGB or RGBA, non-interlaced PNG, decoded to RGB rows; throws on anything else.
struct Image {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;
  uint32_t pixel(uint32_t x, uint32_t y) const {
    const uint8_t* p = &rgb[3 * (size_t(y) * width + x)];
    return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
  }
};

uint32_t big_endian(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 | uint32_t(uint8_t(s[at + 2])) << 8 |
         uint8_t(s[at + 3]);
}

Image decode_png(const std::string& bytes) {
  if (bytes.size() < 8 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw std::runtime_error("not a PNG");
  Image img;
  int channels = 0;
  std::string idat;
  for (size_t at = 8; at + 12 <= bytes.size();) {
    const uint32_t length = big_endian(bytes, at);
    const std::string type = bytes.substr(at + 4, 4);
    if (at + 12 + length > bytes.size()) throw std::runtime_error("truncated chunk " + type);
    if (type == "IHDR") {
      img.width = big_endian(bytes, at + 8), img.height = big_endian(bytes, at + 12);
      const int depth = uint8_t(bytes[at + 16]), color = uint8_t(bytes[at + 17]), interlace = uint8_t(bytes[at + 20]);
      if (depth != 8 || (color != 2 && color != 6) || interlace != 0) throw std::runtime_error("unsupported PNG layout");
      channels = color == 6 ? 4 : 3;
    } else if (type == "IDAT") {
      idat += bytes.substr(at + 8, length);
    }
    at += 12 + length;
  }
  if (channels == 0 || img.width == 0 || img.height == 0) throw std::runtime_error("no IHDR");
  const size_t stride = size_t(img.width) * channels;
  std::vector<uint8_t> raw((stride + 1) * img.height);
  z_stream z{};
  if (inflateInit(&z) != Z_OK) throw std::runtime_error("inflateInit");
  z.next_in = reinterpret_cast<Bytef*>(idat.data());
  z.avail_in = static_cast<uInt>(idat.size());
  z.next_out = raw.data();
  z.avail_out = static_cast<uInt>(raw.size());
  const int rc = inflate(&z, Z_FINISH);
  inflateEnd(&z);
  if (rc != Z_STREAM_END || z.avail_out != 0) throw std::runtime_error("IDAT does not inflate to the image size");
  // Undo the per-row filters (PNG spec 9.2), then drop alpha.
  std::vector<uint8_t> prev(stride, 0), row(stride);
  img.rgb.resize(size_t(img.width) * img.height * 3);
  for (uint32_t y = 0; y < img.height; ++y) {
    const uint8_t* in = &raw[y * (stride + 1)];
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= size_t(channels) ? row[i - channels] : 0, b = prev[i],
                c = i >= size_t(channels) ? prev[i - channels] : 0;
      int predicted = 0;
      switch (in[0]) {
        case 0: predicted = 0; break;
        case 1: predicted = a; break;
        case 2: predicted = b; break;
        case 3: predicted = (a + b) / 2; break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: throw std::runtime_error("bad filter type");
      }
      row[i] = uint8_t(in[1 + i] + predicted);
    }
    for (uint32_t x = 0; x < img.width; ++x)
      for (int k = 0; k < 3; ++k) img.rgb[3 * (size_t(y) * img.width + x) + k] = row[x * channels + k];
    prev = row;
  }
  return img;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

std::string run_ok(const std::string& command) {
  int status = -1;
  const std::string out = run_command(command + " 2>&1", &status);
  EXPECT_EQ(status, 0) << command << "\n" << out;
  return out;
}

struct Case {
  std::string name, suspect, verdict, method;
  uint32_t card;  // the verdict card's background (report.cpp's style)
};

TEST(AssayReportBrowser, FourReportsRenderInChromium) {
  int status = -1;
  const std::string browser = run_command("command -v chromium 2>/dev/null", &status);
  if (status != 0 || browser.empty()) GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh installs it)";
  alloy::test::TempDir temp;
  const fs::path work = temp.path();
  const std::string cd = "cd " + q(work) + " && ";
  const std::string synth = "'" + alloy::test::bin("alloy-synth") + "' ";
  const std::string merge = "'" + alloy::test::bin("alloy-merge") + "' -q ";
  const std::string shape = " --family moe --layers 6 --hidden 128 --vocab 256";
  run_ok(cd + synth + "family fam --fine-tunes 2 --unrelated 1 --seed 7" + shape);
  run_ok(cd + synth + "base other --seed 99" + shape);
  alloy::test::write_bytes(work / "linear.yml",
                           "merge_method: linear\nmodels:\n  - model: fam/ft_1\n    parameters: {weight: 0.6}\n"
                           "  - model: fam/ft_2\n    parameters: {weight: 0.4}\ndtype: bfloat16\n");
  alloy::test::write_bytes(work / "ties.yml",
                           "merge_method: ties\nbase_model: fam/base\nmodels:\n  - model: fam/ft_1\n"
                           "    parameters: {weight: 0.6, density: 0.5}\n  - model: fam/ft_2\n"
                           "    parameters: {weight: 0.4, density: 0.5}\ndtype: bfloat16\n");
  run_ok(cd + merge + "linear.yml merged");
  run_ok(cd + merge + "ties.yml ties-merged");
  run_ok(cd + synth + "perturb merged permuted --kind permute-experts --seed 3");

  const std::vector<Case> cases = {{"merge", "merged", "merge", "linear", 0xeef4fb},
                                   {"non-merge", "other", "independent", "", 0xf3f3f3},
                                   {"ties", "ties-merged", "merge", "ties", 0xeef4fb},
                                   {"permuted", "permuted", "merge", "linear", 0xeef4fb}};
  std::string browsers;
  for (const Case& c : cases) {
    run_ok(cd + "'" + alloy::test::bin("alloy-assay") + "' " + c.suspect +
           " fam/base fam/ft_1 fam/ft_2 fam/unrelated_1 -q --json " + c.name + ".json --report " + c.name + ".html");
    const auto doc = nlohmann::json::parse(alloy::test::read_bytes(work / (c.name + ".json")));
    EXPECT_EQ(doc.value("verdict", ""), c.verdict) << c.name;
    if (!c.method.empty()) {
      EXPECT_EQ(doc.value("method", ""), c.method) << c.name;
    }
    // One browser per report, all four at once (start-up dominates), each with its own profile.
    browsers += "(timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run "
                "--user-data-dir=" + q(work / ("profile-" + c.name)) + " --window-size=" + std::to_string(kWidth) +
                "," + std::to_string(kHeight) + " --screenshot=" + q(work / (c.name + ".png")) + " " +
                q("file://" + (work / (c.name + ".html")).string()) + " > " + q(work / (c.name + ".log")) +
                " 2>&1; echo $? > " + q(work / (c.name + ".rc")) + ") & ";
  }
  run_ok(browsers + "wait");
  const char* keep = std::getenv("ALLOY_REPORT_SCREENSHOTS");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path png = work / (c.name + ".png");
    ASSERT_TRUE(fs::exists(png)) << alloy::test::read_bytes(work / (c.name + ".log"));
    Image img;
    ASSERT_NO_THROW(img = decode_png(alloy::test::read_bytes(png)));
    EXPECT_EQ(img.width, uint32_t(kWidth));
    EXPECT_EQ(img.height, uint32_t(kHeight));
    // Not blank: many colours (text, charts), and a good share of the page is not white.
    std::set<uint32_t> colours;
    size_t inked = 0, card = 0;
    for (uint32_t y = 0; y < img.height; y += 2)
      for (uint32_t x = 0; x < img.width; x += 2) {
        const uint32_t p = img.pixel(x, y);
        if (colours.size() < 1000) colours.insert(p);
        inked += p != 0xffffff;
        card += y < 500 && p == c.card;
      }
    EXPECT_GE(colours.size(), 50u);
    EXPECT_GE(inked, size_t(img.width / 2) * (img.height / 2) / 50);
    // The verdict card comes first: its background fills a good part of the top 500 rows.
    EXPECT_GE(card, 10000u) << "verdict card colour " << std::hex << c.card;
    if (keep) fs::copy_file(png, fs::path(keep) / ("report-" + c.name + ".png"), fs::copy_options::overwrite_existing);
  }
}

}  // namespace
