// The compute device, behind one interface with two implementations:
//
//   cuda  a CUDA GPU (built whenever the CUDA toolkit is found; runs where a
//         GPU is visible). Compute is LibTorch's, on the legacy default
//         stream; copies run on streams of their own.
//   cpu   a host-emulated device: its memory is host memory counted against
//         a hard byte budget, its compute is LibTorch's CPU kernels on the
//         calling thread, and its copy streams are threads of their own, so
//         copies overlap compute for real. It makes "a model larger than
//         device memory trains" checkable on a machine without a GPU.
//
// Memory. allocate() fails, without allocating, when the request would take
// the device past its budget; the error names the budget, what is live and
// the request (and what it was for). charge()/uncharge() count memory that
// someone else allocated on the device (LibTorch's tensors on the emulated
// device) against the same budget.
//
// Streams and events. Work on one stream runs in order; an Event marks a
// point in a stream. Stream::wait(event) makes later work on that stream wait
// for the event; Event::synchronize() makes the calling thread wait. Buffers
// given to a copy must stay valid, and device memory must not be freed,
// until an event recorded after the copy (or the last use) has completed:
// deallocate() takes that event.
//
// Thread safety: Device methods may be called from any thread. A Stream is
// driven by one thread at a time (the engine's), an Event by any.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/common/status.hpp"

namespace zinf::gpu {

enum class DeviceType : std::uint8_t { kCpu, kCuda };
std::string_view to_string(DeviceType type);
// Bytes an allocation of `bytes` takes on a device of `type` (its
// allocator's granularity), as MemoryStats counts them.
std::size_t allocation_bytes(DeviceType type, std::size_t bytes);

struct DeviceOptions {
  // "auto" (cuda where a GPU is visible, else cpu), "cpu" (host-emulated) or "cuda".
  std::string type = "auto";
  int index = 0;  // cuda: which GPU
  // Bytes the device may hold. 0: cpu unlimited; cuda the memory free at
  // creation. On cuda it bounds what the engine allocates through the
  // Device (parameters, buffers); LibTorch's own allocations are outside it.
  std::uint64_t budget = 0;
};

struct MemoryStats {
  std::uint64_t budget = 0;       // UINT64_MAX: unlimited
  std::uint64_t live = 0;         // bytes allocated or charged now
  std::uint64_t peak = 0;         // the most live at once since creation or reset_peak()
  std::uint64_t allocations = 0;  // live allocations and charges
};

class Event {
 public:
  virtual ~Event() = default;
  virtual bool ready() const = 0;
  virtual Status synchronize() = 0;  // the calling thread waits
};
using EventPtr = std::shared_ptr<Event>;

class Stream {
 public:
  virtual ~Stream() = default;
  virtual const std::string& name() const = 0;
  // Asynchronous copies, in stream order. For truly asynchronous CUDA copies
  // the host side must be pinned (Device::pin). `what` names what is copied
  // (a unit, a parameter) in the copy's span when spans are recorded; it
  // need not outlive the call.
  virtual Status copy_to_device(void* device_dst, const void* host_src, std::size_t bytes,
                                std::string_view what) = 0;
  virtual Status copy_to_host(void* host_dst, const void* device_src, std::size_t bytes,
                              std::string_view what) = 0;
  virtual Status copy_within_device(void* device_dst, const void* device_src, std::size_t bytes,
                                    std::string_view what) = 0;
  // An event that completes when everything enqueued so far has.
  virtual Result<EventPtr> record() = 0;
  // Work enqueued after this waits for `event` (from any stream).
  virtual Status wait(const EventPtr& event) = 0;
  virtual Status synchronize() = 0;
  // When this stream's copies ran since the last call (busy periods).
  virtual std::vector<Interval> take_busy() = 0;
  // Each copy as a span of its own (off until turned on; a trace turns it on):
  // those that completed since the last call, in stream order.
  void record_spans(bool on) { spans_.set_on(on); }
  virtual std::vector<Span> take_spans() { return spans_.take(); }
  // While spans are on: the work enqueued from begin_span() to end_span()
  // (a unit's kernels on the compute stream) as one span among
  // take_spans()', timed as the stream runs it (CUDA: by events on the
  // stream; the emulated device: when its thread gets there). Spans do not
  // nest: begin_span() drops one left open. Not thread safe: one thread
  // brackets a stream's spans. Off, they cost nothing.
  virtual void begin_span(std::string what, std::string op) = 0;
  virtual void end_span() = 0;

 protected:
  SpanLog spans_;
};

class Device {
 public:
  // The device `options` asks for; "auto" logs which one it chose and why.
  static Result<std::unique_ptr<Device>> create(const DeviceOptions& options);
  // Whether this build has CUDA and a GPU is visible (and, if not, why).
  static Status cuda_available();

  virtual ~Device() = default;
  virtual DeviceType type() const = 0;
  virtual int index() const = 0;
  virtual std::string describe() const = 0;  // "cpu (host-emulated, budget 64.0 MiB)"

  // Memory, aligned to 256 bytes. `what` is for the error message.
  virtual Result<void*> allocate(std::size_t bytes, std::string_view what) = 0;
  // Frees `ptr` once `after` has completed (null: no work uses it any more).
  virtual void deallocate(void* ptr, std::size_t bytes, EventPtr after = nullptr) = 0;
  virtual Status charge(std::size_t bytes, std::string_view what) = 0;
  virtual void uncharge(std::size_t bytes) = 0;
  virtual MemoryStats memory() const = 0;
  virtual void reset_peak() = 0;

  // The stream LibTorch computes on: the calling thread on cpu, the legacy
  // default stream on cuda. Waiting on it for an event blocks the calling
  // thread on cpu and is enqueued on cuda.
  virtual Stream& compute_stream() = 0;
  virtual Result<std::unique_ptr<Stream>> create_stream(std::string name) = 0;

  // Page-locks host memory for DMA: cudaHostRegister on cuda, mlock on cpu
  // (subject to RLIMIT_MEMLOCK; the error gives the limit and the fix).
  virtual Status pin(void* host, std::size_t bytes) = 0;
  virtual void unpin(void* host, std::size_t bytes) = 0;
};

}  // namespace zinf::gpu
