// The host tier: one fp32 array per state over all elements, updated in
// place (the optimizer validates everything before the first write, and the
// engine restores from its own copy, so there is nothing to roll back here).
// replace() (a checkpoint's load) fills a second set of arrays and swaps it
// in, so that a load can check its file in the same pass.
#include <sys/mman.h>
#include <unistd.h>

#include <fstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "offload/state_tier.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::offload {
namespace {

class HostTier final : public StateTier {
 public:
  explicit HostTier(const TierShape& shape) : shape_(shape), pieces_(shape.pieces()) {}

  Status allocate(bool pin) {
    pinned_ = pin;
    for (int i = 0; i < shape_.num_states; ++i) {
      auto buf = AlignedBuffer::allocate(array_bytes(), kIoAlignment, pinned_);
      if (!buf.is_ok() && pinned_) {
        ZINF_LOG(kWarn) << "offload_optimizer.pin_memory: " << buf.status().message()
                        << "; using unpinned host memory";
        pinned_ = false;
        buf = AlignedBuffer::allocate(array_bytes());
      }
      if (!buf.is_ok()) return buf.status();
      arrays_.push_back(std::move(*buf));
    }
    return Status::ok();
  }

  Status update(const PieceFn& fn, StepStats& stats) override {
    const auto t0 = SteadyClock::now();
    Status s = read(fn);
    stats.compute_periods.push_back({t0, SteadyClock::now()});
    stats.compute_s += stats.compute_periods.back().seconds();
    stats.sub_groups = shape_.groups.size();
    return s;
  }

  // In place: nothing is read ahead, so nothing is saved by not reading.
  Status overwrite(const PieceFn& fn, StepStats& stats) override { return update(fn, stats); }

  Status replace(const PieceFn& fn, StepStats& stats) override {
    settle();
    const std::uint64_t bytes = array_bytes() * static_cast<std::uint64_t>(shape_.num_states);
    if (const std::uint64_t available = available_memory(); available < bytes + bytes / 8) {
      return Status::resource_exhausted(
          "offload_optimizer: a second copy of the state (" + format_bytes(bytes) +
          ") does not fit the host's available memory (" + format_bytes(available) + ")");
    }
    // Pinned once filled, not up front (mlock would fault every page in
    // before the first read is issued): a populator thread faults the pages
    // in just ahead of `fn`, while the reads are in flight.
    std::vector<AlignedBuffer> copy;
    for (int i = 0; i < shape_.num_states; ++i) {
      auto buf = AlignedBuffer::allocate(array_bytes());
      if (!buf.is_ok())
        return buf.status().with_context("offload_optimizer: a second copy of the state");
      copy.push_back(std::move(*buf));
    }
    const auto t0 = SteadyClock::now();
    Status s;
    {
      std::jthread populator([&](std::stop_token stop) { populate(copy, stop); });
      s = visit(copy, fn);
    }
    stats.compute_periods.push_back({t0, SteadyClock::now()});
    stats.compute_s += stats.compute_periods.back().seconds();
    if (!s.is_ok()) return s;
    // The new state is in place: pinning it (a page walk, 0.05 s for a
    // 700 MiB state) and releasing the old one (unlocking and unmapping,
    // 0.08 s) go on on a thread of their own, which every later use of the
    // tier waits for (settle()).
    retiring_ = std::jthread([this, old = std::exchange(arrays_, std::move(copy))]() mutable {
      for (AlignedBuffer& b : arrays_) {
        if (Status pinned = pinned_ ? b.lock() : Status::ok(); !pinned.is_ok()) {
          ZINF_LOG(kWarn) << "offload_optimizer.pin_memory: " << pinned.message()
                          << "; the loaded state stays in unpinned host memory";
          pinned_ = false;
        }
      }
      old.clear();
    });
    return s;
  }

  Status read(const PieceFn& fn) override {
    settle();
    return visit(arrays_, fn);
  }

  bool atomic() const override { return false; }

  TierBytes bytes() const override {
    settle();
    TierBytes b;
    for (const auto& a : arrays_) b.host += a.size();
    b.host_pinned = pinned_;
    return b;
  }

  std::size_t pieces() const override { return pieces_.size(); }

  TierIo take_io() override { return {}; }  // in memory: no storage traffic
  void record_transfers(bool) override {}

 private:
  std::uint64_t array_bytes() const { return shape_.elements() * sizeof(float); }

  Status visit(const std::vector<AlignedBuffer>& arrays, const PieceFn& fn) {
    for (Piece p : pieces_) {
      for (int k = 0; k < shape_.num_states; ++k) p.state[k] = arrays[k].as<float>() + p.begin;
      ZINF_RETURN_IF_ERROR(call_piece_fn(fn, p));
    }
    return Status::ok();
  }

  // Faults in the pages of `arrays` in the order visit() fills them, ahead
  // of it, so that the filling thread does not take a fault per page: a
  // second copy is all fresh pages (3 floats per element), and faulting
  // them in costs more than reading the file on a fast disk. The kernel
  // only maps them (MADV_POPULATE_WRITE changes no contents, so racing the
  // filling thread is harmless); a kernel without it (before Linux 5.14)
  // leaves the faults to the filling thread. Locking them here instead
  // (mlock faults them in too) was slower: mlock holds the address space's
  // lock for writing, which stalls the filling thread's faults and reads.
  void populate(const std::vector<AlignedBuffer>& arrays, const std::stop_token& stop) const {
#ifdef MADV_POPULATE_WRITE
    constexpr std::uint64_t kStride = 4 << 20;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    for (const Piece& p : pieces_) {
      for (int k = 0; k < shape_.num_states; ++k) {
        const auto* base = arrays[static_cast<std::size_t>(k)].as<float>();
        const auto begin = reinterpret_cast<std::uintptr_t>(base + p.begin) / page * page;
        const auto end = reinterpret_cast<std::uintptr_t>(base + p.begin + p.count);
        for (std::uintptr_t at = begin; at < end; at += kStride) {
          if (stop.stop_requested()) return;
          const std::uintptr_t len = std::min<std::uintptr_t>(kStride, end - at);
          if (::madvise(reinterpret_cast<void*>(at), len, MADV_POPULATE_WRITE) != 0) return;
        }
      }
    }
#else
    (void)arrays;
    (void)stop;
#endif
  }

  // MemAvailable: what the host can hand out without swapping (0 if unknown).
  static std::uint64_t available_memory() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    std::uint64_t kib = 0;
    while (meminfo >> key >> kib) {
      if (key == "MemAvailable:") return kib << 10;
      meminfo.ignore(64, '\n');
    }
    return 0;
  }

  TierShape shape_;
  std::vector<Piece> pieces_;
  std::vector<AlignedBuffer> arrays_;
  bool pinned_ = false;
  // Pinning the arrays a replace() filled and releasing those they took the
  // place of; settle() waits for it.
  mutable std::jthread retiring_;
  void settle() const {
    if (retiring_.joinable()) retiring_.join();
  }
};

}  // namespace

Result<std::unique_ptr<StateTier>> make_host_tier(const TierShape& shape, bool pin,
                                                  const PieceFn& init) {
  auto tier = std::make_unique<HostTier>(shape);
  ZINF_RETURN_IF_ERROR(tier->allocate(pin));
  ZINF_RETURN_IF_ERROR(tier->read(init));
  return std::unique_ptr<StateTier>(std::move(tier));
}

}  // namespace zinf::offload
