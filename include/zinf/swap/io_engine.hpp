// The NVMe I/O stack, bottom half: raw engines and the error policy.
//
//   IoEngine   a raw backend (io_uring, libaio, pread/pwrite pool, or the
//              fault-injecting decorator). It reports what the kernel said:
//              bytes transferred (possibly short) or -errno. No policy.
//   IoQueue    wraps one IoEngine and applies the written error policy, the
//              only place raw results become Status:
//                EINTR, EAGAIN      resubmitted (bounded: kMaxRetries per request)
//                short read/write   continued from where it stopped
//                read of 0 bytes    unexpected EOF -> kOutOfRange
//                ENOSPC/EDQUOT      kNoSpace;  EIO and the rest -> kIoError
//                no completion within completion_timeout -> the engine is asked
//                  to cancel what it has in flight (cancel_all) and given one
//                  more completion_timeout: a request that comes back then
//                  (cancelled or done) is finished as usual, a cancelled one
//                  as kIoError ("timed out ... cancelled"). A request still
//                  missing after that is lost: it is reported failed with
//                  IoResult::lost set, keeps its slot (the kernel may still
//                  use its buffer) until its completion comes, if ever, and
//                  the queue goes on with its other slots; with every slot
//                  lost, the queue refuses further work.
//              Every error names the path, offset, length and errno.
//
// Threading: an IoEngine and an IoQueue are each used by one thread at a time
// (a ring is not thread safe); SwapStore passes each of its lanes between the
// threads that drive it under its own lock.
// Buffers: address, file offset and length are multiples of kIoAlignment for
// files opened with O_DIRECT; the buffer must stay valid until its completion
// has been reaped.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"

namespace zinf::swap {

enum class IoOp : std::uint8_t { kRead, kWrite };

struct IoRequest {
  IoOp op = IoOp::kRead;
  int file = -1;             // an index returned by add_file()
  std::uint64_t offset = 0;  // bytes from the start of the file
  void* buffer = nullptr;
  std::uint32_t length = 0;     // bytes
  std::uint64_t user_data = 0;  // returned unchanged in the completion
};

struct IoCompletion {
  std::uint64_t user_data = 0;
  std::int64_t result = 0;  // bytes transferred (may be < length), or -errno
};

struct IoEngineOptions {
  std::uint32_t queue_depth = 32;  // most requests in flight
  bool sqpoll = false;             // io_uring: kernel submission polling thread
  bool single_submit = false;      // submit one request per system call instead of batches
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual std::string_view name() const = 0;

  // Makes an open file known to the engine (io_uring registers it). The engine
  // does not own `fd`; it must stay open until the engine is destroyed.
  // `path` is for messages. Returns the index to put in IoRequest::file.
  virtual Result<int> add_file(int fd, const std::string& path) = 0;
  virtual const std::string& file_path(int file) const = 0;

  // Memory regions the engine may register as fixed buffers (io_uring, at
  // most 1 GiB each). A request whose buffer lies inside one uses the
  // fixed-buffer path; others work as usual. Call before the first submit;
  // regions outlive the engine. An engine without fixed buffers accepts and
  // ignores them; a registration the kernel refuses (RLIMIT_MEMLOCK) is an
  // error, after which the engine still works with plain buffers.
  virtual Status register_buffers(std::span<const std::span<std::byte>> regions) {
    (void)regions;
    return Status::ok();
  }
  // Whether requests in registered regions take the fixed-buffer path.
  virtual bool fixed_buffers() const { return false; }

  // Queues the requests and submits them. At most queue_depth() requests are
  // in flight; submit() never blocks for completions: callers check
  // free_slots() first, and more than that is kResourceExhausted.
  virtual Status submit(std::span<const IoRequest> requests) = 0;

  // Waits until at least `min_complete` completions are available (or the
  // timeout passes), then returns up to out.size() of them. Returns how many
  // were written; fewer than min_complete means the timeout passed.
  virtual Result<std::size_t> reap(std::span<IoCompletion> out, std::size_t min_complete,
                                   std::chrono::milliseconds timeout) = 0;

  virtual std::size_t in_flight() const = 0;
  virtual std::uint32_t queue_depth() const = 0;
  std::size_t free_slots() const { return queue_depth() - in_flight(); }

