// The NVMe tier: each piece's state arrays are SwapStore values, in two slots
// per piece ("p12/state1@1"), streamed through a pinned pool of K = 3 buffer
// sets (one piece's states each), so host memory is the pool's size
// whatever the sub-group size.
//
// The pipeline (update). While the CPU computes piece i in set i % K, the
// helper thread waits for the write of piece i-1 (set (i-1) % K) and then
// reads piece i+K-1 into that set; reads of the next K-2 pieces are already
// in flight (overwrite, a checkpoint's load, reads nothing). Computed pieces are written to the
// slot that is not current. The current slots switch only after every write of the step succeeded,
// so a failure at any point leaves the previous state complete on disk.
#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <vector>

#include "offload/state_tier.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/common/worker.hpp"
#include "zinf/gpu/pinned_pool.hpp"
#include "zinf/swap/swap_store.hpp"

namespace zinf::offload {
namespace {

double since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

constexpr int kSets = 3;  // pieces in flight: read i+1, update i, write i-1

std::uint64_t largest_group(const TierShape& shape) {
  return shape.groups.empty() ? 1 : *std::max_element(shape.groups.begin(), shape.groups.end());
}

// kSets sets of one piece's state arrays.
gpu::PinnedPool::Options pool_options(const TierShape& shape, const OffloadOptions& o) {
  return {"offload_optimizer buffers", align_up(shape.chunk * sizeof(float), kIoAlignment),
          static_cast<std::size_t>(kSets * shape.num_states), o.pin_memory()};
}

// zinf streams each sub-group through kSets sets of pieces: read i+1,
// update i, write i-1. A piece fills every lane's queue with requests of one
// aio block, is at most a sub-group, keeps the pool under half of the state
// and within what DeepSpeed's buffer_count buffers would take; pieces are
// whole pages (at least one).
std::uint64_t piece_elements(const TierShape& shape, const OffloadOptions& o) {
  constexpr std::uint64_t kPage = kIoAlignment / sizeof(float);
  const std::uint64_t io = o.block_size() * o.queue_depth() *
                           std::max<std::uint32_t>(1, o.intra_op_parallelism()) / sizeof(float);
  const std::uint64_t half = shape.elements() / (2 * kSets);
  const std::uint64_t largest = largest_group(shape);
  const std::uint64_t deepspeed_pool = std::uint64_t{o.buffer_count()} * largest;
  const std::uint64_t within =
      deepspeed_pool / (kSets * static_cast<std::uint64_t>(shape.num_states));
  const std::uint64_t chunk = std::min({io, half / kPage * kPage, largest, within / kPage * kPage});
  return std::max(kPage, chunk);
}

class NvmeTier final : public StateTier {
 public:
  explicit NvmeTier(const TierShape& shape)
      : shape_(shape), pieces_(shape.pieces()), slot_(pieces_.size(), 0) {}

  Status open(const OffloadOptions& o) {
    swap::SwapStoreOptions so;
    so.paths = {o.nvme_path()};
    so.backend = o.io_backend();
    so.aio.block_size = o.block_size();
    so.aio.queue_depth = o.queue_depth();
    so.aio.intra_op_parallelism = o.intra_op_parallelism();
    so.aio.single_submit = o.single_submit();
    so.aio.overlap_events = o.overlap_events();
    so.checksum = o.checksum();
    so.buffered_io_fallback = o.buffered_io_fallback();
    so.fault = o.fault();
    so.completion_timeout = std::chrono::seconds(o.io_timeout());
    ZINF_ASSIGN_OR_RETURN(store_, swap::SwapStore::open(so));
    ZINF_ASSIGN_OR_RETURN(pool_, gpu::PinnedPool::create(nullptr, pool_options(shape_, o)));
    array_bytes_ = pool_->buffer_bytes();
    for (std::size_t i = 0; i < pool_->count(); ++i) buffers_.push_back(pool_->acquire());
    stand_ins_.resize(buffers_.size());
    if (Status s = store_->register_buffers(pool_->io_regions()); !s.is_ok())
      ZINF_LOG(kWarn) << "offload_optimizer: " << s.message() << "; using plain buffers";
    const TierBytes b = bytes();
    ZINF_LOG(kInfo) << "offload_optimizer: nvme, " << pieces_.size() << " pieces of up to "
                    << shape_.chunk << " elements through " << pool_->count() << " buffers of "
                    << format_bytes(array_bytes_) << " (" << format_bytes(b.host)
                    << ", pinned: " << (b.host_pinned ? "yes" : "no")
                    << ", fixed buffers: " << (b.fixed_buffers ? "yes" : "no")
                    << "; DeepSpeed's buffer_count " << o.buffer_count() << " would take "
                    << format_bytes(std::uint64_t{o.buffer_count()} * largest_group(shape_) *
                                    sizeof(float))
                    << ")";
    return Status::ok();
  }

