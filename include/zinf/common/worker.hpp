// One persistent thread that runs tasks in order (instead of a thread per
// task): the emulated device's copy streams, the NVMe tier's I/O helper, the
// engine's fetch and gradient workers. The destructor runs what was
// submitted, then joins.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "zinf/common/status.hpp"

namespace zinf {

class Worker {
 public:
  Worker() : thread_([this] { run(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs `task` after everything submitted before it; the future has its Status.
  std::future<Status> submit(std::function<Status()> task) {
    std::packaged_task<Status()> packaged(std::move(task));
    auto future = packaged.get_future();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(packaged));
    }
    cv_.notify_one();
    return future;
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything submitted has run
      auto task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Status()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace zinf
