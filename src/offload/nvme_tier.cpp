// The NVMe tier: each sub-group's state arrays are SwapStore values, in two
// slots per sub-group ("sg12/exp_avg@1").
//
// The pipeline (update). The pool holds K buffer sets, one sub-group's
// states each (K = buffer_count / num_states >= 2). While the CPU computes
// sub-group i in set i % K, a helper thread waits for the write of i-1 (set
// (i-1) % K) and then reads sub-group i+K-1 into that set; reads of the next
// K-2 sub-groups are already in flight. Computed sub-groups are written to
// the slot that is not current. The current slots switch only after every
// write of the step succeeded, so a failure at any point leaves the previous
// state complete on disk.
#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <vector>

#include "offload/state_tier.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/swap_store.hpp"

namespace zinf::offload {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

class NvmeTier final : public StateTier {
 public:
  NvmeTier(const TierShape& shape, int sets)
      : shape_(shape), sets_(sets), slot_(shape.sub_groups(), 0) {}

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
    ZINF_ASSIGN_OR_RETURN(store_, swap::SwapStore::open(so));
    set_bytes_ = align_up(shape_.sub_group_size * sizeof(float), kIoAlignment) * shape_.num_states;
    const std::uint64_t total = set_bytes_ * static_cast<std::uint64_t>(sets_);
    auto pool = AlignedBuffer::allocate(total, kIoAlignment, o.pin_memory());
    if (!pool.is_ok() && o.pin_memory()) {
      ZINF_LOG(kWarn) << "offload_optimizer.pin_memory: " << pool.status().message()
                      << "; using unpinned buffers";
      pool = AlignedBuffer::allocate(total);
    }
    if (!pool.is_ok()) return pool.status();
    pool_ = std::move(*pool);
    std::span<std::byte> regions[] = {pool_.bytes()};
    return store_->register_buffers(regions);
  }

  Status initialize(const SubGroupFn& init) {
    for (std::uint64_t i = 0; i < shape_.sub_groups(); ++i) {
      SubGroup sg = view(i, 0);
      ZINF_RETURN_IF_ERROR(init(sg));
      ZINF_RETURN_IF_ERROR(write(i, 0, 0));
      ZINF_RETURN_IF_ERROR(wait(0));
    }
    return Status::ok();
  }

  Status update(const SubGroupFn& fn, StepStats& stats) override {
    const std::uint64_t n = shape_.sub_groups();
    const auto k = static_cast<std::uint64_t>(sets_);
    const swap::SwapStats before = store_->stats();
    Status error;
    auto note = [&](Status s) {
      if (error.is_ok() && !s.is_ok()) error = std::move(s);
    };
    for (std::uint64_t i = 0; i < std::min(n, k - 1); ++i) note(read(i, i % k, slot_[i]));
    for (std::uint64_t i = 0; i < n && error.is_ok(); ++i) {
      const int set = static_cast<int>(i % k);
      const auto t_read = Clock::now();
      note(wait(set));
      stats.read_s += since(t_read);
      if (!error.is_ok()) break;
      // The helper recycles the set of sub-group i-1 for sub-group i+k-1.
      auto helper = std::async(std::launch::async, [&, i]() -> Status {
        const int recycled = static_cast<int>((i + k - 1) % k);
        if (i >= 1) ZINF_RETURN_IF_ERROR(wait(recycled));
        if (i + k - 1 < n) ZINF_RETURN_IF_ERROR(read(i + k - 1, recycled, slot_[i + k - 1]));
        return Status::ok();
      });
      SubGroup sg = view(i, set);
      const auto t_compute = Clock::now();
      note(fn(sg));
      stats.compute_s += since(t_compute);
      note(helper.get());
      if (error.is_ok()) note(write(i, set, 1 - slot_[i]));
    }
    const auto t_drain = Clock::now();
    for (int set = 0; set < sets_; ++set) note(wait(set));
    stats.write_s += since(t_drain);
    const swap::SwapStats after = store_->stats();
    stats.bytes_read += after.bytes_read - before.bytes_read;
    stats.bytes_written += after.bytes_written - before.bytes_written;
    stats.sub_groups = n;
    if (!error.is_ok()) return error;
    for (auto& s : slot_) s = 1 - s;
    return Status::ok();
  }

