// The io_uring engine: one ring, registered files, fixed buffers for requests
// whose memory lies in a registered region, and batched submission (one
// io_uring_submit per submit() call unless single_submit is set).
#include "swap/engines.hpp"

#ifdef ZINF_HAVE_LIBURING

#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "zinf/common/logging.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::swap {
namespace {

// Converts a negative liburing return into a Status (the only liburing errors
// that do not belong to a request: setup and registration).
Status ring_error(int ret, std::string_view what) { return Status::from_errno(-ret, what); }

class UringEngine final : public IoEngine {
 public:
  static Result<std::unique_ptr<IoEngine>> create(const IoEngineOptions& options) {
    auto engine = std::unique_ptr<UringEngine>(new UringEngine(options));
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 2 * options.queue_depth;
    if (options.sqpoll) {
      params.flags |= IORING_SETUP_SQPOLL;
      params.sq_thread_idle = 2000;
      int ret = io_uring_queue_init_params(options.queue_depth, &engine->ring_, &params);
      if (ret == 0) {
        engine->ready_ = true;
        engine->arm_wake();
        return std::unique_ptr<IoEngine>(std::move(engine));
      }
      ZINF_LOG(kWarn) << "io_uring: SQPOLL refused (" << std::strerror(-ret)
                      << "); using a ring without kernel polling";
      params = {};
      params.flags = IORING_SETUP_CQSIZE;
      params.cq_entries = 2 * options.queue_depth;
    }
    int ret = io_uring_queue_init_params(options.queue_depth, &engine->ring_, &params);
    if (ret < 0) return ring_error(ret, "io_uring_queue_init");
    engine->ready_ = true;
    engine->arm_wake();
    return std::unique_ptr<IoEngine>(std::move(engine));
  }

  ~UringEngine() override {
    if (ready_) io_uring_queue_exit(&ring_);
  }

  std::string_view name() const override { return "io_uring"; }

  Result<int> add_file(int fd, const std::string& path) override {
    if (in_flight_ != 0)
      return Status::failed_precondition("io_uring: add_file with requests in flight");
    const int index = files_.add(fd, path);
    if (files_registered_) io_uring_unregister_files(&ring_);
    const auto& fds = files_.fds();
    const int ret = io_uring_register_files(&ring_, fds.data(), static_cast<unsigned>(fds.size()));
    files_registered_ = ret == 0;
    if (!files_registered_) {
      ZINF_LOG(kDebug) << "io_uring: file registration refused (" << std::strerror(-ret)
                       << "); using plain file descriptors";
    }
    return index;
  }
  const std::string& file_path(int file) const override { return files_.path(file); }

  Status register_buffers(std::span<const std::span<std::byte>> regions) override {
    if (!regions_.empty())
      return Status::failed_precondition("io_uring: buffers already registered");
    std::vector<iovec> iov;
    iov.reserve(regions.size());
    std::uint64_t total = 0;
    for (auto r : regions) {
      if (r.size() > kMaxFixedBuffer) {
        return Status::invalid_argument(
            "io_uring: a fixed buffer holds at most 1 GiB, got one of " + std::to_string(r.size()) +
            " bytes");
      }
      iov.push_back({r.data(), r.size()});
      total += r.size();
    }
    const int ret =
        io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
    if (ret < 0) {
      return Status::from_errno(-ret, "io_uring: registering " + std::to_string(regions.size()) +
                                          " fixed buffers of " + std::to_string(total) +
                                          " bytes (they count against RLIMIT_MEMLOCK)");
    }
    regions_.assign(regions.begin(), regions.end());
    return Status::ok();
  }
  bool fixed_buffers() const override { return !regions_.empty(); }

