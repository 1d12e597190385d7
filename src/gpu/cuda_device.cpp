// The CUDA device: the runtime API only (no kernels of its own), so the
// layer builds with the toolkit alone and runs where a GPU is visible.
//
// Memory comes from cudaMalloc and is cached by size: the engine gathers the
// same units step after step, so a freed block is usually asked for again,
// and cudaFree would synchronize the whole device. A block is reused only
// once the event given to deallocate() has completed. Cached blocks count
// against the budget; when a request would pass it, idle cached blocks are
// freed first.
//
// Compute is LibTorch's, on the legacy default stream. Copy streams are
// non-blocking streams; each copy is bracketed by timing events, resolved
// into host-clock intervals (and spans) by take_busy() and take_spans().
#include <cuda_runtime_api.h>

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "gpu/devices.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::gpu {
namespace {

Status cuda_error(cudaError_t e, std::string_view what) {
  return Status(StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorName(e) + " (" +
                                           cudaGetErrorString(e) + ")");
}

#define ZINF_CUDA_RETURN_IF_ERROR(call, what)                                         \
  do {                                                                                \
    const cudaError_t zinf_cuda_error_ = (call);                                      \
    if (zinf_cuda_error_ != cudaSuccess) return cuda_error(zinf_cuda_error_, (what)); \
  } while (0)

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(cudaEvent_t event) : event_(event) {}
  ~CudaEvent() override { cudaEventDestroy(event_); }
  bool ready() const override { return cudaEventQuery(event_) == cudaSuccess; }
  Status synchronize() override {
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_), "cudaEventSynchronize");
    return Status::ok();
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_;
};

class CudaStream final : public Stream {
 public:
  // Takes ownership of `stream` unless it is cudaStreamLegacy.
  CudaStream(std::string name, int device, cudaStream_t stream)
      : name_(std::move(name)), device_(device), stream_(stream) {}
  ~CudaStream() override {
    for (auto& t : timings_) {
      cudaEventDestroy(t.begin);
      cudaEventDestroy(t.end);
    }
    if (open_) cudaEventDestroy(open_->begin);
    if (base_ != nullptr) cudaEventDestroy(base_);
    if (stream_ != cudaStreamLegacy) cudaStreamDestroy(stream_);
  }

