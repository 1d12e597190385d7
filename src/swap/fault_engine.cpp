// The fault-injecting decorator. It sits between IoQueue and a real engine, so
// every error-policy path of IoQueue runs against every real engine. Faults
// are decided per request from a seeded generator (or on the nth request) and
// are reported exactly as a kernel would: a negative errno, a short count, a
// late completion, or none at all.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <deque>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "swap/engines.hpp"
#include "zinf/common/aligned.hpp"

namespace zinf::swap {
namespace {

class FaultEngine final : public IoEngine {
 public:
  FaultEngine(std::unique_ptr<IoEngine> inner, FaultSpec spec)
      : inner_(std::move(inner)), spec_(spec), rng_(spec.seed) {}

  std::string_view name() const override { return inner_->name(); }
  Result<int> add_file(int fd, const std::string& path) override {
    return inner_->add_file(fd, path);
  }
  const std::string& file_path(int file) const override { return inner_->file_path(file); }
  Status register_buffers(std::span<const std::span<std::byte>> regions) override {
    return inner_->register_buffers(regions);
  }
  bool fixed_buffers() const override { return inner_->fixed_buffers(); }

  Status submit(std::span<const IoRequest> requests) override {
    if (requests.size() > free_slots()) {
      return Status::resource_exhausted("fault engine: requests exceed the free queue slots");
    }
    pass_.clear();
    for (IoRequest r : requests) {
      switch (decide(r)) {
        case Decision::kPass:
          break;
        case Decision::kFail:
          synthetic_.push_back({r.user_data, -static_cast<std::int64_t>(error_for(r))});
          continue;
        case Decision::kShort:
          r.length = static_cast<std::uint32_t>((r.length / 2) / kIoAlignment * kIoAlignment);
          break;
        case Decision::kDelay:
          delayed_ids_.insert(r.user_data);
          break;
        case Decision::kDrop:
          dropped_ids_.insert(r.user_data);
          break;
        case Decision::kFlip:
          flipped_[r.user_data] = static_cast<std::byte*>(r.buffer);
          break;
      }
      pass_.push_back(r);
    }
    return inner_->submit(pass_);
  }

  Result<std::size_t> reap(std::span<IoCompletion> out, std::size_t min_complete,
                           std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t got = 0;
    auto emit = [&](std::deque<IoCompletion>& from) {
      while (!from.empty() && got < out.size()) {
        out[got++] = from.front();
        from.pop_front();
      }
    };
    for (;;) {
      emit(synthetic_);
      release_due();
      emit(released_);
      if (got >= min_complete || got == out.size() || woken_.exchange(false)) return got;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return got;
      // Wait on the inner engine, but no longer than the next delayed
      // completion is due.
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      if (!held_.empty()) {
        wait = std::min(
            wait, std::chrono::duration_cast<std::chrono::milliseconds>(held_.front().due - now) +
                      std::chrono::milliseconds(1));
      }
      buffer_.resize(std::max<std::size_t>(out.size(), 1));
      ZINF_ASSIGN_OR_RETURN(std::size_t n,
                            inner_->reap(std::span(buffer_).first(out.size() - got), 1, wait));
      for (std::size_t i = 0; i < n; ++i) {
        const IoCompletion& c = buffer_[i];
        if (dropped_ids_.erase(c.user_data) != 0) {
          swallowed_.push_back(c.user_data);
        } else if (cancelled_ids_.erase(c.user_data) != 0) {
          out[got++] = {c.user_data, -ECANCELED};
        } else if (auto f = flipped_.find(c.user_data); f != flipped_.end()) {
          if (c.result > 0) {
            const auto at = static_cast<std::size_t>(rng_() % static_cast<std::uint64_t>(c.result));
            f->second[at] ^= std::byte{1} << (rng_() % 8);
          }
          flipped_.erase(f);
          out[got++] = c;
        } else if (delayed_ids_.erase(c.user_data) != 0) {
          held_.push_back({c, std::chrono::steady_clock::now() + spec_.delay});
        } else {
          out[got++] = c;
        }
      }
    }
  }

