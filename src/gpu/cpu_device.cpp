// The host-emulated device. Memory is host memory counted against the
// budget; the compute stream is the calling thread (LibTorch's CPU kernels
// run there, so everything before a call has happened when it returns);
// every other stream is a thread that runs its queue of copies, event
// records and waits in order, so copies overlap compute as DMA engines do.
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>

#include "gpu/devices.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/common/worker.hpp"

namespace zinf::gpu {
namespace {

class HostEvent final : public Event {
 public:
  explicit HostEvent(bool done = false) : done_(done) {}
  bool ready() const override {
    std::lock_guard lock(mutex_);
    return done_;
  }
  Status synchronize() override {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return done_; });
    return Status::ok();
  }
  void complete() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool done_;
};

Status null_event(const std::string& stream) {
  return Status::invalid_argument("stream " + stream + ": wait on a null event");
}

Interval timed_copy(void* dst, const void* src, std::size_t bytes) {
  const auto t0 = SteadyClock::now();
  std::memcpy(dst, src, bytes);
  return {t0, SteadyClock::now()};
}

// begin_span()/end_span() on the host clock, called where the stream's work
// runs (the calling thread, or a ThreadStream's own).
class HostSpans {
 public:
  void begin(std::string what, std::string op) {
    open_ = Span{{SteadyClock::now(), {}}, 0, std::move(what), std::move(op)};
  }
  void end(SpanLog& log) {
    if (!open_) return;
    open_->when.end = SteadyClock::now();
    log.add(std::move(*open_));
    open_.reset();
  }

 private:
  std::optional<Span> open_;
};

// The compute stream: work runs on the calling thread as it is enqueued.
class InlineStream final : public Stream {
 public:
  const std::string& name() const override { return name_; }
  Status copy_to_device(void* dst, const void* src, std::size_t bytes,
                        std::string_view what) override {
    copy(dst, src, bytes, what);
    return Status::ok();
  }
  Status copy_to_host(void* dst, const void* src, std::size_t bytes,
                      std::string_view what) override {
    copy(dst, src, bytes, what);
    return Status::ok();
  }
  Status copy_within_device(void* dst, const void* src, std::size_t bytes,
                            std::string_view what) override {
    copy(dst, src, bytes, what);
    return Status::ok();
  }
  Result<EventPtr> record() override { return EventPtr(std::make_shared<HostEvent>(true)); }
  Status wait(const EventPtr& event) override {
    return event ? event->synchronize() : null_event(name_);
  }
  Status synchronize() override { return Status::ok(); }
  std::vector<Interval> take_busy() override { return busy_.take(); }
  void begin_span(std::string what, std::string op) override {
    if (spans_.on()) open_.begin(std::move(what), std::move(op));
  }
  void end_span() override { open_.end(spans_); }

 private:
  void copy(void* dst, const void* src, std::size_t bytes, std::string_view what) {
    const Interval when = timed_copy(dst, src, bytes);
    busy_.add(when);
    if (spans_.on()) spans_.add({when, bytes, std::string(what)});
  }
  const std::string name_ = "compute";
  BusyLog busy_;
  HostSpans open_;
};

// A copy engine: one thread running its queue in order.
class ThreadStream final : public Stream {
 public:
  explicit ThreadStream(std::string name) : name_(std::move(name)) {}

  const std::string& name() const override { return name_; }
  Status copy_to_device(void* dst, const void* src, std::size_t bytes,
                        std::string_view what) override {
    return copy(dst, src, bytes, what);
  }
  Status copy_to_host(void* dst, const void* src, std::size_t bytes,
                      std::string_view what) override {
    return copy(dst, src, bytes, what);
  }
  Status copy_within_device(void* dst, const void* src, std::size_t bytes,
                            std::string_view what) override {
    return copy(dst, src, bytes, what);
  }
  Result<EventPtr> record() override {
    auto event = std::make_shared<HostEvent>();
    enqueue([event] { event->complete(); });
    return EventPtr(event);
  }
  Status wait(const EventPtr& event) override {
    if (!event) return null_event(name_);
    enqueue([event] { (void)event->synchronize(); });
    return Status::ok();
  }
  Status synchronize() override {
    auto event = record();
    return event.is_ok() ? (*event)->synchronize() : event.status();
  }
  std::vector<Interval> take_busy() override { return busy_.take(); }
  void begin_span(std::string what, std::string op) override {
    if (!spans_.on()) return;
    enqueue([this, what = std::move(what), op = std::move(op)] { open_.begin(what, op); });
  }
  void end_span() override {
    if (spans_.on()) enqueue([this] { open_.end(spans_); });
  }

