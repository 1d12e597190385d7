// SwapStore: keyed extents in one swap file per path, moved by a pool of
// workers that each own an IoQueue (see include/zinf/swap/swap_store.hpp).
//
// Data path. write()/read() cut an operation into chunks of at most
// aio.block_size bytes (the stripe unit) and push them onto one shared work
// queue; each worker keeps its own IoQueue full from it. The worker that
// finishes an operation's last chunk completes it: a write then switches its
// key to the new extents (freeing the old ones) or, on error, frees the new
// extents and keeps the old value. CRC32C is computed by the caller's thread
// in write() and verified by the caller's thread in wait(), so checksums scale
// with the number of callers and never stall a worker.
#include "zinf/swap/swap_store.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

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

struct Op {
  IoOp kind = IoOp::kRead;
  std::string key;
  std::byte* buffer = nullptr;
  std::uint64_t size = 0;
  std::uint32_t crc = 0;  // write: of the data; read: expected
  Layout layout;          // write: the new extents; read: where the value is
  std::atomic<std::size_t> chunks_left{0};
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  Status status;
};

struct Chunk {
  std::shared_ptr<Op> op;
  IoRequest request;
};

struct PathState {
  std::filesystem::path root;  // the user's path
  std::filesystem::path dir;   // our private directory in it
  std::filesystem::path file;
  OpenedFile fd;
  ExtentAllocator allocator{kIoAlignment, kGrowStep};
};

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

  ~SwapStoreImpl() override {
    {
      std::unique_lock lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    for (auto& t : workers_) t.join();
    for (auto& p : paths_) {
      p.fd.fd.reset();
      std::error_code ec;
      std::filesystem::remove(p.file, ec);
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
    const std::uint32_t workers = std::max<std::uint32_t>(1, options_.aio.intra_op_parallelism);
    std::vector<std::unique_ptr<IoQueue>> queues;
    for (std::uint32_t w = 0; w < workers; ++w) {
      IoEngineOptions eo;
      eo.queue_depth = options_.aio.queue_depth;
      eo.sqpoll = options_.sqpoll;
      eo.single_submit = options_.aio.single_submit;
      ZINF_ASSIGN_OR_RETURN(std::unique_ptr<IoEngine> engine, make_io_engine(options_.backend, eo));
      if (options_.fault) engine = make_fault_injecting_engine(std::move(engine), *options_.fault);
      for (const auto& p : paths_)
        ZINF_RETURN_IF_ERROR(engine->add_file(p.fd.fd.get(), p.file.string()).status());
      backend_ = std::string(engine->name());
      queues.push_back(std::make_unique<IoQueue>(std::move(engine),
                                                 IoQueueOptions{options_.completion_timeout}));
    }
    queues_ = std::move(queues);
    for (std::size_t w = 0; w < queues_.size(); ++w)
      waiting_.push_back(std::make_unique<std::atomic<bool>>(false));
    for (std::size_t w = 0; w < queues_.size(); ++w) {
      workers_.emplace_back([this, w] { run_worker(*queues_[w], *waiting_[w]); });
    }
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
    {
      std::lock_guard lock(meta_mutex_);
      ZINF_ASSIGN_OR_RETURN(op->layout, allocate(data.size()));
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
    std::shared_ptr<Op> op;
    {
      std::lock_guard lock(ops_mutex_);
      auto it = ops_.find(ticket.id);
      if (it == ops_.end()) {
        return Status::invalid_argument("swap store: unknown ticket " + std::to_string(ticket.id) +
                                        " (never issued, or already waited for)");
      }
      op = std::move(it->second);
      ops_.erase(it);
    }
    {
      std::unique_lock lock(op->mutex);
      op->cv.wait(lock, [&] { return op->done; });
    }
    if (op->kind == IoOp::kRead) release_read(*op);
    if (!op->status.is_ok()) return op->status;
    if (op->kind == IoOp::kRead && options_.checksum) {
      const std::uint32_t actual = crc32c({op->buffer, op->size});
      if (actual != op->crc) return checksum_error(*op, actual);
    }
    return Status::ok();
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
    for (auto& q : queues_) ZINF_RETURN_IF_ERROR(q->engine().register_buffers(regions));
    return Status::ok();
  }

  SwapStats stats() const override {
    std::lock_guard lock(meta_mutex_);
    SwapStats s = stats_;
    for (const auto& p : paths_) s.file_bytes += p.allocator.file_size();
    s.live_bytes = live_bytes_;
    return s;
  }

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
    PathState p;
    p.root = root;
    std::string pattern = (root / "zinf-swap-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::from_errno(errno,
                                "cannot create a private directory in swap path " + root.string());
    }
    p.dir = pattern;
    p.file = p.dir / "swap";
    auto opened =
        open_direct(p.file, O_RDWR | O_CREAT | O_EXCL, 0600, options_.buffered_io_fallback);
    if (!opened.is_ok()) {
      std::filesystem::remove(p.file, ec);
      std::filesystem::remove(p.dir, ec);
      return opened.status();
    }
    p.fd = std::move(*opened);
    paths_.push_back(std::move(p));
    if (options_.initial_file_size > 0) {
      ZINF_RETURN_IF_ERROR(grow(paths_.back(), align_up(options_.initial_file_size, kIoAlignment)));
    }
    return Status::ok();
  }

  Status grow(PathState& p, std::uint64_t bytes) {
    const auto offset = static_cast<off_t>(p.allocator.file_size());
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
    p.allocator.grow(bytes);
    return Status::ok();
  }

  Result<Extent> allocate_on(std::uint32_t path, std::uint64_t bytes) {
    PathState& p = paths_[path];
    if (auto e = p.allocator.allocate(bytes)) return *e;
    ZINF_RETURN_IF_ERROR(grow(p, p.allocator.growth_for(bytes)));
    if (auto e = p.allocator.allocate(bytes)) return *e;
    return Status::internal("swap store: allocation failed after growing " + p.file.string());
  }

  // Called with meta_mutex_ held.
  Result<Layout> allocate(std::uint64_t size) {
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
      auto extent = allocate_on(path, bytes);
      if (!extent.is_ok()) {
        release(layout);
        return extent.status();
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
    return Status::ok();
  }

  Result<SwapTicket> start(std::shared_ptr<Op> op) {
    std::vector<Chunk> chunks;
    for_each_unit(op->layout, op->size,
                  [&](std::size_t p, std::uint64_t offset, std::uint64_t pos, std::uint64_t len) {
                    IoRequest r;
                    r.op = op->kind;
                    r.file = static_cast<int>(op->layout.paths[p]);
                    r.offset = offset;
                    r.buffer = op->buffer + pos;
                    r.length = static_cast<std::uint32_t>(len);
                    chunks.push_back({op, r});
                  });
    op->chunks_left = chunks.size();
    SwapTicket ticket{next_ticket_.fetch_add(1) + 1};
    {
      std::lock_guard lock(ops_mutex_);
      ops_.emplace(ticket.id, op);
    }
    {
      std::lock_guard lock(queue_mutex_);
      for (auto& c : chunks) queue_.push_back(std::move(c));
    }
    queue_cv_.notify_all();
    // A worker blocked on its completions would pick the new chunks up only
    // at its next completion: wake it so they go to the device now.
    for (std::size_t w = 0; w < queues_.size(); ++w) {
      if (waiting_[w]->load(std::memory_order_acquire)) queues_[w]->wake();
    }
    return ticket;
  }

  // One worker: keeps its queue full from the shared work queue and finishes
  // chunks as their completions arrive.
  void run_worker(IoQueue& queue, std::atomic<bool>& waiting) {
    std::vector<Chunk> slots(queue.free_slots() + queue.pending());
    std::vector<std::size_t> free_slots;
    for (std::size_t i = slots.size(); i > 0; --i) free_slots.push_back(i - 1);
    std::vector<IoRequest> batch;
    std::vector<IoResult> results(slots.size());
    for (;;) {
      batch.clear();
      {
        std::unique_lock lock(queue_mutex_);
        if (free_slots.size() == slots.size()) {
          queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
          if (queue_.empty()) return;  // stopping with nothing left
        }
        while (!queue_.empty() && !free_slots.empty()) {
          const std::size_t s = free_slots.back();
          free_slots.pop_back();
          slots[s] = std::move(queue_.front());
          queue_.pop_front();
          slots[s].request.user_data = s;
          batch.push_back(slots[s].request);
        }
      }
      std::size_t accepted = 0;
      while (accepted < batch.size()) {
        auto n = queue.submit(std::span(batch).subspan(accepted));
        if (!n.is_ok()) {
          for (std::size_t k = accepted; k < batch.size(); ++k) {
            finish_chunk(slots[batch[k].user_data], n.status());
            free_slots.push_back(batch[k].user_data);
          }
          break;
        }
        accepted += *n;
        if (*n == 0) break;
      }
      if (queue.pending() == 0) continue;
      waiting.store(true, std::memory_order_release);
      auto got = queue.wait(results, 1);
      waiting.store(false, std::memory_order_release);
      if (!got.is_ok()) {
        // Fatal for this queue (a dropped completion): fail what it holds.
        for (std::size_t s = 0; s < slots.size(); ++s) {
          if (std::find(free_slots.begin(), free_slots.end(), s) == free_slots.end()) {
            finish_chunk(slots[s], got.status());
            free_slots.push_back(s);
          }
        }
        continue;
      }
      for (std::size_t k = 0; k < *got; ++k) {
        const std::size_t s = results[k].user_data;
        finish_chunk(slots[s], results[k].status);
        free_slots.push_back(s);
      }
    }
  }

  void finish_chunk(Chunk& chunk, const Status& status) {
    std::shared_ptr<Op> op = std::move(chunk.op);
    if (!status.is_ok()) {
      std::lock_guard lock(op->mutex);
      if (op->status.is_ok()) op->status = status.with_context("key '" + op->key + "'");
    }
    if (op->chunks_left.fetch_sub(1) != 1) return;
    complete(*op);
  }

  void complete(Op& op) {
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
        } else {
          release(op.layout);
        }
      } else if (op.status.is_ok()) {
        stats_.bytes_read += op.size;
        ++stats_.read_ops;
      }
    }
    std::lock_guard lock(op.mutex);
    op.done = true;
    op.cv.notify_all();
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

  const SwapStoreOptions options_;
  std::vector<PathState> paths_;
  std::vector<std::unique_ptr<IoQueue>> queues_;
  std::vector<std::unique_ptr<std::atomic<bool>>> waiting_;  // worker w is blocked in wait()
  std::vector<std::thread> workers_;
  std::string backend_;

  mutable std::mutex meta_mutex_;
  std::map<std::string, Value, std::less<>> values_;
  std::map<std::pair<std::uint32_t, std::uint64_t>, int> readers_by_extent_;
  std::vector<std::pair<std::uint32_t, Extent>> deferred_;
  std::uint32_t next_path_ = 0;
  std::uint64_t live_bytes_ = 0;
  SwapStats stats_;

  std::mutex ops_mutex_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Op>> ops_;
  std::atomic<std::uint64_t> next_ticket_{0};

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<Chunk> queue_;
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
  return o;
}

}  // namespace zinf::swap
