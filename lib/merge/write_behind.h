// Write-behind for the merge executor (internal to lib/merge): the output bytes of one window are
// written (and hashed, lib/core/file_set_writer.cpp) on a background thread while the next window
// is merged, so that the copy into the page cache and the sha256 of the output no longer wait for
// the merge, nor the merge for them.
//
// The windows go through a fixed ring of reused byte buffers (fresh pages cost a fault each, about
// 2.6 s per GiB here, so nothing is allocated per window, and the buffers ask for huge pages), and
// the jobs run one at a time in the order they were queued, so the writer sees exactly the calls it
// saw when they ran inline. The first exception a job throws is rethrown to the merging thread by
// the next buffer(), write() or wait(); the jobs queued after it are dropped (the run fails, and
// the staged files are removed).
// Waiting is passive (a condition variable), never spinning: the machines have few cores.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "alloy/core/page_buffer.h"

namespace alloy::detail {

class WriteBehind {
 public:
  // `slots`: how many windows may be filled or in flight at once (2: one being written while the
  // next is merged).
  explicit WriteBehind(size_t slots = 2);
  // Drops the jobs not yet started, waits for the running one, and stops the thread; the errors of
  // the jobs are not reported (call wait() first to see them).
  ~WriteBehind();
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  // The next slot's buffer, at least `nbytes` long: waits until the job that last used it is done
  // (a slot handed out whose job is not queued yet is not free either). Several buffers may be out
  // before their jobs are queued (the chunked merge takes a window's buffer when its first task
  // starts, and queues its write when the last one ends). Rethrows a job's exception.
  uint8_t* buffer(uint64_t nbytes);
  // Queues `job` after every job queued before it. The job reads the oldest buffer handed out whose
  // job was not yet queued (buffers are written in the order buffer() handed them out), and
  // nothing the caller will change before wait(). Rethrows a job's exception.
  void write(std::function<void()> job);
  // Returns when every queued job is done; rethrows the first exception one of them threw.
  void wait();

 private:
  void run();
  void rethrow_locked();

  std::vector<PageBuffer> slots_;  // huge pages: a 2 MiB window is one fault, not 512
  // The job that last used each slot (0: none; kHandedOut: handed out, its job not yet queued).
  static constexpr uint64_t kHandedOut = UINT64_MAX;
  std::vector<uint64_t> slot_ticket_;
  size_t next_slot_ = 0;  // the slot buffer() hands out next
  // The slot the next write() reads: buffers are written in the order they were handed out.
  size_t written_slot_ = 0;
  uint64_t queued_ = 0;  // jobs queued so far; job k (from 1) has ticket k
  uint64_t done_ = 0;    // jobs finished (run or dropped), in order
  std::deque<std::function<void()>> jobs_;
  std::exception_ptr error_;
  bool stopping_ = false;
  std::mutex mutex_;
  std::condition_variable wake_worker_;
  std::condition_variable wake_caller_;
  std::thread worker_;
};

}  // namespace alloy::detail