 private:
  Status copy(void* dst, const void* src, std::size_t bytes, std::string_view what) {
    if (bytes > 0 && (dst == nullptr || src == nullptr))
      return Status::invalid_argument("stream " + name_ + ": copy with a null buffer");
    std::string label = spans_.on() ? std::string(what) : std::string();
    enqueue([this, dst, src, bytes, label = std::move(label)] {
      const Interval when = timed_copy(dst, src, bytes);
      busy_.add(when);
      if (spans_.on()) spans_.add({when, bytes, label});
    });
    return Status::ok();
  }

  template <typename Fn>
  void enqueue(Fn&& task) {
    (void)worker_.submit([task = std::forward<Fn>(task)] {
      task();
      return Status::ok();
    });
  }

  const std::string name_;
  BusyLog busy_;
  HostSpans open_;  // on the worker
  Worker worker_;   // last: joined first, while the rest is alive
};

// Bytes this process has locked already (VmLck), 0 if unknown.
std::uint64_t locked_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmLck:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) << 10;
  }
  return 0;
}

class CpuDevice final : public AccountedDevice {
 public:
  explicit CpuDevice(std::uint64_t budget)
      : AccountedDevice("cpu (host-emulated)", budget == 0 ? UINT64_MAX : budget),
        budget_(budget == 0 ? UINT64_MAX : budget) {}

  DeviceType type() const override { return DeviceType::kCpu; }
  int index() const override { return 0; }
  std::string describe() const override {
    return "cpu (host-emulated, budget " +
           (budget_ == UINT64_MAX ? std::string("unlimited") : format_bytes(budget_)) + ")";
  }

  Result<void*> allocate(std::size_t bytes, std::string_view what) override {
    const std::size_t size = allocation_bytes(DeviceType::kCpu, bytes);
    ZINF_RETURN_IF_ERROR(account_.reserve(size, what));
    void* p = std::aligned_alloc(allocation_bytes(DeviceType::kCpu, 1), size);  // its granularity
    if (p == nullptr) {
      account_.release(size);
      return Status::resource_exhausted("device cpu: host memory exhausted allocating " +
                                        format_bytes(size) + " for " + std::string(what));
    }
    return p;
  }

  void deallocate(void* ptr, std::size_t bytes, EventPtr after) override {
    if (ptr == nullptr) return;
    if (after) (void)after->synchronize();
    std::free(ptr);
    account_.release(allocation_bytes(DeviceType::kCpu, bytes));
  }

  Stream& compute_stream() override { return compute_; }
  Result<std::unique_ptr<Stream>> create_stream(std::string name) override {
    return std::unique_ptr<Stream>(std::make_unique<ThreadStream>(std::move(name)));
  }

  Status pin(void* host, std::size_t bytes) override {
    rlimit limit{};
    if (::getrlimit(RLIMIT_MEMLOCK, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        ::geteuid() != 0) {
      const std::uint64_t locked = locked_bytes();
      if (locked + bytes > limit.rlim_cur) {
        return Status::resource_exhausted(
            "locking " + format_bytes(bytes) + " would pass RLIMIT_MEMLOCK (" +
            format_bytes(limit.rlim_cur) + ", " + format_bytes(locked) +
            " locked already); raise it with `ulimit -l unlimited` or a memlock line in "
            "/etc/security/limits.conf");
      }
    }
    if (::mlock(host, bytes) != 0) {
      return Status::from_errno(errno, "mlock of " + format_bytes(bytes) +
                                           " (RLIMIT_MEMLOCK: raise it with `ulimit -l "
                                           "unlimited`)");
    }
    return Status::ok();
  }
  void unpin(void* host, std::size_t bytes) override { ::munlock(host, bytes); }

 private:
  const std::uint64_t budget_;
  InlineStream compute_;
};

}  // namespace

Result<std::unique_ptr<Device>> make_cpu_device(const DeviceOptions& options) {
  return std::unique_ptr<Device>(std::make_unique<CpuDevice>(options.budget));
}

}  // namespace zinf::gpu