  Status submit(std::span<const IoRequest> requests) override {
    if (requests.size() > free_slots()) {
      return Status::resource_exhausted("io_uring: " + std::to_string(requests.size()) +
                                        " requests exceed the free queue slots");
    }
    for (const IoRequest& r : requests) {
      if (!files_.valid(r.file)) return Status::invalid_argument("io_uring: unknown file index");
      ZINF_ASSIGN_OR_RETURN(io_uring_sqe * sqe, next_sqe());
      prepare(sqe, r);
      ++in_flight_;
      if (single_submit_) {
        int ret = io_uring_submit(&ring_);
        if (ret < 0) return ring_error(ret, "io_uring_submit");
      }
    }
    if (!single_submit_ && !requests.empty()) {
      int ret = io_uring_submit(&ring_);
      if (ret < 0) return ring_error(ret, "io_uring_submit");
    }
    return Status::ok();
  }

  Result<std::size_t> reap(std::span<IoCompletion> out, std::size_t min_complete,
                           std::chrono::milliseconds timeout) override {
    std::size_t got = drain(out);
    if (got >= min_complete || got == out.size() || take_wake()) return got;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (got < min_complete) {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      __kernel_timespec ts{};
      ts.tv_sec = left.count() / 1000000000;
      ts.tv_nsec = left.count() % 1000000000;
      io_uring_cqe* cqe = nullptr;
      int ret = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      if (ret == -ETIME) break;
      if (ret == -EINTR) continue;
      if (ret < 0) return ring_error(ret, "io_uring_wait_cqe_timeout");
      got += drain(out.subspan(got));
      if (take_wake()) break;
    }
    return got;
  }

  void wake() override {
    if (!wake_fd_.valid()) return;
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_.get(), &one, sizeof(one));
  }

  std::size_t in_flight() const override { return in_flight_; }
  std::uint32_t queue_depth() const override { return queue_depth_; }

  // One cancel per file, matching every request on it: the wake poll, on
  // another descriptor, stays armed. The cancels' own completions are
  // consumed in drain().
  void cancel_all() override {
    const auto& fds = files_.fds();
    for (std::size_t i = 0; i < fds.size(); ++i) {
      auto sqe = next_sqe();
      if (!sqe.is_ok()) return;
      unsigned flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
      int fd = fds[i];
      if (files_registered_) {
        flags |= IORING_ASYNC_CANCEL_FD_FIXED;
        fd = static_cast<int>(i);
      }
      io_uring_prep_cancel_fd(*sqe, fd, flags);
      io_uring_sqe_set_data64(*sqe, kCancelTag);
    }
    (void)io_uring_submit(&ring_);
  }

 private:
  explicit UringEngine(const IoEngineOptions& options)
      : queue_depth_(options.queue_depth), single_submit_(options.single_submit) {}

  // A free submission entry. The queue's slots count requests, not entries:
  // the wake poll takes an entry too, and under SQPOLL the kernel thread
  // releases entries on its own schedule (a request can even complete before
  // the entry it came from is released), so a full submission queue is
  // flushed and, under SQPOLL, waited on until the kernel thread frees one.
  // The kernel's SQ wait can return before the thread has released an entry
  // (seen on 6.18: a wait that returns 0 with the ring still full), so it is
  // retried for up to a second.
  Result<io_uring_sqe*> next_sqe() {
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    do {
      int ret = io_uring_submit(&ring_);
      if (ret < 0) return ring_error(ret, "io_uring_submit");
      ret = io_uring_sqring_wait(&ring_);
      if (ret < 0) return ring_error(ret, "io_uring_sqring_wait");
      if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
    } while (std::chrono::steady_clock::now() < deadline);
    return Status::internal(
        "io_uring: no submission entry free for a second after flushing the queue");
  }