  // Makes a reap() blocked in another thread return now, with whatever it
  // has (possibly nothing), so its caller can submit new work. Thread safe.
  // Engines that cannot be interrupted (libaio) do nothing: their reap()
  // returns at the next completion.
  virtual void wake() {}

  // Asks the kernel to cancel every request in flight. Each still completes
  // through reap(), as -ECANCELED or with what it transferred before the
  // cancel took; a request the device already holds may complete much later
  // or never. Engines that cannot cancel (libaio on files, psync) do nothing.
  virtual void cancel_all() {}
};

// Whether a backend can run here (a probe ring, the libaio syscalls); the
// status says why not.
Status probe_backend(IoBackend backend);

// The engine for `backend`. kAuto tries io_uring, libaio, psync in that order
// and logs the one chosen and why each earlier one was not. A forced backend
// that cannot run here is an error naming it and the reason.
Result<std::unique_ptr<IoEngine>> make_io_engine(IoBackend backend, const IoEngineOptions& options);

// Fault injection (RocksDB's FaultInjectionTestFS, for I/O): a decorator that
// passes requests to `inner` and corrupts the outcome of chosen ones.
enum class FaultKind : std::uint8_t {
  kEio,     // the request fails with -EIO
  kEnospc,  // the request fails with -ENOSPC (writes; reads get -EIO)
  kShort,   // the request transfers only part of its length (a multiple of 512, >= 1 block)
  kEintr,   // fails with -EINTR (the policy resubmits)
  kEagain,  // fails with -EAGAIN (the policy resubmits)
  kDelay,   // completes late by delay, cancelled or not (a request the device holds)
  kDrop,    // the completion never arrives, unless cancel_all() brings it back as -ECANCELED
  kFlip,    // a read succeeds with one bit of what it transferred flipped (writes pass)
};

struct FaultSpec {
  FaultKind kind = FaultKind::kEio;
  double rate = 0.0;      // probability per request, seeded
  std::uint64_t nth = 0;  // fault exactly the nth request (1-based) seen; 0: use rate
  std::uint64_t seed = 1;
  std::optional<IoOp> only;  // fault only reads or only writes
  std::chrono::microseconds delay{1000};
  std::uint64_t max_faults = UINT64_MAX;  // stop injecting after this many
};

std::unique_ptr<IoEngine> make_fault_injecting_engine(std::unique_ptr<IoEngine> inner,
                                                      FaultSpec spec);

struct IoQueueOptions {
  std::chrono::milliseconds completion_timeout{60000};
};

// A request that IoQueue tracks until it is fully done or failed.
struct IoResult {
  std::uint64_t user_data = 0;
  Status status;  // ok: every byte of the request was transferred
  // The request is lost: it has failed (status says so), but the kernel may
  // still read or write its buffer, and the request keeps its slot. If its
  // completion comes at last, a second result for the same user_data, with
  // `lost` false, says the buffer is free again.
  bool lost = false;
};

class IoQueue {
 public:
  IoQueue(std::unique_ptr<IoEngine> engine, IoQueueOptions options = {});
  ~IoQueue();
  IoQueue(const IoQueue&) = delete;
  IoQueue& operator=(const IoQueue&) = delete;

  IoEngine& engine() { return *engine_; }

  // Submits what fits now (each request needs one slot while in flight).
  // Returns the number of requests accepted (a prefix of `requests`).
  Result<std::size_t> submit(std::span<const IoRequest> requests);

  // Drives the engine (reaping, resubmitting retries and short-transfer
  // remainders) until at least min_done requests are finished, then returns
  // up to out.size() finished ones. Returns early, with fewer (even none),
  // when wake() is called from another thread.
  Result<std::size_t> wait(std::span<IoResult> out, std::size_t min_done);

  // Thread safe: interrupts a wait() blocked in another thread.
  void wake() { engine_->wake(); }

  // Ok, or why the queue refuses further work.
  const Status& status() const;

  std::size_t pending() const;  // accepted and not yet returned by wait()
  std::size_t free_slots() const;

  static constexpr int kMaxRetries = 16;

 private:
  struct State;
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<State> state_;
};

}  // namespace zinf::swap
