// SwapStore: asynchronous keyed read and write of extents on NVMe.
//
// One preallocated swap file per path (fallocate, grown in steps), created
// 0600 with O_EXCL inside a fresh private directory `zinf-swap-XXXXXX` under the
// path; the directory and files are removed when the store is destroyed.
// The store holds an flock() on the directory's `lock` file for its life; a
// process that dies (SIGKILL, a crash) leaves its directory behind with that
// lock released, and the next store opened on the path removes such
// directories, with a warning naming each. Nothing else under the path is
// touched: not a directory holding files other than zinf's two, not one
// whose lock is held (a store alive in any process). Extents are allocated from the file
// with reuse of freed space; an extent larger than the stripe unit
// (aio.block_size) is striped round-robin over all paths.
//
// Every extent carries a CRC32C (ISA-L) computed on write and verified on
// read; a mismatch is kDataLoss naming the key, file and offset (switched off
// with `checksum = false`, for benchmarking).
//
// Versioning: a write goes to a fresh extent; the key points at it only once
// every byte is on disk, and the old extent is freed then. A failed write
// leaves the previous value readable. (Whole-step atomicity across several
// keys is the caller's: see OffloadAdamW's A/B slots.)
//
// Progress: write() and read() submit from the calling thread and wait()
// reaps on it, so a request costs no thread hand-off; the part of an operation
// that does not fit the queue depth is submitted by a background worker as
// slots free up. A write's key switches to the new value when the write is
// reaped (at the latest in wait()): wait for it before reading the key.
//
// Lost requests: a request without a completion for completion_timeout is
// cancelled; one still without a completion a timeout later is lost (see
// IoQueue). Its operation fails, but the kernel may still read or write the
// buffer, so the store quarantines it: a read or write on a buffer that
// overlaps it is refused (kFailedPrecondition, naming the lost request),
// a failed write's extents stay allocated, and stats().quarantined_bytes
// counts it, until the kernel returns the request; the store goes on with
// the rest of its queue slots meanwhile. The caller must not reuse or free
// a buffer while holds() says a lost request may still use it (a PinnedPool
// retires such buffers: PinnedPool::retire_while). A store destroyed while
// the kernel has a lost request waits one more completion_timeout for it;
// a buffer still out then is kept from the allocator for the process's life
// if it is an AlignedBuffer (a PinnedPool's included: keep_for_lost_io);
// memory of your own must not be freed while lost_io_holds() says so.
//
// Thread safety: every method may be called from any thread.
// Buffers: data.data() is kIoAlignment-aligned, and the memory from data.data()
// up to align_up(data.size(), kIoAlignment) is readable (write) or writable
// (read: the padding bytes may be overwritten). It must stay valid and
// unchanged until wait() has returned for the ticket.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf::swap {

struct SwapStoreOptions {
  std::vector<std::filesystem::path> paths;  // one swap file each; >1 stripes
  IoBackend backend = IoBackend::kAuto;
  AioConfig aio;  // block_size = request and stripe unit
  bool checksum = true;
  // After verifying a read's checksum, evict the value from the CPU caches
  // (zinf::evict_from_caches). For callers whose reads go on to a device (a
  // GPU copy) or nowhere (swapbench), not to the CPU: the check pulls every
  // line into this core's caches, and the next read into the same buffer
  // then has to take them back (on the developer VM, 3% of 128 KiB read
  // throughput). A caller that reads the value on the CPU next wants it
  // cached: leave this off.
  bool evict_verified_reads = false;
  // Each lane's worker also drives its lane while requests are in flight and
  // no caller does, so completions are reaped as they arrive instead of at
  // the caller's next call: an operation finishes (and its busy time ends)
  // when its I/O does. For callers that start operations well before waiting
  // for them (the engine's parameter read-ahead); it costs a thread hand-off
  // per completion, which small synchronous operations should not pay.
  bool reap_in_background = false;
  bool buffered_io_fallback = false;  // where O_DIRECT is refused: buffered I/O + warning
  bool sqpoll = false;
  std::uint64_t initial_file_size = 0;  // bytes preallocated per path at open
  std::optional<FaultSpec> fault;       // wrap every engine in the fault injector
  std::chrono::milliseconds completion_timeout{60000};

