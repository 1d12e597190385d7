// The libaio engine (Linux native AIO, what DeepSpeed uses): one io context,
// iocbs preallocated per queue slot, batched io_submit.
#include "swap/engines.hpp"

#ifdef ZINF_HAVE_LIBAIO

#include <libaio.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <deque>
#include <vector>

namespace zinf::swap {
namespace {

class AioEngine final : public IoEngine {
 public:
  static Result<std::unique_ptr<IoEngine>> create(const IoEngineOptions& options) {
    auto engine = std::unique_ptr<AioEngine>(new AioEngine(options));
    const int ret = io_setup(static_cast<int>(options.queue_depth), &engine->ctx_);
    if (ret < 0) return Status::from_errno(-ret, "io_setup");
    engine->ready_ = true;
    return std::unique_ptr<IoEngine>(std::move(engine));
  }

  ~AioEngine() override {
    if (ready_) io_destroy(ctx_);
  }

  std::string_view name() const override { return "libaio"; }
  Result<int> add_file(int fd, const std::string& path) override { return files_.add(fd, path); }
  const std::string& file_path(int file) const override { return files_.path(file); }

  Status submit(std::span<const IoRequest> requests) override {
    if (requests.size() > free_slots()) {
      return Status::resource_exhausted("libaio: " + std::to_string(requests.size()) +
                                        " requests exceed the free queue slots");
    }
    batch_.clear();
    for (const IoRequest& r : requests) {
      if (!files_.valid(r.file)) return Status::invalid_argument("libaio: unknown file index");
      const std::size_t slot = free_.back();
      free_.pop_back();
      iocb& cb = iocbs_[slot];
      if (r.op == IoOp::kRead) {
        io_prep_pread(&cb, files_.fd(r.file), r.buffer, r.length, static_cast<long long>(r.offset));
      } else {
        io_prep_pwrite(&cb, files_.fd(r.file), r.buffer, r.length,
                       static_cast<long long>(r.offset));
      }
      cb.data = reinterpret_cast<void*>(slot);
      user_data_[slot] = r.user_data;
      batch_.push_back(&cb);
      ++in_flight_;
    }
    const std::size_t step = single_submit_ ? 1 : batch_.size();
    for (std::size_t done = 0; done < batch_.size();) {
      const long n = std::min(step, batch_.size() - done);
      const int ret = io_submit(ctx_, n, batch_.data() + done);
      if (ret > 0) {
        done += static_cast<std::size_t>(ret);
        continue;
      }
      // The kernel took none of the rest: each becomes a completion carrying
      // the error, so the policy above decides (EAGAIN is resubmitted).
      const int err = ret == 0 ? EAGAIN : -ret;
      for (; done < batch_.size(); ++done) {
        const auto slot = reinterpret_cast<std::size_t>(batch_[done]->data);
        failed_.push_back({user_data_[slot], -static_cast<std::int64_t>(err)});
        free_.push_back(slot);
      }
    }
    return Status::ok();
  }

  Result<std::size_t> reap(std::span<IoCompletion> out, std::size_t min_complete,
                           std::chrono::milliseconds timeout) override {
    std::size_t got = 0;
    while (!failed_.empty() && got < out.size()) {
      out[got++] = failed_.front();
      failed_.pop_front();
      --in_flight_;
    }
    const std::size_t kernel_in_flight = in_flight_ - failed_.size();
    const std::size_t room = std::min(out.size() - got, kernel_in_flight);
    if (room == 0) return got;
    const long min_kernel =
        static_cast<long>(std::min(room, min_complete > got ? min_complete - got : 0));
    events_.resize(std::max(events_.size(), room));
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    long n = 0;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
          deadline - std::chrono::steady_clock::now());
      timespec ts{};
      ts.tv_sec = std::max<long>(0, static_cast<long>(left.count() / 1000000000));
      ts.tv_nsec = std::max<long>(0, static_cast<long>(left.count() % 1000000000));
      n = io_getevents(ctx_, min_kernel, static_cast<long>(room), events_.data(), &ts);
      if (n == -EINTR) continue;
      if (n < 0) return Status::from_errno(static_cast<int>(-n), "io_getevents");
      break;
    }
    for (long i = 0; i < n; ++i) {
      const auto slot = reinterpret_cast<std::size_t>(events_[static_cast<std::size_t>(i)].data);
      // res is the byte count or -errno, as an unsigned long: reinterpret it.
      const auto res = static_cast<long>(events_[static_cast<std::size_t>(i)].res);
      out[got++] = {user_data_[slot], static_cast<std::int64_t>(res)};
      free_.push_back(slot);
      --in_flight_;
    }
    return got;
  }

  std::size_t in_flight() const override { return in_flight_; }
  std::uint32_t queue_depth() const override { return queue_depth_; }

 private:
  explicit AioEngine(const IoEngineOptions& options)
      : queue_depth_(options.queue_depth),
        single_submit_(options.single_submit),
        iocbs_(options.queue_depth),
        user_data_(options.queue_depth) {
    free_.reserve(options.queue_depth);
    for (std::size_t i = options.queue_depth; i > 0; --i) free_.push_back(i - 1);
    batch_.reserve(options.queue_depth);
  }

  const std::uint32_t queue_depth_;
  const bool single_submit_;
  io_context_t ctx_ = nullptr;
  bool ready_ = false;
  FileTable files_;
  std::vector<iocb> iocbs_;
  std::vector<std::uint64_t> user_data_;
  std::vector<std::size_t> free_;
  std::vector<iocb*> batch_;
  std::vector<io_event> events_;
  std::deque<IoCompletion> failed_;  // requests io_submit refused, reported as completions
  std::size_t in_flight_ = 0;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_aio_engine(const IoEngineOptions& options) {
  if (options.queue_depth == 0) return Status::invalid_argument("queue depth must be >= 1");
  auto engine = AioEngine::create(options);
  if (!engine.is_ok()) return Status::unavailable("libaio: " + engine.status().message());
  return engine;
}

}  // namespace zinf::swap

#else  // !ZINF_HAVE_LIBAIO

namespace zinf::swap {
Result<std::unique_ptr<IoEngine>> make_aio_engine(const IoEngineOptions&) {
  return Status::unavailable("libaio: built without libaio (install libaio-dev and rebuild)");
}
}  // namespace zinf::swap

#endif