  Status initialize(const PieceFn& init) {
    for (const Piece& p : pieces_) {
      Piece piece = view(p, 0);
      ZINF_RETURN_IF_ERROR(init(piece));
      ZINF_RETURN_IF_ERROR(write(p.index, 0, 0));
      ZINF_RETURN_IF_ERROR(wait(0));
    }
    return Status::ok();
  }

  Status update(const PieceFn& fn, StepStats& stats) override { return run(fn, stats, true); }
  Status overwrite(const PieceFn& fn, StepStats& stats) override { return run(fn, stats, false); }
  Status replace(const PieceFn& fn, StepStats& stats) override { return overwrite(fn, stats); }

  bool atomic() const override { return true; }

  // Reads ahead: while `fn` works on piece i, pieces i+1 and i+2 are on
  // their way into the other sets.
  Status read(const PieceFn& fn) override {
    ZINF_RETURN_IF_ERROR(stand_in_for_held_buffers());
    const std::size_t n = pieces_.size();
    const auto k = static_cast<std::size_t>(kSets);
    Status error;
    auto note = [&](Status s) {
      if (error.is_ok() && !s.is_ok()) error = std::move(s);
    };
    for (std::size_t i = 0; i < std::min(n, k - 1); ++i) note(read(i, set_of(i), slot_[i]));
    for (std::size_t i = 0; i < n && error.is_ok(); ++i) {
      note(wait(set_of(i)));
      if (error.is_ok() && i + k - 1 < n)
        note(read(i + k - 1, set_of(i + k - 1), slot_[i + k - 1]));
      if (!error.is_ok()) break;
      Piece piece = view(pieces_[i], set_of(i));
      note(call_piece_fn(fn, piece));
    }
    for (int set = 0; set < kSets; ++set) note(wait(set));
    return error;
  }

  TierBytes bytes() const override {
    const swap::SwapStats s = store_->stats();
    std::uint64_t stand_ins = 0;
    for (const AlignedBuffer& b : stand_ins_) stand_ins += b.size();
    return {pool_->bytes() + stand_ins, s.live_bytes, pool_->pinned(), s.fixed_buffers};
  }

  std::size_t pieces() const override { return pieces_.size(); }

  TierIo take_io() override {
    swap::SwapBusy busy = store_->take_busy();
    TierIo io;
    io.busy = std::move(busy.reads);
    io.busy.insert(io.busy.end(), busy.writes.begin(), busy.writes.end());
    for (swap::SwapTransfer& t : busy.transfers) {
      const auto [piece, state] = parse_key(t.key);
      io.transfers.push_back(
          {t.read, piece, pieces_[piece].group, kStateNames[state], t.bytes, t.when});
    }
    io.lanes = std::move(busy.lanes);
    return io;
  }
  void record_transfers(bool on) override { store_->record_transfers(on); }

 private:
  static constexpr const char* kStateNames[] = {"master", "state1", "state2"};