  // From a parsed config: aio block, zinf block, and Config::swap_paths().
  static SwapStoreOptions from_config(const Config& config);
};

struct SwapTicket {
  std::uint64_t id = 0;
};

struct SwapDone {
  std::size_t index = 0;  // into the tickets given to wait_any()
  Status status;
};

struct ExtentLocation {
  std::filesystem::path file;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct SwapStats {
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t read_ops = 0;
  std::uint64_t write_ops = 0;
  std::uint64_t file_bytes = 0;         // allocated in the swap files, all paths
  std::uint64_t live_bytes = 0;         // held by current extents
  std::uint64_t quarantined_bytes = 0;  // caller buffers held by lost requests (see below)
  bool fixed_buffers = false;           // every lane takes registered buffers' fixed-buffer path
};

// One read or write as the store moved it: from its start (read()/write())
// to its completion (its last chunk reaped).
struct SwapTransfer {
  bool read = true;
  std::string key;
  std::uint64_t bytes = 0;
  Interval when;
};

// When one lane (one queue, aio.intra_op_parallelism of them) had chunks
// in flight in the kernel, reads and writes apart.
struct LaneBusy {
  std::vector<Interval> reads;
  std::vector<Interval> writes;
};

// When the store was busy since the last take_busy(): the union of the
// intervals from each operation's start to its completion, reads and writes
// apart; and, while record_transfers() is on, each operation completed and,
// per lane, when its submitted chunks were in flight.
struct SwapBusy {
  std::vector<Interval> reads;
  std::vector<Interval> writes;
  std::vector<SwapTransfer> transfers;
  std::vector<LaneBusy> lanes;  // by lane, while record_transfers() is on
};

class SwapStore {
 public:
  static Result<std::unique_ptr<SwapStore>> open(SwapStoreOptions options);
  virtual ~SwapStore() = default;

  // Starts writing `data` as the new value of `key`.
  virtual Result<SwapTicket> write(std::string_view key, std::span<const std::byte> data) = 0;
  // Starts reading `key` into `out`; out.size() must equal the stored size.
  virtual Result<SwapTicket> read(std::string_view key, std::span<std::byte> out) = 0;
  // Waits for one operation; for a read, verifies the checksum.
  virtual Status wait(SwapTicket ticket) = 0;
  // Waits until any one of `tickets` is done and returns its index with what
  // wait() would have returned for it. That ticket is used up; the others
  // stay valid. An unknown ticket is an error before anything is waited for.
  virtual Result<SwapDone> wait_any(std::span<const SwapTicket> tickets) = 0;

  virtual Status remove(std::string_view key) = 0;
  virtual bool contains(std::string_view key) const = 0;
  virtual Result<std::uint64_t> size_of(std::string_view key) const = 0;
  virtual Result<std::vector<ExtentLocation>> locate(std::string_view key) const = 0;
  virtual std::vector<std::string> keys() const = 0;

  // Memory the caller will pass to read/write (a pinned pool): the engines
  // register it for fixed-buffer I/O where they can (regions of at most
  // 1 GiB). Call before the first read or write; the regions must outlive the
  // store. An error (the kernel refused: RLIMIT_MEMLOCK) leaves the store
  // working with plain buffers; stats().fixed_buffers says which.
  virtual Status register_buffers(std::span<const std::span<std::byte>> regions) = 0;

  // Whether a lost request may still read or write memory overlapping
  // `buffer` (rounded up to kIoAlignment); a late completion is reaped as the
  // store's queues are driven (by later operations), and frees it then.
  virtual bool holds(std::span<const std::byte> buffer) const = 0;

  virtual SwapStats stats() const = 0;
  virtual SwapBusy take_busy() = 0;
  // Keep each operation's SwapTransfer for take_busy() from now on (off by
  // default: a step timeline turns it on).
  virtual void record_transfers(bool on) = 0;
  virtual std::string_view backend_name() const = 0;
  virtual const SwapStoreOptions& options() const = 0;
};

}  // namespace zinf::swap
