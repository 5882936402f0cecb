// Write-behind: a ring of reused window buffers and one thread that runs the write jobs in order
// (see write_behind.h).
#include "write_behind.h"

namespace alloy::detail {

WriteBehind::WriteBehind(size_t slots) : slots_(slots == 0 ? 1 : slots), slot_ticket_(slots_.size(), 0) {}

WriteBehind::~WriteBehind() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_worker_.notify_one();
  if (worker_.joinable()) worker_.join();
}

void WriteBehind::rethrow_locked() {
  if (error_) std::rethrow_exception(error_);
}

uint8_t* WriteBehind::buffer(uint64_t nbytes) {
  const size_t slot = next_slot_;
  next_slot_ = (next_slot_ + 1) % slots_.size();
  {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_caller_.wait(lock, [&] { return done_ >= slot_ticket_[slot] || error_; });
    rethrow_locked();
    slot_ticket_[slot] = kHandedOut;  // until write() queues its job
  }
  // Grows only: later windows reuse the touched pages.
  return slots_[slot].reserve(static_cast<size_t>(nbytes));
}

void WriteBehind::write(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_locked();
    jobs_.push_back(std::move(job));
    // The job reads the oldest buffer handed out and not yet written: that slot is free again once
    // this job is done.
    slot_ticket_[written_slot_] = ++queued_;
    written_slot_ = (written_slot_ + 1) % slots_.size();
    // Started with the first job, so a merge that never writes behind starts no thread.
    if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
  }
  wake_worker_.notify_one();
}

void WriteBehind::wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  wake_caller_.wait(lock, [&] { return done_ == queued_; });
  rethrow_locked();
}

void WriteBehind::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_worker_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    if (stopping_) return;
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    if (!error_) {
      lock.unlock();
      std::exception_ptr failed;
      try {
        job();
      } catch (...) {
        failed = std::current_exception();
      }
      job = nullptr;  // its captures are released before the caller hears it is done
      lock.lock();
      if (failed && !error_) error_ = failed;
    }
    ++done_;
    wake_caller_.notify_all();
  }
}

}  // namespace alloy::detail