  // update() (read_old) and overwrite() (the sets are not read first: the
  // helper only waits for the write that frees the next set).
  Status run(const PieceFn& fn, StepStats& stats, bool read_old) {
    ZINF_RETURN_IF_ERROR(stand_in_for_held_buffers());
    const std::size_t n = pieces_.size();
    const auto k = static_cast<std::size_t>(kSets);
    const swap::SwapStats before = store_->stats();
    Status error;
    auto note = [&](Status s) {
      if (error.is_ok() && !s.is_ok()) error = std::move(s);
    };
    for (std::size_t i = 0; read_old && i < std::min(n, k - 1); ++i)
      note(read(i, set_of(i), slot_[i]));
    for (std::size_t i = 0; i < n && error.is_ok(); ++i) {
      const auto t_read = SteadyClock::now();
      note(wait(set_of(i)));
      stats.read_s += since(t_read);
      if (!error.is_ok()) break;
      // The helper recycles the set of piece i-1 for piece i+k-1.
      auto helper = helper_.submit([this, i, n, k, read_old]() -> Status {
        const int recycled = set_of(i + k - 1);
        if (i >= 1) ZINF_RETURN_IF_ERROR(wait(recycled));
        if (read_old && i + k - 1 < n)
          ZINF_RETURN_IF_ERROR(read(i + k - 1, recycled, slot_[i + k - 1]));
        return Status::ok();
      });
      Piece piece = view(pieces_[i], set_of(i));
      const auto t_compute = SteadyClock::now();
      note(call_piece_fn(fn, piece));
      stats.compute_periods.push_back({t_compute, SteadyClock::now()});
      stats.compute_s += stats.compute_periods.back().seconds();
      note(helper.get());
      if (error.is_ok()) note(write(i, set_of(i), 1 - slot_[i]));
    }
    const auto t_drain = SteadyClock::now();
    for (int set = 0; set < kSets; ++set) note(wait(set));
    stats.write_s += since(t_drain);
    const swap::SwapStats after = store_->stats();
    stats.bytes_read += after.bytes_read - before.bytes_read;
    stats.bytes_written += after.bytes_written - before.bytes_written;
    stats.sub_groups = shape_.groups.size();
    if (!error.is_ok()) return error;
    for (auto& s : slot_) s = 1 - s;
    return Status::ok();
  }

  int set_of(std::size_t piece) const { return static_cast<int>(piece % kSets); }

  float* buffer(int set, int state) const {
    const auto j = static_cast<std::size_t>(set * shape_.num_states + state);
    return reinterpret_cast<float*>(stand_ins_[j].size() > 0 ? stand_ins_[j].data()
                                                             : buffers_[j].data());
  }

  // A pool buffer that a lost request may still use (the kernel has not
  // returned it) is not touched: a plain buffer of its size stands in for it
  // until the store has reaped the request. Between passes, nothing in flight.
  Status stand_in_for_held_buffers() {
    for (std::size_t j = 0; j < buffers_.size(); ++j) {
      const bool held = store_->holds({buffers_[j].data(), buffers_[j].size()});
      if (held == (stand_ins_[j].size() > 0)) continue;
      if (!held) {
        stand_ins_[j] = AlignedBuffer();
        ZINF_LOG(kInfo) << "offload_optimizer: buffer " << j
                        << " is back in service (its lost request has returned)";
        continue;
      }
      auto stand_in = AlignedBuffer::allocate(array_bytes_);
      if (!stand_in.is_ok()) {
        return stand_in.status().with_context(
            "offload_optimizer: a stand-in for a buffer a lost request holds");
      }
      stand_ins_[j] = std::move(*stand_in);
      ZINF_LOG(kWarn) << "offload_optimizer: buffer " << j << " (" << format_bytes(array_bytes_)
                      << ") may still be used by a lost I/O request; an unpinned buffer stands "
                      << "in for it until the kernel returns it";
    }
    return Status::ok();
  }

  Piece view(const Piece& p, int set) const {
    Piece piece = p;
    for (int s = 0; s < shape_.num_states; ++s) piece.state[s] = buffer(set, s);
    return piece;
  }

  static std::string key(std::size_t piece, int state, int slot) {
    return "p" + std::to_string(piece) + "/" + kStateNames[state] + "@" + std::to_string(slot);
  }
  // The piece and state of a key() (the store holds only the tier's keys).
  static std::pair<std::size_t, int> parse_key(const std::string& key) {
    const std::size_t slash = key.find('/');
    const std::string state = key.substr(slash + 1, key.find('@') - slash - 1);
    int s = 0;
    while (s < 2 && state != kStateNames[s]) ++s;
    return {std::stoul(key.substr(1, slash - 1)), s};
  }