  Status init() {
    cudaSetDevice(device_);
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventCreate(&base_), "cudaEventCreate");
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventRecord(base_, stream_), "cudaEventRecord");
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(base_), "cudaEventSynchronize");
    base_time_ = SteadyClock::now();
    return Status::ok();
  }

  const std::string& name() const override { return name_; }
  Status copy_to_device(void* dst, const void* src, std::size_t bytes,
                        std::string_view what) override {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, what);
  }
  Status copy_to_host(void* dst, const void* src, std::size_t bytes,
                      std::string_view what) override {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, what);
  }
  Status copy_within_device(void* dst, const void* src, std::size_t bytes,
                            std::string_view what) override {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, what);
  }
  Result<EventPtr> record() override {
    cudaSetDevice(device_);
    cudaEvent_t e;
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                              "cudaEventCreate");
    auto event = std::make_shared<CudaEvent>(e);
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventRecord(e, stream_), "cudaEventRecord on " + name_);
    return EventPtr(event);
  }
  Status wait(const EventPtr& event) override {
    const auto* e = dynamic_cast<const CudaEvent*>(event.get());
    if (e == nullptr)
      return Status::invalid_argument("stream " + name_ + ": wait on an event of another device");
    ZINF_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, e->get(), 0), "cudaStreamWaitEvent");
    return Status::ok();
  }
  Status synchronize() override {
    ZINF_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "cudaStreamSynchronize " + name_);
    return Status::ok();
  }
  std::vector<Interval> take_busy() override {
    std::lock_guard lock(mutex_);
    resolve();
    return std::exchange(busy_, {});
  }
  std::vector<Span> take_spans() override {
    {
      std::lock_guard lock(mutex_);
      resolve();
    }
    return spans_.take();
  }
  // Timing events around the kernels enqueued in between; a failed event
  // call only loses the span (it is a diagnostic), with a warning.
  void begin_span(std::string what, std::string op) override {
    if (!spans_.on()) return;
    cudaSetDevice(device_);
    if (open_) cudaEventDestroy(open_->begin);
    open_.reset();
    Timing t{};
    if (!span_event(t.begin)) return;
    t.what = std::move(what);
    t.op = std::move(op);
    t.copy = false;
    open_ = std::move(t);
  }
  void end_span() override {
    if (!open_) return;
    cudaSetDevice(device_);
    Timing t = std::move(*open_);
    open_.reset();
    if (!span_event(t.end)) {
      cudaEventDestroy(t.begin);
      return;
    }
    std::lock_guard lock(mutex_);
    timings_.push_back(std::move(t));
  }

 private:
  struct Timing {
    cudaEvent_t begin;
    cudaEvent_t end;
    std::uint64_t bytes = 0;
    std::string what;  // spans on
    std::string op;    // a span's (empty: a copy)
    bool copy = true;  // a copy (busy time), or only a span
  };

  // Creates `event` and records it on the stream now.
  bool span_event(cudaEvent_t& event) {
    cudaError_t e = cudaEventCreate(&event);
    if (e == cudaSuccess) {
      e = cudaEventRecord(event, stream_);
      if (e != cudaSuccess) cudaEventDestroy(event);
    }
    if (e != cudaSuccess)
      ZINF_LOG(kWarn) << "stream " << name_
                      << ": a span is lost: " << cuda_error(e, "cudaEvent").message();
    return e == cudaSuccess;
  }

  // The copies that completed, in order, into busy_ (and spans_), on the
  // host clock. mutex_ held.
  void resolve() {
    while (!timings_.empty() && cudaEventQuery(timings_.front().end) == cudaSuccess) {
      float begin_ms = 0, end_ms = 0;
      Timing t = std::move(timings_.front());
      timings_.pop_front();
      if (cudaEventElapsedTime(&begin_ms, base_, t.begin) == cudaSuccess &&
          cudaEventElapsedTime(&end_ms, base_, t.end) == cudaSuccess) {
        auto at = [&](float ms) {
          return base_time_ + std::chrono::duration_cast<SteadyClock::duration>(
                                  std::chrono::duration<double, std::milli>(ms));
        };
        const Interval when{at(begin_ms), at(end_ms)};
        if (t.copy) busy_.push_back(when);
        if (spans_.on()) spans_.add({when, t.bytes, std::move(t.what), std::move(t.op)});
      }
      cudaEventDestroy(t.begin);
      cudaEventDestroy(t.end);
    }
  }

  Status copy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
              std::string_view what) {
    cudaSetDevice(device_);
    Timing t{};
    ZINF_CUDA_RETURN_IF_ERROR(cudaEventCreate(&t.begin), "cudaEventCreate");
    if (const cudaError_t e = cudaEventCreate(&t.end); e != cudaSuccess) {
      cudaEventDestroy(t.begin);
      return cuda_error(e, "cudaEventCreate");
    }
    t.bytes = bytes;
    if (spans_.on()) t.what = std::string(what);
    std::lock_guard lock(mutex_);  // copies come from more than one thread
    cudaEventRecord(t.begin, stream_);
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, stream_);
    cudaEventRecord(t.end, stream_);
    timings_.push_back(std::move(t));
    if (e != cudaSuccess)
      return cuda_error(e, "cudaMemcpyAsync of " + format_bytes(bytes) + " on " + name_);
    return Status::ok();
  }

  const std::string name_;
  const int device_;
  cudaStream_t stream_;
  cudaEvent_t base_ = nullptr;
  SteadyClock::time_point base_time_;
  std::mutex mutex_;
  std::deque<Timing> timings_;
  std::vector<Interval> busy_;  // resolved, not yet taken
  std::optional<Timing> open_;  // begin_span()'s, until end_span()
};

class CudaDevice final : public AccountedDevice {
 public:
  CudaDevice(int index, std::string name, std::uint64_t budget)
      : AccountedDevice("cuda:" + std::to_string(index), budget),
        index_(index),
        name_(std::move(name)),
        compute_("compute", index, cudaStreamLegacy) {}

  ~CudaDevice() override {
    cudaSetDevice(index_);
    for (auto& [size, block] : cache_) {
      if (block.after) (void)block.after->synchronize();
      cudaFree(block.ptr);
    }
  }

