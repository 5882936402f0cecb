// The assay's reads (detail::load_range): the values of the file, across the per-thread buffer's
// pieces; the mapping never faulted in (the resident set does not grow with the tensor); a file that
// shrank under the assay is an Error naming it, raised after the stage, never a crash.
#include <cstring>
#include <fstream>
#include <latch>
#include <string>
#include <thread>

#include "alloy/core/error.h"
#include "alloy/core/model.h"
#include "assay/internal.h"
#include "test_utils.h"

namespace alloy::test {
namespace {

constexpr uint64_t kElements = 3'000'000;  // 6 MB of bf16: many 128 KiB read pieces

uint16_t bf16_pattern(uint64_t i) { return uint16_t(0x3C00 + (i * 2654435761u >> 7) % 0x0800); }

float bf16_value(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A model of one bf16 tensor "w" of kElements and one f32 tensor "v" of 1000 (i / 8).
std::filesystem::path write_model(const TempDir& temp) {
  std::string data(kElements * 2 + 4000, '\0');
  for (uint64_t i = 0; i < kElements; ++i) {
    const uint16_t b = bf16_pattern(i);
    std::memcpy(&data[2 * i], &b, 2);
  }
  for (uint64_t i = 0; i < 1000; ++i) {
    const float f = float(i) / 8;
    std::memcpy(&data[kElements * 2 + 4 * i], &f, 4);
  }
  std::string header = "{";
  header += tensor_entry("w", "BF16", {kElements}, 0, kElements * 2);
  header += ",";
  header += tensor_entry("v", "F32", {1000}, kElements * 2, kElements * 2 + 4000);
  header += "}";
  const auto path = temp.path() / "model.safetensors";
  write_safetensors(path, header, data);
  return path;
}

uint64_t resident_file_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stoull(line.substr(8));
  }
  return 0;
}

TEST(AssayReads, LoadRangeGivesTheFileValuesAcrossReadPieces) {
  TempDir temp;
  const Model model = Model::open(write_model(temp));
  const ModelTensor& w = *model.find("w");
  // An odd start and a length spanning several 64 Ki-element pieces, and the tail of the tensor.
  for (const auto& [begin, count] : {std::pair<uint64_t, uint64_t>{12345, 200'001}, {kElements - 70'000, 70'000}}) {
    std::vector<float> out(count, -1.0f);
    detail::load_range(w, begin, count, out.data());
    for (uint64_t i = 0; i < count; ++i) {
      ASSERT_EQ(out[i], bf16_value(bf16_pattern(begin + i))) << "element " << begin + i;
    }
  }
  std::vector<float> v(10);
  detail::load_range(*model.find("v"), 990, 10, v.data());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(v[size_t(i)], float(990 + i) / 8);
  EXPECT_NO_THROW(detail::rethrow_read_error());
}

TEST(AssayReads, LoadRangeDoesNotMapTheFileIn) {
  TempDir temp;
  const Model model = Model::open(write_model(temp));
  const ModelTensor& w = *model.find("w");
  std::vector<float> out(kElements);
  const uint64_t before = resident_file_kb();
  detail::load_range(w, 0, kElements, out.data());
  // Through the mapping the 6 MB of the tensor would become resident file pages.
  EXPECT_LT(resident_file_kb(), before + 2048);
  EXPECT_EQ(out[kElements - 1], bf16_value(bf16_pattern(kElements - 1)));
}

TEST(AssayReads, AFileThatShrankIsAnErrorAfterTheStageNotACrash) {
  TempDir temp;
  const auto path = write_model(temp);
  const Model model = Model::open(path);
  std::filesystem::resize_file(path, 8 + 1000);  // cut inside the header's data: every read falls short
  std::vector<float> out(1000, -1.0f);
  detail::load_range(*model.find("w"), kElements - 1000, 1000, out.data());  // must not throw here
  for (float f : out) ASSERT_EQ(f, 0.0f);
  try {
    detail::rethrow_read_error();
    FAIL() << "no error for a file that shrank";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInputChanged);
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(detail::rethrow_read_error());  // reported once
}

// Concurrent stages (the rebuild checks) each keep their read errors: one thread's error is thrown
// on that thread only, never on another running beside it, and never left in the shared slot.
TEST(AssayReads, ReadErrorScopeKeepsEachThreadsErrorApart) {
  TempDir shrunk_dir, intact_dir;
  const auto shrunk_path = write_model(shrunk_dir);
  const Model shrunk = Model::open(shrunk_path), intact = Model::open(write_model(intact_dir));
  std::filesystem::resize_file(shrunk_path, 8 + 1000);
  std::latch noted(1), checked(1);
  std::string failing_thread, other_thread = "not run";
  std::thread failing([&] {
    detail::ReadErrorScope scope;
    std::vector<float> out(1000);
    detail::load_range(*shrunk.find("w"), kElements - 1000, 1000, out.data());
    noted.count_down();
    checked.wait();  // the other thread has looked for an error meanwhile
    try {
      detail::rethrow_read_error();
      failing_thread = "no error";
    } catch (const Error& e) {
      failing_thread = e.what();
    }
  });
  std::thread other([&] {
    detail::ReadErrorScope scope;
    noted.wait();  // the failing thread's error is noted by now
    std::vector<float> out(1000);
    detail::load_range(*intact.find("w"), 0, 1000, out.data());
    try {
      detail::rethrow_read_error();
      other_thread = out[999] == bf16_value(bf16_pattern(999)) ? "ok" : "wrong values";
    } catch (const Error& e) {
      other_thread = std::string("took the error: ") + e.what();
    }
    checked.count_down();
  });
  failing.join();
  other.join();
  EXPECT_EQ(other_thread, "ok");
  EXPECT_NE(failing_thread.find(shrunk_path.string()), std::string::npos) << failing_thread;
  EXPECT_NO_THROW(detail::rethrow_read_error());  // nothing went to the shared slot
  // Scopes nest: the inner one's error is its own, the outer one's slot stays as it was.
  detail::ReadErrorScope outer;
  {
    detail::ReadErrorScope inner;
    std::vector<float> out(10);
    detail::load_range(*shrunk.find("w"), kElements - 10, 10, out.data());
    EXPECT_THROW(detail::rethrow_read_error(), Error);
  }
  EXPECT_NO_THROW(detail::rethrow_read_error());
}

}  // namespace
}  // namespace alloy::test
