// The pread/pwrite engine: a fixed pool of threads, each doing one blocking
// system call per request. The fallback when neither io_uring nor libaio can
// run; also the reference the conformance suite holds the others to.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "swap/engines.hpp"

namespace zinf::swap {
namespace {

class PsyncEngine final : public IoEngine {
 public:
  explicit PsyncEngine(const IoEngineOptions& options) : queue_depth_(options.queue_depth) {
    const std::uint32_t threads = std::clamp<std::uint32_t>(options.queue_depth, 1, 64);
    workers_.reserve(threads);
    for (std::uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
  }

  ~PsyncEngine() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::string_view name() const override { return "psync"; }

  Result<int> add_file(int fd, const std::string& path) override {
    std::lock_guard lock(mutex_);
    return files_.add(fd, path);
  }
  const std::string& file_path(int file) const override { return files_.path(file); }

  Status submit(std::span<const IoRequest> requests) override {
    {
      std::lock_guard lock(mutex_);
      if (requests.size() > queue_depth_ - in_flight_) {
        return Status::resource_exhausted("psync engine: " + std::to_string(requests.size()) +
                                          " requests exceed the free queue slots");
      }
      for (const IoRequest& r : requests) {
        if (!files_.valid(r.file))
          return Status::invalid_argument("psync engine: unknown file index");
      }
      pending_.insert(pending_.end(), requests.begin(), requests.end());
      in_flight_ += requests.size();
    }
    if (requests.size() == 1) {
      work_cv_.notify_one();
    } else {
      work_cv_.notify_all();
    }
    return Status::ok();
  }

  Result<std::size_t> reap(std::span<IoCompletion> out, std::size_t min_complete,
                           std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    done_cv_.wait_for(lock, timeout, [&] { return done_.size() >= min_complete || woken_; });
    woken_ = false;
    const std::size_t n = std::min(out.size(), done_.size());
    std::copy_n(done_.begin(), n, out.begin());
    done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
    in_flight_ -= n;
    return n;
  }

  std::size_t in_flight() const override {
    std::lock_guard lock(mutex_);
    return in_flight_;
  }
  std::uint32_t queue_depth() const override { return queue_depth_; }

  void wake() override {
    {
      std::lock_guard lock(mutex_);
      woken_ = true;
    }
    done_cv_.notify_all();
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping, and nothing left to do
      const IoRequest r = pending_.front();
      pending_.pop_front();
      const int fd = files_.fd(r.file);
      lock.unlock();
      const ssize_t n = r.op == IoOp::kRead
                            ? ::pread(fd, r.buffer, r.length, static_cast<off_t>(r.offset))
                            : ::pwrite(fd, r.buffer, r.length, static_cast<off_t>(r.offset));
      const std::int64_t result = n >= 0 ? n : -errno;
      lock.lock();
      done_.push_back({r.user_data, result});
      done_cv_.notify_all();
    }
  }

  const std::uint32_t queue_depth_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  FileTable files_;
  std::deque<IoRequest> pending_;
  std::deque<IoCompletion> done_;
  std::size_t in_flight_ = 0;
  bool stopping_ = false;
  bool woken_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_psync_engine(const IoEngineOptions& options) {
  if (options.queue_depth == 0) return Status::invalid_argument("queue depth must be >= 1");
  return std::unique_ptr<IoEngine>(std::make_unique<PsyncEngine>(options));
}

}  // namespace zinf::swap
