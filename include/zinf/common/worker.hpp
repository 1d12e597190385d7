// One persistent thread that runs tasks in order (instead of a thread per
// task): the emulated device's copy streams, the NVMe tier's I/O helper, the
// engine's fetch and gradient workers. The destructor runs what was
// submitted, then joins.
//
// A task's callable, and everything it captured, is destroyed when the task
// has run and before its future becomes ready: a task that holds a buffer
// lease has given it back by the time anyone sees it finish (a
// std::packaged_task would keep it until the future itself goes away).
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
    Job job{std::move(task), {}};
    auto future = job.done.get_future();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(job));
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
      Job job = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      try {
        Status status = job.task();
        job.task = nullptr;
        job.done.set_value(std::move(status));
      } catch (...) {
        job.task = nullptr;
        job.done.set_exception(std::current_exception());
      }
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  struct Job {
    std::function<Status()> task;
    std::promise<Status> done;
  };

  std::deque<Job> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace zinf