  std::size_t in_flight() const override {
    return inner_->in_flight() + synthetic_.size() + held_.size() + released_.size() +
           swallowed_.size();
  }

  // A dropped completion comes back cancelled; a delayed one does not (the
  // device holds it). The inner engine cancels what is really in flight.
  void cancel_all() override {
    for (std::uint64_t id : swallowed_) synthetic_.push_back({id, -ECANCELED});
    swallowed_.clear();
    cancelled_ids_.merge(dropped_ids_);
    inner_->cancel_all();
  }
  std::uint32_t queue_depth() const override { return inner_->queue_depth(); }
  void wake() override {
    woken_ = true;
    inner_->wake();
  }

 private:
  enum class Decision { kPass, kFail, kShort, kDelay, kDrop, kFlip };
  struct Held {
    IoCompletion completion;
    std::chrono::steady_clock::time_point due;
  };

  Decision decide(const IoRequest& r) {
    if (spec_.only && *spec_.only != r.op) return Decision::kPass;
    ++seen_;
    if (injected_ >= spec_.max_faults) return Decision::kPass;
    const bool hit =
        spec_.nth != 0 ? seen_ == spec_.nth : std::bernoulli_distribution(spec_.rate)(rng_);
    if (!hit) return Decision::kPass;
    // A short transfer needs at least two blocks to stay block aligned.
    if (spec_.kind == FaultKind::kShort && r.length < 2 * kIoAlignment) return Decision::kPass;
    if (spec_.kind == FaultKind::kFlip && r.op != IoOp::kRead) return Decision::kPass;
    ++injected_;
    switch (spec_.kind) {
      case FaultKind::kShort:
        return Decision::kShort;
      case FaultKind::kDelay:
        return Decision::kDelay;
      case FaultKind::kDrop:
        return Decision::kDrop;
      case FaultKind::kFlip:
        return Decision::kFlip;
      default:
        return Decision::kFail;
    }
  }

  int error_for(const IoRequest& r) const {
    switch (spec_.kind) {
      case FaultKind::kEnospc:
        return r.op == IoOp::kWrite ? ENOSPC : EIO;
      case FaultKind::kEintr:
        return EINTR;
      case FaultKind::kEagain:
        return EAGAIN;
      default:
        return EIO;
    }
  }

  void release_due() {
    const auto now = std::chrono::steady_clock::now();
    std::stable_sort(held_.begin(), held_.end(),
                     [](const Held& a, const Held& b) { return a.due < b.due; });
    while (!held_.empty() && held_.front().due <= now) {
      released_.push_back(held_.front().completion);
      held_.pop_front();
    }
  }

  std::unique_ptr<IoEngine> inner_;
  const FaultSpec spec_;
  std::mt19937_64 rng_;
  std::uint64_t seen_ = 0;
  std::uint64_t injected_ = 0;
  std::vector<std::uint64_t> swallowed_;  // dropped: the inner completion came and was kept
  std::vector<IoRequest> pass_;
  std::vector<IoCompletion> buffer_;
  std::deque<IoCompletion> synthetic_;
  std::deque<Held> held_;
  std::atomic<bool> woken_{false};  // wake() since the last reap returned
  std::deque<IoCompletion> released_;
  std::unordered_set<std::uint64_t> delayed_ids_;
  std::unordered_set<std::uint64_t> dropped_ids_;
  std::unordered_set<std::uint64_t> cancelled_ids_;        // dropped, cancelled before they came
  std::unordered_map<std::uint64_t, std::byte*> flipped_;  // reads to flip a bit of, by id
};

}  // namespace

std::unique_ptr<IoEngine> make_fault_injecting_engine(std::unique_ptr<IoEngine> inner,
                                                      FaultSpec spec) {
  return std::make_unique<FaultEngine>(std::move(inner), spec);
}

}  // namespace zinf::swap
