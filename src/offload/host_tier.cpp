// The host tier: one fp32 array per state over all elements, updated in
// place (the optimizer validates everything before the first write, and the
// engine restores from its own copy, so there is nothing to roll back here).
// replace() (a checkpoint's load) fills a second set of arrays and swaps it
// in, so that a load can check its file in the same pass.
#include <fstream>
#include <string>
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
    const std::uint64_t bytes = array_bytes() * static_cast<std::uint64_t>(shape_.num_states);
    if (const std::uint64_t available = available_memory(); available < bytes + bytes / 8) {
      return Status::resource_exhausted(
          "offload_optimizer: a second copy of the state (" + format_bytes(bytes) +
          ") does not fit the host's available memory (" + format_bytes(available) + ")");
    }
    // Pinned once filled: its pages then fault in as `fn` writes them,
    // while the reads it waits for are in flight, not all up front.
    std::vector<AlignedBuffer> copy;
    for (int i = 0; i < shape_.num_states; ++i) {
      auto buf = AlignedBuffer::allocate(array_bytes());
      if (!buf.is_ok())
        return buf.status().with_context("offload_optimizer: a second copy of the state");
      copy.push_back(std::move(*buf));
    }
    const auto t0 = SteadyClock::now();
    Status s = visit(copy, fn);
    stats.compute_periods.push_back({t0, SteadyClock::now()});
    stats.compute_s += stats.compute_periods.back().seconds();
    if (!s.is_ok()) return s;
    for (AlignedBuffer& b : copy) {
      if (Status pinned = pinned_ ? b.lock() : Status::ok(); !pinned.is_ok()) {
        ZINF_LOG(kWarn) << "offload_optimizer.pin_memory: " << pinned.message()
                        << "; the loaded state stays in unpinned host memory";
        pinned_ = false;
      }
    }
    arrays_ = std::move(copy);
    return s;
  }

  Status read(const PieceFn& fn) override { return visit(arrays_, fn); }

  bool atomic() const override { return false; }

  TierBytes bytes() const override {
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