  Status read(const SubGroupFn& fn) override {
    for (std::uint64_t i = 0; i < shape_.sub_groups(); ++i) {
      ZINF_RETURN_IF_ERROR(read(i, 0, slot_[i]));
      ZINF_RETURN_IF_ERROR(wait(0));
      SubGroup sg = view(i, 0);
      ZINF_RETURN_IF_ERROR(fn(sg));
    }
    return Status::ok();
  }

  TierBytes bytes() const override { return {pool_.size(), store_->stats().live_bytes}; }

 private:
  static constexpr const char* kStateNames[] = {"master", "state1", "state2"};

  std::uint64_t count(std::uint64_t i) const {
    return std::min(shape_.sub_group_size, shape_.elements - i * shape_.sub_group_size);
  }

  float* buffer(int set, int state) const {
    return reinterpret_cast<float*>(pool_.data() + static_cast<std::uint64_t>(set) * set_bytes_ +
                                    static_cast<std::uint64_t>(state) *
                                        (set_bytes_ / shape_.num_states));
  }

  SubGroup view(std::uint64_t i, int set) const {
    SubGroup sg;
    sg.index = i;
    sg.begin = i * shape_.sub_group_size;
    sg.count = count(i);
    for (int s = 0; s < shape_.num_states; ++s) sg.state[s] = buffer(set, s);
    return sg;
  }

  static std::string key(std::uint64_t i, int state, int slot) {
    return "sg" + std::to_string(i) + "/" + kStateNames[state] + "@" + std::to_string(slot);
  }

  // Starts the transfers of sub-group i's states into/out of `set`.
  Status start(std::uint64_t i, int set, int slot, bool is_read) {
    for (int s = 0; s < shape_.num_states; ++s) {
      auto* b = reinterpret_cast<std::byte*>(buffer(set, s));
      const std::span<std::byte> data{b, count(i) * sizeof(float)};
      auto t = is_read ? store_->read(key(i, s, slot), data) : store_->write(key(i, s, slot), data);
      if (!t.is_ok()) return t.status();
      pending_[set].push_back(*t);
    }
    return Status::ok();
  }
  Status read(std::uint64_t i, int set, int slot) { return start(i, set, slot, true); }
  Status write(std::uint64_t i, int set, int slot) { return start(i, set, slot, false); }

  // Waits for everything in flight on `set`; the first error wins.
  Status wait(int set) {
    Status first;
    for (auto t : pending_[set]) {
      Status s = store_->wait(t);
      if (first.is_ok() && !s.is_ok()) first = std::move(s);
    }
    pending_[set].clear();
    return first;
  }

  TierShape shape_;
  int sets_;
  std::vector<int> slot_;  // the current slot of each sub-group
  std::unique_ptr<swap::SwapStore> store_;
  AlignedBuffer pool_;
  std::uint64_t set_bytes_ = 0;
  std::vector<swap::SwapTicket> pending_[16];
};

}  // namespace

Result<std::unique_ptr<StateTier>> make_nvme_tier(const TierShape& shape, const OffloadOptions& o,
                                                  const char* algorithm, const SubGroupFn& init) {
  if (o.nvme_path().empty()) {
    return Status::invalid_argument(
        "offload_optimizer.nvme_path (OffloadOptions::nvme_path) is required for device nvme");
  }
  // Two sets overlap I/O with compute; three also overlap the read of i+1
  // with the write of i-1, so that is what an unset buffer_count gets.
  const std::uint32_t needed = 2 * static_cast<std::uint32_t>(shape.num_states);
  const std::uint32_t buffers =
      o.buffer_count() == 0 ? 3 * static_cast<std::uint32_t>(shape.num_states) : o.buffer_count();
  if (buffers < needed) {
    return Status::invalid_argument(
        "offload_optimizer.buffer_count (OffloadOptions::buffer_count) = " +
        std::to_string(buffers) + " is too few for the pipelined " + algorithm +
        " step on NVMe: it needs " + std::to_string(needed) + " (" +
        std::to_string(shape.num_states) +
        " fp32 state arrays for 2 sub-groups in flight); raise buffer_count to " +
        std::to_string(needed) + " or more");
  }
  const int sets = static_cast<int>(
      std::min<std::uint32_t>(buffers / static_cast<std::uint32_t>(shape.num_states), 16));
  auto tier = std::make_unique<NvmeTier>(shape, sets);
  ZINF_RETURN_IF_ERROR(tier->open(o));
  ZINF_RETURN_IF_ERROR(tier->initialize(init));
  return std::unique_ptr<StateTier>(std::move(tier));
}

}  // namespace zinf::offload