  Status init() { return compute_.init(); }

  DeviceType type() const override { return DeviceType::kCuda; }
  int index() const override { return index_; }
  std::string describe() const override {
    return "cuda:" + std::to_string(index_) + " (" + name_ + ", budget " +
           format_bytes(account_.stats().budget) + ")";
  }

  Result<void*> allocate(std::size_t bytes, std::string_view what) override {
    const std::size_t size = allocation_bytes(DeviceType::kCuda, bytes);
    std::lock_guard lock(mutex_);
    cudaSetDevice(index_);
    auto [first, last] = cache_.equal_range(size);
    for (auto it = first; it != last; ++it) {
      if (it->second.after && !it->second.after->ready()) continue;
      void* p = it->second.ptr;
      cache_.erase(it);
      return p;  // still counted in the account
    }
    Status reserved = account_.reserve(size, what);
    if (!reserved.is_ok()) {
      trim_cache();
      reserved = account_.reserve(size, what);
    }
    ZINF_RETURN_IF_ERROR(reserved);
    void* p = nullptr;
    if (const cudaError_t e = cudaMalloc(&p, size); e != cudaSuccess) {
      account_.release(size);
      return cuda_error(e, "cudaMalloc of " + format_bytes(size) + " for " + std::string(what));
    }
    return p;
  }

  void deallocate(void* ptr, std::size_t bytes, EventPtr after) override {
    if (ptr == nullptr) return;
    std::lock_guard lock(mutex_);
    cache_.emplace(allocation_bytes(DeviceType::kCuda, bytes), Cached{ptr, std::move(after)});
  }

  Stream& compute_stream() override { return compute_; }
  Result<std::unique_ptr<Stream>> create_stream(std::string name) override {
    cudaSetDevice(index_);
    cudaStream_t s;
    ZINF_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                              "cudaStreamCreate " + name);
    auto stream = std::make_unique<CudaStream>(std::move(name), index_, s);
    ZINF_RETURN_IF_ERROR(stream->init());
    return std::unique_ptr<Stream>(std::move(stream));
  }

  Status pin(void* host, std::size_t bytes) override {
    ZINF_CUDA_RETURN_IF_ERROR(cudaHostRegister(host, bytes, cudaHostRegisterDefault),
                              "cudaHostRegister of " + format_bytes(bytes));
    return Status::ok();
  }
  void unpin(void* host, std::size_t) override { cudaHostUnregister(host); }

 private:
  struct Cached {
    void* ptr;
    EventPtr after;
  };

  // Frees every cached block whose last use has completed. mutex_ held.
  void trim_cache() {
    for (auto it = cache_.begin(); it != cache_.end();) {
      if (it->second.after && !it->second.after->ready()) {
        ++it;
        continue;
      }
      cudaFree(it->second.ptr);
      account_.release(it->first);
      it = cache_.erase(it);
    }
  }

  const int index_;
  const std::string name_;
  CudaStream compute_;
  std::mutex mutex_;
  std::multimap<std::size_t, Cached> cache_;
};

}  // namespace

Status probe_cuda() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    return Status::unavailable(std::string("no CUDA device: ") + cudaGetErrorString(e));
  }
  if (count == 0) return Status::unavailable("no CUDA device visible");
  return Status::ok();
}

Result<std::unique_ptr<Device>> make_cuda_device(const DeviceOptions& options) {
  int count = 0;
  ZINF_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (options.index < 0 || options.index >= count) {
    return Status::invalid_argument("cuda device " + std::to_string(options.index) + ": only " +
                                    std::to_string(count) + " visible");
  }
  ZINF_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.index), "cudaSetDevice");
  cudaDeviceProp prop{};
  ZINF_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options.index),
                            "cudaGetDeviceProperties");
  std::size_t free = 0, total = 0;
  ZINF_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  const std::uint64_t budget = options.budget == 0 ? free : options.budget;
  auto device = std::make_unique<CudaDevice>(options.index, prop.name, budget);
  ZINF_RETURN_IF_ERROR(device->init());
  ZINF_LOG(kInfo) << "device: " << device->describe() << ", " << format_bytes(free) << " of "
                  << format_bytes(total) << " free";
  return std::unique_ptr<Device>(std::move(device));
}

}  // namespace zinf::gpu