  void prepare(io_uring_sqe* sqe, const IoRequest& r) {
    const int fd = files_registered_ ? r.file : files_.fd(r.file);
    const int fixed = fixed_index(r);
    if (fixed >= 0) {
      if (r.op == IoOp::kRead) {
        io_uring_prep_read_fixed(sqe, fd, r.buffer, r.length, r.offset, fixed);
      } else {
        io_uring_prep_write_fixed(sqe, fd, r.buffer, r.length, r.offset, fixed);
      }
    } else if (r.op == IoOp::kRead) {
      io_uring_prep_read(sqe, fd, r.buffer, r.length, r.offset);
    } else {
      io_uring_prep_write(sqe, fd, r.buffer, r.length, r.offset);
    }
    if (files_registered_) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, r.user_data);
  }

  // The registered region holding the request's whole buffer, or -1.
  int fixed_index(const IoRequest& r) const {
    const auto* begin = static_cast<const std::byte*>(r.buffer);
    for (std::size_t i = 0; i < regions_.size(); ++i) {
      const auto& region = regions_[i];
      if (begin >= region.data() && begin + r.length <= region.data() + region.size()) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Moves completions to `out`; the wake poll's completion is consumed here
  // and never counts as a request.
  std::size_t drain(std::span<IoCompletion> out) {
    if (out.empty()) return 0;
    io_uring_cqe* cqes[64];
    const unsigned want = static_cast<unsigned>(std::min<std::size_t>(out.size(), 64));
    const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, want);
    std::size_t got = 0;
    for (unsigned i = 0; i < n; ++i) {
      const std::uint64_t data = io_uring_cqe_get_data64(cqes[i]);
      if (data == kWakeTag) {
        woken_ = true;
        continue;
      }
      if (data == kCancelTag) continue;
      out[got++] = {data, static_cast<std::int64_t>(cqes[i]->res)};
    }
    io_uring_cq_advance(&ring_, n);
    in_flight_ -= got;
    return got;
  }

  // wake() writes an eventfd that a poll in the ring watches, so a thread
  // blocked in io_uring_wait_cqe_timeout returns. Without an eventfd the
  // engine simply cannot be woken (reap returns at the next completion).
  void arm_wake() {
    if (!wake_fd_.valid()) {
      wake_fd_ = FileDescriptor(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!wake_fd_.valid()) return;
    }
    auto sqe = next_sqe();
    if (!sqe.is_ok()) return;
    io_uring_prep_poll_add(*sqe, wake_fd_.get(), POLLIN);
    io_uring_sqe_set_data64(*sqe, kWakeTag);
    (void)io_uring_submit(&ring_);
  }

  // True once per wake: clears the eventfd and re-arms the poll.
  bool take_wake() {
    if (!woken_) return false;
    woken_ = false;
    std::uint64_t count = 0;
    (void)!::read(wake_fd_.get(), &count, sizeof(count));
    arm_wake();
    return true;
  }

  static constexpr std::uint64_t kWakeTag = ~std::uint64_t{0};
  static constexpr std::uint64_t kCancelTag = kWakeTag - 1;

  const std::uint32_t queue_depth_;
  const bool single_submit_;
  io_uring ring_{};
  bool ready_ = false;
  FileTable files_;
  bool files_registered_ = false;
  static constexpr std::size_t kMaxFixedBuffer = std::size_t{1} << 30;  // the kernel's limit
  std::vector<std::span<std::byte>> regions_;
  std::size_t in_flight_ = 0;
  FileDescriptor wake_fd_;
  bool woken_ = false;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_uring_engine(const IoEngineOptions& options) {
  if (options.queue_depth == 0) return Status::invalid_argument("queue depth must be >= 1");
  auto engine = UringEngine::create(options);
  if (!engine.is_ok()) return Status::unavailable("io_uring: " + engine.status().message());
  return engine;
}

}  // namespace zinf::swap

#else  // !ZINF_HAVE_LIBURING

namespace zinf::swap {
Result<std::unique_ptr<IoEngine>> make_uring_engine(const IoEngineOptions&) {
  return Status::unavailable("io_uring: built without liburing (install liburing-dev and rebuild)");
}
}  // namespace zinf::swap

#endif