  // Starts the transfers of a piece's states into/out of `set`.
  Status start(std::size_t i, int set, int slot, bool is_read) {
    for (int s = 0; s < shape_.num_states; ++s) {
      auto* b = reinterpret_cast<std::byte*>(buffer(set, s));
      const std::span<std::byte> data{b, pieces_[i].count * sizeof(float)};
      auto t = is_read ? store_->read(key(i, s, slot), data) : store_->write(key(i, s, slot), data);
      if (!t.is_ok()) return t.status().with_context(direction(is_read));
      pending_[set].push_back(*t);
    }
    reading_[set] = is_read;
    return Status::ok();
  }
  Status read(std::size_t i, int set, int slot) { return start(i, set, slot, true); }
  Status write(std::size_t i, int set, int slot) { return start(i, set, slot, false); }

  // Waits for everything in flight on `set`; the first error wins.
  Status wait(int set) {
    Status first;
    for (auto t : pending_[set]) {
      Status s = store_->wait(t);
      if (first.is_ok() && !s.is_ok()) first = std::move(s);
    }
    pending_[set].clear();
    return first.is_ok() ? first : first.with_context(direction(reading_[set]));
  }

  TierShape shape_;
  std::vector<Piece> pieces_;
  std::vector<int> slot_;  // the current slot of each piece
  std::unique_ptr<gpu::PinnedPool> pool_;
  std::vector<AlignedBuffer> stand_ins_;    // by buffer: in its place while a lost request holds it
  std::unique_ptr<swap::SwapStore> store_;  // after the pool: destroyed first, see register_buffers
  std::vector<gpu::PinnedPool::Lease> buffers_;  // all of the pool, for the tier's lifetime
  std::size_t array_bytes_ = 0;
  std::vector<swap::SwapTicket> pending_[kSets];
  bool reading_[kSets] = {};  // what the set's pending transfers are

  static const char* direction(bool is_read) {
    return is_read ? "reading the optimizer state" : "writing the optimizer state";
  }
  Worker helper_;  // last: joined before the store and buffers go
};

}  // namespace

Result<std::unique_ptr<StateTier>> make_nvme_tier(TierShape shape, const OffloadOptions& o,
                                                  const char* algorithm, const PieceFn& init) {
  if (o.nvme_path().empty()) {
    return Status::invalid_argument(
        "offload_optimizer.nvme_path (OffloadOptions::nvme_path) is required for device nvme");
  }
  // buffer_count is DeepSpeed's: fp32 buffers of the largest sub-group, of
  // which one sub-group's update takes one per state and one for its
  // gradient. Fewer cannot step in DeepSpeed either.
  const auto states = static_cast<std::uint32_t>(shape.num_states);
  const std::uint32_t needed = states + 1;
  if (o.buffer_count() < needed) {
    return Status::invalid_argument(
        "offload_optimizer.buffer_count (OffloadOptions::buffer_count) = " +
        std::to_string(o.buffer_count()) + " is too few for " + algorithm + ": a sub-group's " +
        "update takes " + std::to_string(needed) + " buffers (one per fp32 state array and " +
        "one for the gradient, as DeepSpeed counts them); raise buffer_count to " +
        std::to_string(needed) + " or more");
  }
  shape.chunk = piece_elements(shape, o);
  auto tier = std::make_unique<NvmeTier>(shape);
  ZINF_RETURN_IF_ERROR(tier->open(o));
  ZINF_RETURN_IF_ERROR(tier->initialize(init));
  return std::unique_ptr<StateTier>(std::move(tier));
}

TierFootprint tier_footprint(TierShape shape, const OffloadOptions& o) {
  TierFootprint f;
  const auto states = static_cast<std::uint64_t>(shape.num_states);
  if (o.device() != "nvme") {
    f.host = states * AlignedBuffer::size_for(shape.elements() * sizeof(float));
    return f;
  }
  shape.chunk = piece_elements(shape, o);
  f.host = gpu::PinnedPool::bytes_for(pool_options(shape, o));
  for (const Piece& p : shape.pieces())
    f.nvme += 2 * states * align_up(p.count * sizeof(float), kIoAlignment);
  return f;
}

}  // namespace zinf::offload
