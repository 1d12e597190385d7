// SwapStore: keyed extents in one swap file per path, moved through lanes
// (see include/zinf/swap/swap_store.hpp).
//
// Data path. A lane is one IoQueue (one ring) with a backlog of chunks (at
// most aio.block_size bytes each: the stripe unit) and a worker thread. Any
// thread may drive a lane (fill its free slots from the backlog, submit, reap)
// while it holds the lane's `driven` flag, so the common case costs no thread
// hand-off at all, as with fio: write()/read() submit their chunks from the
// caller's thread, and wait() reaps on the caller's thread until its operation
// is done, finishing whatever else completes on the way. The worker drives a
// lane only while its backlog is not empty and nobody else does, which keeps
// operations larger than the queue depth moving while their callers compute.
// Whoever finishes an operation's last chunk completes it: a write then
// switches its key to the new extents (freeing the old ones) or, on error,
// frees the new extents and keeps the old value. CRC32C is computed by the
// caller's thread in write() and verified by the caller's thread in wait(), so
// checksums scale with the number of callers.
#include "zinf/swap/swap_store.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <variant>

#include "swap/crc32c.hpp"
#include "swap/extent_allocator.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::swap {
namespace {

constexpr std::uint64_t kGrowStep = 256ull << 20;

// Where a value lives: `extents[p]` on path `paths[p]`. Stripe unit k of the
// value is on path paths[k % P] at extents[k % P].offset + (k / P) * unit.
struct Layout {
  std::vector<std::uint32_t> paths;
  std::vector<Extent> extents;
  std::uint64_t unit = 0;
};

struct Value {
  Layout layout;
  std::uint64_t size = 0;
  std::uint32_t crc = 0;
};

// One read or write. The fields below `layout` are guarded by the store's
// state_mutex_, except `holds`.
struct Op {
  IoOp kind = IoOp::kRead;
  std::string key;
  std::byte* buffer = nullptr;
  std::uint64_t size = 0;
  std::uint32_t crc = 0;                    // write: of the data; read: expected
  Layout layout;                            // write: the new extents; read: where the value is
  std::vector<std::uint32_t> left_in_lane;  // chunks not yet finished, per lane
  std::size_t chunks_left = 0;
  SteadyClock::time_point started;
  bool done = false;
  Status status;
  // Who must let go before a failed write's extents are freed or a read's
  // unpinned: the operation's end (a write's completion, a read's wait)
  // and each of its lost chunks, while the kernel may still transfer it.
  std::atomic<int> holds{1};
};

struct Chunk {
  std::shared_ptr<Op> op;
  IoRequest request;
  bool lost = false;   // reported lost: the slot stays taken until the kernel returns it
  bool timed = false;  // submitted while transfers were recorded: in its lane's busy log
};

// One IoQueue and the chunks waiting for its slots. `backlog` and `driven`
// are guarded by the store's state_mutex_; the rest belongs to whoever has
// set `driven`.
struct Lane {
  std::size_t index = 0;  // in the store's lanes_, and in Op::left_in_lane
  std::unique_ptr<IoQueue> queue;
  std::deque<Chunk> backlog;
  bool driven = false;
  std::size_t lost = 0;      // slots lost requests hold
  std::vector<Chunk> slots;  // in flight, by IoRequest::user_data
  std::vector<std::size_t> free_slots;
  std::vector<IoRequest> batch;
  std::vector<IoResult> results;
  std::vector<IoResult> finished;              // user_data: the slot
  std::vector<Chunk> rejected;                 // backlog chunks a failed queue will never take
  std::vector<std::shared_ptr<Op>> completed;  // finish_chunks()' scratch, empty between calls
  std::condition_variable worker_cv;           // the backlog has work and nobody drives
  std::thread worker;
  BusyLog busy[2];  // timed chunks in flight: reads, writes
};

struct PathState {
  std::filesystem::path root;  // the user's path
  std::filesystem::path dir;   // our private directory in it
  std::filesystem::path file;
  FileDescriptor owner;  // dir/lock, flock()ed for the store's life
  OpenedFile fd;
  std::unique_ptr<std::mutex> grow_mutex =
      std::make_unique<std::mutex>();  // one fallocate at a time
  ExtentAllocator allocator{kIoAlignment, kGrowStep};
};

// Ownership of a private swap directory ("zinf-swap-XXXXXX"): its file
// "lock" is flock()ed by the store that uses it, and the kernel drops the
// lock when that process ends, however it ends. The lock file is locked
// under another name and renamed in, so a "lock" that can be locked is one
// whose owner is gone.
constexpr std::string_view kDirPrefix = "zinf-swap-";
constexpr std::string_view kLockName = "lock";
constexpr std::string_view kSwapName = "swap";

Result<FileDescriptor> claim(const std::filesystem::path& dir) {
  const auto pending = dir / "lock.pending";
  FileDescriptor fd(::open(pending.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::from_errno(errno, "cannot create " + pending.string());
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0)
    return Status::from_errno(errno, "cannot lock " + pending.string());
  if (::rename(pending.c_str(), (dir / kLockName).c_str()) != 0)
    return Status::from_errno(errno, "cannot rename " + pending.string());
  return fd;
}

// Removes the private directories under `root` whose owners are gone (say
// so), and nothing else: a directory must be named like ours, hold its lock
// file unlocked, and contain only our two files.
void remove_stale(const std::filesystem::path& root) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != kDirPrefix.size() + 6 || name.rfind(kDirPrefix, 0) != 0 ||
        !entry.is_directory(ec) || entry.is_symlink(ec)) {
      continue;
    }
    const auto dir = entry.path();
    FileDescriptor lock(::open((dir / kLockName).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (!lock.valid() || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
      continue;  // alive, or not ours
    std::uint64_t bytes = 0;
    bool ours = true;
    for (const auto& f : std::filesystem::directory_iterator(dir, ec)) {
      const std::string file = f.path().filename().string();
      ours = ours && (file == kLockName || file == kSwapName) && f.is_regular_file(ec) &&
             !f.is_symlink(ec);
      if (file == kSwapName) bytes = f.file_size(ec);
    }
    if (!ours || ec) {
      ZINF_LOG(kWarn)
          << "swap path " << root.string() << ": " << name
          << " looks like a stale zinf swap directory but holds other files; left as is";
      continue;
    }
    std::filesystem::remove(dir / kSwapName, ec);
    std::filesystem::remove(dir / kLockName, ec);
    std::filesystem::remove(dir, ec);
    ZINF_LOG(kWarn) << "swap path " << root.string() << ": removed " << name << " ("
                    << format_bytes(bytes) << "), left by a zinf process that is gone"
                    << (ec ? " (partly: " + ec.message() + ")" : std::string());
  }
}

// Calls fn(path index in layout, file offset, offset in the value, length)
// for each stripe unit of a value of `size` bytes, in order.
template <typename Fn>
void for_each_unit(const Layout& layout, std::uint64_t size, Fn&& fn) {
  const std::uint64_t padded = align_up(size, kIoAlignment);
  const std::uint64_t n = layout.paths.size();
  std::uint64_t k = 0;
  for (std::uint64_t pos = 0; pos < padded; pos += layout.unit, ++k) {
    const std::uint64_t len = std::min(layout.unit, padded - pos);
    const std::size_t p = static_cast<std::size_t>(k % n);
    fn(p, layout.extents[p].offset + (k / n) * layout.unit, pos, len);
  }
}

class SwapStoreImpl final : public SwapStore {
 public:
  explicit SwapStoreImpl(SwapStoreOptions options) : options_(std::move(options)) {}

  // Chunks still in a backlog are dropped; requests in flight are waited for
  // (IoQueue's destructor) before the files close.
  ~SwapStoreImpl() override {
    {
      std::lock_guard lock(state_mutex_);
      stopping_ = true;
    }
    if (const std::uint64_t held = quarantined_bytes_.load(); held > 0) {
      ZINF_LOG(kError) << "swap store: closing while lost requests hold " << format_bytes(held)
                       << " of buffers; waiting up to " << options_.completion_timeout.count()
                       << " ms for the kernel to return them";
    }
    for (auto& lane : lanes_) {
      lane->worker_cv.notify_all();
      if (lane->worker.joinable()) lane->worker.join();
    }
    lanes_.clear();
    for (auto& p : paths_) {
      p.fd.fd.reset();
      std::error_code ec;
      std::filesystem::remove(p.file, ec);
      std::filesystem::remove(p.dir / kLockName, ec);
      std::filesystem::remove(p.dir, ec);
    }
  }

  Status open() {
    if (options_.paths.empty()) return Status::invalid_argument("swap store: no nvme path given");
    if (options_.aio.block_size == 0 || options_.aio.block_size % kIoAlignment != 0 ||
        options_.aio.block_size > (1u << 30)) {
      return Status::invalid_argument(
          "aio.block_size must be a multiple of 4096 up to 1 GiB, got " +
          std::to_string(options_.aio.block_size));
    }
    for (const auto& root : options_.paths) ZINF_RETURN_IF_ERROR(add_path(root));
    const std::uint32_t lanes = std::max<std::uint32_t>(1, options_.aio.intra_op_parallelism);
    for (std::uint32_t l = 0; l < lanes; ++l) {
      IoEngineOptions eo;
      eo.queue_depth = options_.aio.queue_depth;
      eo.sqpoll = options_.sqpoll;
      eo.single_submit = options_.aio.single_submit;
      ZINF_ASSIGN_OR_RETURN(std::unique_ptr<IoEngine> engine, make_io_engine(options_.backend, eo));
      if (options_.fault) engine = make_fault_injecting_engine(std::move(engine), *options_.fault);
      for (const auto& p : paths_)
        ZINF_RETURN_IF_ERROR(engine->add_file(p.fd.fd.get(), p.file.string()).status());
      backend_ = std::string(engine->name());
      auto lane = std::make_unique<Lane>();
      lane->index = l;
      lane->queue =
          std::make_unique<IoQueue>(std::move(engine), IoQueueOptions{options_.completion_timeout});
      const std::size_t depth = lane->queue->free_slots();
      lane->slots.resize(depth);
      for (std::size_t i = depth; i > 0; --i) lane->free_slots.push_back(i - 1);
      lane->results.resize(depth);
      lanes_.push_back(std::move(lane));
    }
    for (auto& lane : lanes_)
      lane->worker = std::thread([this, l = lane.get()] { run_worker(*l); });
    return Status::ok();
  }

  Result<SwapTicket> write(std::string_view key, std::span<const std::byte> data) override {
    ZINF_RETURN_IF_ERROR(check_buffer(key, data.data(), data.size()));
    auto op = std::make_shared<Op>();
    op->kind = IoOp::kWrite;
    op->key = std::string(key);
    op->buffer = const_cast<std::byte*>(data.data());  // only read from: the engines take void*
    op->size = data.size();
    if (options_.checksum) op->crc = crc32c(data);
    // Growing a file (fallocate can take a while) happens outside the lock,
    // so other operations go on meanwhile.
    for (;;) {
      std::unique_lock lock(meta_mutex_);
      auto layout = allocate(data.size());
      if (auto* ready = std::get_if<Layout>(&layout)) {
        op->layout = std::move(*ready);
        break;
      }
      lock.unlock();
      ZINF_RETURN_IF_ERROR(grow(std::get<Growth>(layout)));
    }
    return start(std::move(op));
  }

  Result<SwapTicket> read(std::string_view key, std::span<std::byte> out) override {
    ZINF_RETURN_IF_ERROR(check_buffer(key, out.data(), out.size()));
    auto op = std::make_shared<Op>();
    op->kind = IoOp::kRead;
    op->key = std::string(key);
    op->buffer = out.data();
    op->size = out.size();
    {
      std::lock_guard lock(meta_mutex_);
      auto it = values_.find(key);
      if (it == values_.end()) return Status::not_found("swap store: no key '" + op->key + "'");
      if (it->second.size != out.size()) {
        return Status::invalid_argument(
            "swap store: key '" + op->key + "' holds " + std::to_string(it->second.size) +
            " bytes, the read buffer has " + std::to_string(out.size()));
      }
      op->layout = it->second.layout;
      op->crc = it->second.crc;
      // The extents stay readable until this read is done: pin them.
      for (std::size_t i = 0; i < op->layout.extents.size(); ++i) {
        ++readers_by_extent_[{op->layout.paths[i], op->layout.extents[i].offset}];
      }
    }
    return start(std::move(op));
  }

  Status wait(SwapTicket ticket) override {
    auto done = wait_any({&ticket, 1});
    return done.is_ok() ? done->status : done.status();
  }

  // Drives a lane that holds chunks of the operations and that nobody else
  // drives until one operation is done; while every such lane is driven by
  // another thread, waits for that thread to finish an operation or let go.
  Result<SwapDone> wait_any(std::span<const SwapTicket> tickets) override {
    std::vector<std::shared_ptr<Op>> ops;
    ops.reserve(tickets.size());
    std::unique_lock lock(state_mutex_);
    for (const SwapTicket& t : tickets) {
      auto it = ops_.find(t.id);
      if (it == ops_.end()) {
        return Status::invalid_argument("swap store: unknown ticket " + std::to_string(t.id) +
                                        " (never issued, or already waited for)");
      }
      ops.push_back(it->second);
    }
    if (ops.empty()) return Status::invalid_argument("swap store: wait_any on no tickets");
    for (;;) {
      for (std::size_t i = 0; i < ops.size(); ++i) {
        if (!ops[i]->done) continue;
        if (ops_.erase(tickets[i].id) == 0) {
          return Status::invalid_argument("swap store: ticket " + std::to_string(tickets[i].id) +
                                          " was waited for by another thread");
        }
        lock.unlock();
        return SwapDone{i, finish_wait(*ops[i])};
      }
      auto holds_chunks = [&](const std::unique_ptr<Lane>& lane) {
        return !lane->driven && std::any_of(ops.begin(), ops.end(), [&](const auto& op) {
          return op->left_in_lane[lane->index] > 0;
        });
      };
      auto it = std::find_if(lanes_.begin(), lanes_.end(), holds_chunks);
      Lane* free_lane = it == lanes_.end() ? nullptr : it->get();
      if (free_lane == nullptr) {
        progress_cv_.wait(lock);
        continue;
      }
      free_lane->driven = true;
      lock.unlock();
      drive(*free_lane, /*block=*/true);
      lock.lock();
      let_go(*free_lane);
    }
  }

  Status remove(std::string_view key) override {
    std::lock_guard lock(meta_mutex_);
    auto it = values_.find(key);
    if (it == values_.end())
      return Status::not_found("swap store: no key '" + std::string(key) + "'");
    release(it->second.layout);
    live_bytes_ -= align_up(it->second.size, kIoAlignment);
    values_.erase(it);
    return Status::ok();
  }

  bool contains(std::string_view key) const override {
    std::lock_guard lock(meta_mutex_);
    return values_.find(key) != values_.end();
  }

  Result<std::uint64_t> size_of(std::string_view key) const override {
    std::lock_guard lock(meta_mutex_);
    auto it = values_.find(key);
    if (it == values_.end())
      return Status::not_found("swap store: no key '" + std::string(key) + "'");
    return it->second.size;
  }

  Result<std::vector<ExtentLocation>> locate(std::string_view key) const override {
    std::lock_guard lock(meta_mutex_);
    auto it = values_.find(key);
    if (it == values_.end())
      return Status::not_found("swap store: no key '" + std::string(key) + "'");
    std::vector<ExtentLocation> out;
    const Value& v = it->second;
    for_each_unit(v.layout, v.size,
                  [&](std::size_t p, std::uint64_t offset, std::uint64_t pos, std::uint64_t len) {
                    const std::uint64_t data_len = std::min(len, v.size > pos ? v.size - pos : 0);
                    if (data_len > 0)
                      out.push_back({paths_[v.layout.paths[p]].file, offset, data_len});
                  });
    return out;
  }

  std::vector<std::string> keys() const override {
    std::lock_guard lock(meta_mutex_);
    std::vector<std::string> out;
    for (const auto& [k, v] : values_) out.push_back(k);
    return out;
  }

  Status register_buffers(std::span<const std::span<std::byte>> regions) override {
    Status first;
    for (auto& lane : lanes_) {
      Status s = lane->queue->engine().register_buffers(regions);
      if (first.is_ok() && !s.is_ok()) first = std::move(s);
    }
    return first;
  }

  bool holds(std::span<const std::byte> buffer) const override {
    if (quarantined_bytes_.load() == 0) return false;
    std::lock_guard lock(quarantine_mutex_);
    return lost_overlapping(buffer) != nullptr;
  }

  SwapStats stats() const override {
    std::lock_guard lock(meta_mutex_);
    SwapStats s = stats_;
    for (const auto& p : paths_) s.file_bytes += p.allocator.file_size();
    s.live_bytes = live_bytes_;
    s.quarantined_bytes = quarantined_bytes_.load();
    s.fixed_buffers = std::all_of(lanes_.begin(), lanes_.end(), [](const auto& lane) {
      return lane->queue->engine().fixed_buffers();
    });
    return s;
  }

  SwapBusy take_busy() override {
    SwapBusy b{busy_[0].take(), busy_[1].take(), {}, {}};
    for (const auto& lane : lanes_) b.lanes.push_back({lane->busy[0].take(), lane->busy[1].take()});
    std::lock_guard lock(transfers_mutex_);
    b.transfers.swap(transfers_);
    return b;
  }
  void record_transfers(bool on) override { recording_.store(on); }

  std::string_view backend_name() const override { return backend_; }
  const SwapStoreOptions& options() const override { return options_; }

 private:
  Status add_path(const std::filesystem::path& root) {
    std::error_code ec;
    auto st = std::filesystem::status(root, ec);
    if (!std::filesystem::exists(st))
      return Status::not_found("swap path " + root.string() + " does not exist");
    if (!std::filesystem::is_directory(st)) {
      return Status::invalid_argument("swap path " + root.string() + " is not a directory");
    }
    if (::access(root.c_str(), W_OK | X_OK) != 0)
      return Status::from_errno(errno, "swap path " + root.string() + " is not writable");
    remove_stale(root);
    PathState p;
    p.root = root;
    std::string pattern = (root / (std::string(kDirPrefix) + "XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::from_errno(errno,
                                "cannot create a private directory in swap path " + root.string());
    }
    p.dir = pattern;
    p.file = p.dir / kSwapName;
    auto owner = claim(p.dir);
    auto opened = owner.is_ok() ? open_direct(p.file, O_RDWR | O_CREAT | O_EXCL, 0600,
                                              options_.buffered_io_fallback)
                                : Result<OpenedFile>(owner.status());
    if (!opened.is_ok()) {
      std::filesystem::remove(p.file, ec);
      std::filesystem::remove(p.dir / "lock.pending", ec);
      std::filesystem::remove(p.dir / kLockName, ec);
      std::filesystem::remove(p.dir, ec);
      return opened.status();
    }
    p.owner = std::move(*owner);
    p.fd = std::move(*opened);
    paths_.push_back(std::move(p));
    if (options_.initial_file_size > 0) {
      const auto path = static_cast<std::uint32_t>(paths_.size() - 1);
      ZINF_RETURN_IF_ERROR(grow({path, align_up(options_.initial_file_size, kIoAlignment), 0}));
    }
    return Status::ok();
  }

  // A path whose file must grow before an allocation fits.
  struct Growth {
    std::uint32_t path;
    std::uint64_t bytes;
    std::uint64_t from;  // the file size the allocation saw
  };

  // Called without meta_mutex_; one growth at a time per path. A file that
  // another thread grew meanwhile is left as it is (the caller allocates again).
  Status grow(const Growth& g) {
    PathState& p = paths_[g.path];
    std::lock_guard growing(*p.grow_mutex);
    {
      std::lock_guard lock(meta_mutex_);
      if (p.allocator.file_size() != g.from) return Status::ok();
    }
    const auto offset = static_cast<off_t>(g.from);
    const auto bytes = g.bytes;
    if (::fallocate(p.fd.fd.get(), 0, offset, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      if (err != EOPNOTSUPP) {
        return Status::from_errno(err, "cannot grow swap file " + p.file.string() + " by " +
                                           std::to_string(bytes) + " bytes");
      }
      ZINF_LOG(kDebug) << p.file.string() << ": fallocate unsupported; extending with ftruncate";
      if (::ftruncate(p.fd.fd.get(), offset + static_cast<off_t>(bytes)) != 0) {
        return Status::from_errno(errno, "cannot extend swap file " + p.file.string());
      }
    }
    std::lock_guard lock(meta_mutex_);
    p.allocator.grow(bytes);
    return Status::ok();
  }

  // Called with meta_mutex_ held: the extents for a value of `size` bytes,
  // or the growth a path needs first (nothing is allocated then).
  std::variant<Layout, Growth> allocate(std::uint64_t size) {
    Layout layout;
    layout.unit = options_.aio.block_size;
    const std::uint64_t padded = align_up(std::max<std::uint64_t>(size, 1), kIoAlignment);
    const std::uint64_t units = (padded + layout.unit - 1) / layout.unit;
    const std::uint32_t n =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(paths_.size(), units));
    // Small values rotate over the paths; large ones use all of them.
    const std::uint32_t first =
        n == paths_.size() ? 0 : next_path_++ % static_cast<std::uint32_t>(paths_.size());
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint32_t path = (first + i) % static_cast<std::uint32_t>(paths_.size());
      // Units i, i+n, i+2n... go to this path; only the last unit may be short.
      std::uint64_t bytes = 0;
      for (std::uint64_t k = i; k < units; k += n)
        bytes += std::min(layout.unit, padded - k * layout.unit);
      ExtentAllocator& allocator = paths_[path].allocator;
      auto extent = allocator.allocate(bytes);
      if (!extent) {
        release(layout);
        return Growth{path, allocator.growth_for(bytes), allocator.file_size()};
      }
      layout.paths.push_back(path);
      layout.extents.push_back(*extent);
    }
    return layout;
  }

  // Called with meta_mutex_ held. Extents still being read are freed when
  // their last reader is done.
  void release(const Layout& layout) {
    for (std::size_t i = 0; i < layout.extents.size(); ++i) {
      deferred_.push_back({layout.paths[i], layout.extents[i]});
    }
    collect_deferred();
  }

  void collect_deferred() {
    std::erase_if(deferred_, [&](const std::pair<std::uint32_t, Extent>& d) {
      if (pinned(d.first, d.second)) return false;
      paths_[d.first].allocator.free(d.second);
      return true;
    });
  }

  bool pinned(std::uint32_t path, const Extent& e) const {
    return readers_by_extent_.count({path, e.offset}) != 0;
  }

  void release_read(const Op& op) {
    std::lock_guard lock(meta_mutex_);
    for (std::size_t i = 0; i < op.layout.extents.size(); ++i) {
      auto it = readers_by_extent_.find({op.layout.paths[i], op.layout.extents[i].offset});
      if (it != readers_by_extent_.end() && --it->second == 0) readers_by_extent_.erase(it);
    }
    collect_deferred();
  }

  // What wait() returns for a finished operation: for a read, the checksum.
  Status finish_wait(Op& op) {
    if (op.kind == IoOp::kRead) let_go_of(op);
    if (!op.status.is_ok()) return op.status;
    if (op.kind == IoOp::kRead && options_.checksum) {
      const std::uint32_t actual = crc32c({op.buffer, op.size});
      if (options_.evict_verified_reads) evict_from_caches({op.buffer, op.size});
      if (actual != op.crc) return checksum_error(op, actual);
    }
    return Status::ok();
  }

  Status check_buffer(std::string_view key, const void* data, std::uint64_t size) const {
    if (key.empty()) return Status::invalid_argument("swap store: empty key");
    if (data == nullptr || size == 0) {
      return Status::invalid_argument("swap store: key '" + std::string(key) +
                                      "': null or empty buffer");
    }
    if (!is_aligned(data, kIoAlignment)) {
      return Status::invalid_argument("swap store: key '" + std::string(key) + "': buffer is not " +
                                      std::to_string(kIoAlignment) + "-byte aligned");
    }
    if (quarantined_bytes_.load() == 0) return Status::ok();
    std::lock_guard lock(quarantine_mutex_);
    const Chunk* q = lost_overlapping({static_cast<const std::byte*>(data), size});
    if (q == nullptr) return Status::ok();
    return Status::failed_precondition(
        "swap store: key '" + std::string(key) +
        "': the buffer overlaps one the kernel may still use (a lost request of key '" +
        q->op->key + "' on " + paths_[static_cast<std::size_t>(q->request.file)].file.string() +
        " at offset " + std::to_string(q->request.offset) +
        "); use another buffer until the kernel returns it");
  }

  // The lost request whose buffer overlaps `buffer` (its size rounded up to
  // kIoAlignment, as a request may use), or null. quarantine_mutex_ held.
  const Chunk* lost_overlapping(std::span<const std::byte> buffer) const {
    const std::byte* begin = buffer.data();
    const std::byte* end = begin + align_up(buffer.size(), kIoAlignment);
    for (const auto& q : quarantine_) {
      const auto* b = static_cast<const std::byte*>(q.request.buffer);
      if (b < end && begin < b + q.request.length) return &q;
    }
    return nullptr;
  }

  // Drops one hold on `op` (see Op::holds); the last one frees a failed
  // write's extents or unpins a read's.
  void let_go_of(Op& op) {
    if (--op.holds > 0) return;
    if (op.kind == IoOp::kRead) {
      release_read(op);
      return;
    }
    std::lock_guard lock(meta_mutex_);
    release(op.layout);
  }

  // Puts the operation's chunks on the lanes (round robin, starting at a
  // rotating lane so that single-chunk operations spread), then submits them
  // from this thread on every lane nobody drives. A driven lane takes them at
  // its driver's next turn: woken now, where the engine allows.
  Result<SwapTicket> start(std::shared_ptr<Op> op) {
    op->left_in_lane.assign(lanes_.size(), 0);
    std::vector<Lane*> to_submit, to_wake;
    SwapTicket ticket;
    {
      std::lock_guard lock(state_mutex_);
      std::size_t l = next_lane_++ % lanes_.size();
      for_each_unit(op->layout, op->size,
                    [&](std::size_t p, std::uint64_t offset, std::uint64_t pos, std::uint64_t len) {
                      IoRequest r;
                      r.op = op->kind;
                      r.file = static_cast<int>(op->layout.paths[p]);
                      r.offset = offset;
                      r.buffer = op->buffer + pos;
                      r.length = static_cast<std::uint32_t>(len);
                      lanes_[l]->backlog.push_back({op, r});
                      ++op->left_in_lane[l];
                      ++op->chunks_left;
                      l = (l + 1) % lanes_.size();
                    });
      for (std::size_t k = 0; k < lanes_.size(); ++k) {
        if (op->left_in_lane[k] == 0) continue;
        Lane& lane = *lanes_[k];
        if (lane.driven) {
          to_wake.push_back(&lane);
        } else {
          lane.driven = true;
          to_submit.push_back(&lane);
        }
      }
      ticket.id = ++next_ticket_;
      busy_log(op->kind).begin();
      op->started = SteadyClock::now();
      ops_.emplace(ticket.id, std::move(op));
    }
    for (Lane* lane : to_wake) lane->queue->wake();
    for (Lane* lane : to_submit) {
      drive(*lane, /*block=*/false);
      std::lock_guard lock(state_mutex_);
      let_go(*lane);
    }
    return ticket;
  }

  // Called with state_mutex_ held by the thread that set lane.driven. Chunks
  // left in the backlog go to the lane's worker.
  void let_go(Lane& lane) {
    lane.driven = false;
    if (worker_has_work(lane)) lane.worker_cv.notify_one();
    progress_cv_.notify_all();
  }

  // With state_mutex_ held, by the lane's driver or while nobody drives it.
  // A lost request alone is no work: waiting on it would hold the lane (and
  // every chunk queued behind it) for as long as the kernel keeps it; a later
  // caller's drive reaps it if it comes back.
  bool worker_has_work(Lane& lane) const {
    return !lane.backlog.empty() ||
           (options_.reap_in_background && lane.queue->pending() > lane.lost);
  }

  // The worker: drives its lane while the backlog has chunks (or, with
  // reap_in_background, requests are in flight) and nobody else drives it.
  void run_worker(Lane& lane) {
    std::unique_lock lock(state_mutex_);
    for (;;) {
      lane.worker_cv.wait(lock,
                          [&] { return stopping_ || (!lane.driven && worker_has_work(lane)); });
      if (stopping_) return;
      lane.driven = true;
      while (worker_has_work(lane) && !stopping_) {
        lock.unlock();
        drive(lane, /*block=*/true);
        lock.lock();
      }
      let_go(lane);
    }
  }

  // One turn of the thread that has set lane.driven: fills the free slots
  // from the backlog and submits them; with `block`, then waits for at least
  // one completion (if anything is in flight) and finishes what completed.
  void drive(Lane& lane, bool block) {
    IoQueue& queue = *lane.queue;
    lane.batch.clear();
    {
      std::lock_guard lock(state_mutex_);
      while (!lane.backlog.empty() && !lane.free_slots.empty()) {
        const std::size_t s = lane.free_slots.back();
        lane.free_slots.pop_back();
        lane.slots[s] = std::move(lane.backlog.front());
        lane.backlog.pop_front();
        lane.slots[s].request.user_data = s;
        lane.batch.push_back(lane.slots[s].request);
      }
      // A failed queue whose every slot is lost never frees one.
      if (!queue.status().is_ok() && lane.free_slots.empty()) {
        std::move(lane.backlog.begin(), lane.backlog.end(), std::back_inserter(lane.rejected));
        lane.backlog.clear();
      }
    }
    auto& finished = lane.finished;
    finished.clear();
    bool submitted = true;
    if (!lane.batch.empty()) {
      // The lane's free slots mirror the queue's, so all of the batch fits.
      auto n = queue.submit(lane.batch);
      const std::size_t accepted = n.is_ok() ? *n : 0;
      submitted = accepted == lane.batch.size();
      if (recording_.load()) {
        for (std::size_t k = 0; k < accepted; ++k) {
          Chunk& c = lane.slots[lane.batch[k].user_data];
          c.timed = true;
          lane.busy[c.op->kind == IoOp::kRead ? 0 : 1].begin();
        }
      }
      for (std::size_t k = accepted; k < lane.batch.size(); ++k) {
        finished.push_back({lane.batch[k].user_data,
                            n.is_ok()
                                ? Status::internal("io queue refused a request with a free slot")
                                : n.status(),
                            false});
      }
    }
    if (block && submitted && queue.pending() > 0) {
      auto got = queue.wait(lane.results, 1);
      if (!got.is_ok()) {
        // The queue failed (a submission the kernel refused, or every slot
        // lost): fail what it holds, except lost requests, whose buffers the
        // kernel may still use.
        for (std::size_t s = 0; s < lane.slots.size(); ++s) {
          const Chunk& c = lane.slots[s];
          if (c.op != nullptr && !c.lost) finished.push_back({s, got.status(), false});
        }
      } else {
        for (std::size_t k = 0; k < *got; ++k) finished.push_back(std::move(lane.results[k]));
      }
    }
    if (!finished.empty() || !lane.rejected.empty()) finish_chunks(lane);
  }

  // Frees the slots of lane.finished (but a lost request's: that stays taken
  // and its buffer quarantined until the kernel returns it) and completes the
  // operations whose last chunk this was.
  void finish_chunks(Lane& lane) {
    auto& completed = lane.completed;
    std::vector<std::shared_ptr<Op>> returned;  // lost chunks' operations, let go of below
    {
      std::lock_guard lock(state_mutex_);
      auto settle = [&](std::shared_ptr<Op> op, const Status& status) {
        if (!status.is_ok() && op->status.is_ok())
          op->status = status.with_context("key '" + op->key + "'");
        --op->left_in_lane[lane.index];
        if (--op->chunks_left == 0) completed.push_back(std::move(op));
      };
      for (auto& r : lane.finished) {
        const std::size_t s = r.user_data;
        Chunk& chunk = lane.slots[s];
        if (chunk.timed) {  // out of the kernel's hands, or given up on (lost)
          chunk.timed = false;
          lane.busy[chunk.op->kind == IoOp::kRead ? 0 : 1].end();
        }
        if (r.lost) {
          chunk.lost = true;
          ++lane.lost;
          ++chunk.op->holds;
          quarantine(chunk);
          settle(chunk.op, r.status);
          continue;
        }
        lane.free_slots.push_back(s);
        if (chunk.lost) {
          --lane.lost;
          unquarantine(chunk);
          returned.push_back(std::move(chunk.op));
          chunk.lost = false;
          continue;
        }
        settle(std::move(chunk.op), r.status);
      }
      for (Chunk& chunk : lane.rejected) settle(std::move(chunk.op), lane.queue->status());
      lane.rejected.clear();
    }
    for (auto& op : returned) let_go_of(*op);
    if (completed.empty()) return;
    for (auto& op : completed) {
      complete(*op);
      busy_log(op->kind).end();
      if (recording_.load()) {
        std::lock_guard lock(transfers_mutex_);
        transfers_.push_back(
            {op->kind == IoOp::kRead, op->key, op->size, {op->started, SteadyClock::now()}});
      }
    }
    {
      std::lock_guard lock(state_mutex_);
      for (auto& op : completed) op->done = true;
    }
    completed.clear();  // the waiters hold their own references
    progress_cv_.notify_all();
  }

  void complete(Op& op) {
    if (op.kind == IoOp::kWrite && !op.status.is_ok()) let_go_of(op);
    {
      std::lock_guard lock(meta_mutex_);
      if (op.kind == IoOp::kWrite) {
        if (op.status.is_ok()) {
          auto [it, inserted] = values_.try_emplace(op.key);
          if (!inserted) {
            release(it->second.layout);
            live_bytes_ -= align_up(it->second.size, kIoAlignment);
          }
          it->second = {op.layout, op.size, op.crc};
          live_bytes_ += align_up(op.size, kIoAlignment);
          stats_.bytes_written += op.size;
          ++stats_.write_ops;
        }
      } else if (op.status.is_ok()) {
        stats_.bytes_read += op.size;
        ++stats_.read_ops;
      }
    }
  }

  // A lost chunk's buffer: no read or write may use it until the kernel
  // returns the request.
  void quarantine(const Chunk& chunk) {
    std::lock_guard lock(quarantine_mutex_);
    quarantine_.push_back(chunk);
    quarantined_bytes_ += chunk.request.length;
  }

  void unquarantine(const Chunk& chunk) {
    std::lock_guard lock(quarantine_mutex_);
    auto it = std::find_if(quarantine_.begin(), quarantine_.end(), [&](const Chunk& q) {
      return q.request.buffer == chunk.request.buffer && q.op == chunk.op;
    });
    if (it == quarantine_.end()) return;
    quarantined_bytes_ -= it->request.length;
    quarantine_.erase(it);
    ZINF_LOG(kInfo) << "swap store: the lost request of key '" << chunk.op->key
                    << "' came back; its buffer is free again";
  }

  Status checksum_error(const Op& op, std::uint32_t actual) const {
    std::string where;
    for_each_unit(
        op.layout, op.size, [&](std::size_t p, std::uint64_t offset, std::uint64_t, std::uint64_t) {
          if (where.empty())
            where =
                paths_[op.layout.paths[p]].file.string() + " at offset " + std::to_string(offset);
        });
    char buf[64];
    std::snprintf(buf, sizeof(buf), " (stored crc32c %08x, read %08x)", op.crc, actual);
    return Status::data_loss("swap store: key '" + op.key + "': checksum mismatch reading " +
                             std::to_string(op.size) + " bytes from " + where + buf);
  }

  BusyLog& busy_log(IoOp kind) { return busy_[kind == IoOp::kRead ? 0 : 1]; }

  const SwapStoreOptions options_;
  std::vector<PathState> paths_;
  BusyLog busy_[2];  // reads, writes
  std::atomic<bool> recording_{false};
  std::mutex transfers_mutex_;
  std::vector<SwapTransfer> transfers_;
  std::string backend_;

  mutable std::mutex meta_mutex_;
  std::map<std::string, Value, std::less<>> values_;
  std::map<std::pair<std::uint32_t, std::uint64_t>, int> readers_by_extent_;
  std::vector<std::pair<std::uint32_t, Extent>> deferred_;
  std::uint32_t next_path_ = 0;
  std::uint64_t live_bytes_ = 0;
  SwapStats stats_;

  mutable std::mutex quarantine_mutex_;
  std::vector<Chunk> quarantine_;  // lost chunks, whose buffers the kernel may still use
  std::atomic<std::uint64_t> quarantined_bytes_{0};

  std::mutex state_mutex_;               // the lanes' backlogs and flags, the operations' progress
  std::condition_variable progress_cv_;  // an operation finished or a lane was let go
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Op>> ops_;
  std::uint64_t next_ticket_ = 0;
  std::size_t next_lane_ = 0;
  bool stopping_ = false;
};

}  // namespace

Result<std::unique_ptr<SwapStore>> SwapStore::open(SwapStoreOptions options) {
  auto store = std::make_unique<SwapStoreImpl>(std::move(options));
  ZINF_RETURN_IF_ERROR(store->open());
  return std::unique_ptr<SwapStore>(std::move(store));
}

SwapStoreOptions SwapStoreOptions::from_config(const Config& config) {
  SwapStoreOptions o;
  for (const auto& p : config.swap_paths()) o.paths.emplace_back(p);
  o.backend = config.zinf.io_backend;
  o.aio = config.aio;
  o.checksum = config.zinf.checksum;
  o.buffered_io_fallback = config.zinf.buffered_io_fallback;
  o.sqpoll = config.zinf.sqpoll;
  o.completion_timeout = std::chrono::seconds(config.zinf.io_timeout);
  return o;
}

}  // namespace zinf::swap
