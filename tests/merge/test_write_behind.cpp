// The executor's write-behind (lib/merge/write_behind.h): jobs run in the order queued, a slot's
// buffer is handed out again only after the job that read it is done, the first exception a job
// throws reaches the caller (and the jobs after it are dropped), and destruction lets the running
// job finish but runs none of the queued ones.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "alloy/core/error.h"
#include "merge/write_behind.h"

namespace alloy::detail {
namespace {

TEST(WriteBehind, RunsJobsInOrderAndReusesTheSlots) {
  std::vector<int> seen;
  std::vector<const uint8_t*> buffers;
  {
    WriteBehind behind(2);
    for (int k = 0; k < 100; ++k) {
      uint8_t* bytes = behind.buffer(64);
      buffers.push_back(bytes);
      std::memset(bytes, k, 64);
      behind.write([&seen, bytes, k] {
        // The slot is not refilled while its job reads it.
        for (int j = 0; j < 64; ++j) ASSERT_EQ(bytes[j], static_cast<uint8_t>(k));
        if (k % 7 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        seen.push_back(k);
      });
    }
    behind.wait();
    ASSERT_EQ(seen.size(), 100u);
    for (int k = 0; k < 100; ++k) EXPECT_EQ(seen[k], k);
  }
  // Two slots, used in turn, never reallocated (the size never grows).
  for (size_t k = 2; k < buffers.size(); ++k) EXPECT_EQ(buffers[k], buffers[k - 2]);
  EXPECT_NE(buffers[0], buffers[1]);
}

// The chunked merge hands out the buffers of several windows before it queues their writes (a
// window is queued when its last task is merged): write() reads the oldest buffer handed out and
// not yet written, and a slot handed out is not handed out again until its job is done.
TEST(WriteBehind, BuffersHandedOutAheadAreWrittenInOrderAndNotReused) {
  WriteBehind behind(2);
  uint8_t* first = behind.buffer(16);
  uint8_t* second = behind.buffer(16);
  ASSERT_NE(first, second);
  std::atomic<bool> third_out{false};
  std::atomic<uint8_t*> third{nullptr};
  std::thread taker([&] {
    third = behind.buffer(16);  // the first slot: only once the first window's job is done
    third_out = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third_out) << "a slot was handed out again before its job was queued";
  std::vector<int> seen;
  std::memset(first, 1, 16);
  std::memset(second, 2, 16);
  std::atomic<bool> release{false};
  behind.write([&] {
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    seen.push_back(first[0]);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third_out) << "a slot was handed out again while its job ran";
  release = true;
  taker.join();
  EXPECT_EQ(third.load(), first);
  behind.write([&] { seen.push_back(second[0]); });  // the second buffer's job
  behind.write([] {});                               // the third's
  behind.wait();
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
  // Every job is done, so the next slot (the second buffer's) is free: a job's ticket put on the
  // wrong slot leaves this one marked handed out, and this call waits for ever.
  EXPECT_EQ(behind.buffer(16), second);
  behind.write([] {});
  behind.wait();
}

TEST(WriteBehind, WaitWithoutJobsReturns) {
  WriteBehind behind;
  behind.wait();
}

TEST(WriteBehind, FirstErrorReachesTheCallerAndLaterJobsAreDropped) {
  WriteBehind behind(2);
  std::atomic<int> ran{0};
  std::atomic<bool> go{false};
  behind.buffer(8);
  behind.write([&] { ++ran; });
  behind.buffer(8);
  behind.write([&] {
    while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    throw Error(ErrorCode::kIo, "out: cannot write tensor 'x': No space left on device");
  });
  behind.buffer(8);
  behind.write([&] { ++ran; });  // queued before the error: dropped
  go = true;
  try {
    behind.wait();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_STREQ(e.what(), "out: cannot write tensor 'x': No space left on device");
  }
  EXPECT_EQ(ran, 1);
  // Every later call reports it too.
  EXPECT_THROW(behind.buffer(8), Error);
  EXPECT_THROW(behind.write([] {}), Error);
}

TEST(WriteBehind, DestructionDropsQueuedJobs) {
  std::atomic<int> ran{0};
  std::atomic<bool> started{false}, release{false};
  // Releases the first job only once the destructor has begun (it waits for the running job).
  std::thread releaser([&] {
    while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    release = true;
  });
  {
    WriteBehind behind(4);
    behind.buffer(8);
    behind.write([&] {
      started = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++ran;
    });
    for (int k = 0; k < 3; ++k) {
      behind.buffer(8);
      behind.write([&] { ++ran; });
    }
    while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  releaser.join();
  EXPECT_EQ(ran, 1);  // the running job finished; the queued ones were dropped
}

}  // namespace
}  // namespace alloy::detail
