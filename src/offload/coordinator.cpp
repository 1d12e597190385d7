#include "offload/coordinator.hpp"

#include <algorithm>

#include "zinf/common/logging.hpp"

namespace zinf::offload {

Coordinator::Coordinator(std::vector<Unit> units, Options options, Actions& actions)
    : units_(std::move(units)), options_(options), actions_(actions), state_(units_.size()) {}

void Coordinator::begin_micro_step(bool record) {
  position_ = 0;
  valid_ = true;
  recording_ = record && !complete_;
  if (recording_) {
    trace_.clear();
    prefix_.assign(1, 0);
  }
  if (replaying()) {
    prefetch_after(0);
    gather_ahead();
  }
}

Status Coordinator::use(std::size_t unit) {
  if (units_[unit].resident) return Status::ok();
  const bool leaves = replaying() && (position_ >= trace_.size() || trace_[position_] != unit);
  if (leaves) ZINF_RETURN_IF_ERROR(settle_gathers());
  if (recording_) {
    trace_.push_back(unit);
    prefix_.push_back(prefix_.back() + units_[unit].numel);
  } else if (leaves) {
    valid_ = false;
    ++stats_.trace_invalidations;
    if (!warned_) {
      warned_ = true;
      ZINF_LOG(kWarn) << "unit '" << units_[unit].name << "' ran at position " << position_
                      << " of the micro-step, where the recorded trace has "
                      << (position_ < trace_.size() ? "'" + units_[trace_[position_]].name + "'"
                                                    : std::string("nothing"))
                      << "; fetching on demand and recording the order again (said once)";
    }
  }
  const std::size_t position = position_++;
  State& s = state_[unit];
  if (s.live) {
    if (s.ahead) {
      ++stats_.prefetch_hits;
      s.ahead = false;
      ahead_elements_ -= units_[unit].numel;
    } else {
      ++stats_.reuse_hits;
    }
  } else {
    ZINF_RETURN_IF_ERROR(fetch(unit, /*prefetch=*/false));
  }
  ++s.in_use;
  if (options_.gather_on_use && !(replaying() && position < gather_next_)) {
    actions_.gather(unit);
    if (replaying()) gather_next_ = position_;
  }
  if (replaying()) {
    prefetch_after(position_);
    gather_ahead();
  }
  return Status::ok();
}

void Coordinator::done(std::size_t unit) {
  if (units_[unit].resident) return;
  State& s = state_[unit];
  if (s.in_use > 0) --s.in_use;
  if (s.in_use > 0 || !s.live) return;
  if (replaying()) {
    const std::size_t q = next_use(unit, position_);
    if (q != kNever && elements_between(position_, q) <= options_.max_reuse_distance) return;
  }
  release(unit);
}

Status Coordinator::end_micro_step(bool whole) {
  const Status settled = settle_gathers();
  if (recording_ && valid_ && whole) complete_ = true;
  if (!valid_ || (recording_ && !whole)) complete_ = false;
  recording_ = false;
  for (std::size_t u = 0; u < units_.size(); ++u) {
    State& s = state_[u];
    s.in_use = 0;
    if (s.live) release(u);
    if (s.staged) {
      actions_.unstage(u);
      s.staged = false;
    }
  }
  return settled;
}

Status Coordinator::fetch(std::size_t unit, bool prefetch) {
  const std::uint64_t need = units_[unit].numel;
  // Make room: idle units, those kept for reuse before those fetched ahead,
  // the one used furthest in the future first.
  while (!prefetch && live_elements_ + need > options_.max_live) {
    const std::size_t v = victim();
    if (v == kNever) break;
    ++stats_.evictions;
    release(v);
  }
  if (live_elements_ + need > options_.max_live) {
    return Status::resource_exhausted(
        "unit '" + units_[unit].name + "' (" + std::to_string(need) +
        " elements) does not fit zero_optimization.stage3_max_live_parameters = " +
        std::to_string(options_.max_live) + " next to the " + std::to_string(live_elements_) +
        " elements of the units running now");
  }
  // A device that is full (of units kept for reuse or fetched ahead) makes
  // room the same way on demand; ahead of use, a full device ends the window.
  for (Status fetched = actions_.fetch(unit); !fetched.is_ok(); fetched = actions_.fetch(unit)) {
    const std::size_t v =
        prefetch || fetched.code() != StatusCode::kResourceExhausted ? kNever : victim();
    if (v == kNever) return fetched;
    ++stats_.evictions;
    release(v);
  }
  State& s = state_[unit];
  s.live = true;
  s.staged = false;
  live_elements_ += need;
  stats_.live_elements = live_elements_;
  stats_.peak_live_elements = std::max(stats_.peak_live_elements, live_elements_);
  if (prefetch) {
    s.ahead = true;
    ahead_elements_ += need;
    ++stats_.prefetches;
    prefetch_log_.push_back(unit);
  } else {
    ++stats_.fetches;
  }
  return Status::ok();
}

std::size_t Coordinator::victim() const {
  std::size_t victim = kNever;
  std::pair<int, std::size_t> best{-1, 0};
  for (std::size_t u = 0; u < units_.size(); ++u) {
    const State& s = state_[u];
    if (!s.live || s.in_use > 0 || units_[u].resident) continue;
    const std::pair<int, std::size_t> key{s.ahead ? 0 : 1, next_use(u, position_)};
    if (victim == kNever || key > best) {
      victim = u;
      best = key;
    }
  }
  return victim;
}

void Coordinator::release(std::size_t unit) {
  State& s = state_[unit];
  actions_.release(unit);
  s.live = false;
  live_elements_ -= units_[unit].numel;
  stats_.live_elements = live_elements_;
  if (s.ahead) {
    s.ahead = false;
    ahead_elements_ -= units_[unit].numel;
  }
  ++stats_.releases;
}

void Coordinator::prefetch_after(std::size_t position) {
  std::size_t i = position;
  for (; i < trace_.size(); ++i) {
    const std::size_t v = trace_[i];
    if (units_[v].resident || state_[v].live) continue;
    const std::uint64_t n = units_[v].numel;
    if (ahead_elements_ + n > options_.prefetch_bucket || live_elements_ + n > options_.max_live)
      break;
    // A failed prefetch (no device memory now) is retried on demand, where
    // its error surfaces.
    if (!fetch(v, /*prefetch=*/true).is_ok()) break;
  }
  for (; i < trace_.size(); ++i) {
    const std::size_t v = trace_[i];
    State& s = state_[v];
    if (!units_[v].stageable || s.live || s.staged) continue;
    if (!actions_.stage(v)) break;
    s.staged = true;
    ++stats_.staged;
  }
}

void Coordinator::gather_ahead() {
  if (!options_.gather_on_use) return;
  gather_end_ = std::max(gather_end_, position_);
  while (gather_end_ < trace_.size() &&
         prefix_[gather_end_ + 1] - prefix_[position_] <= options_.prefetch_bucket)
    ++gather_end_;
  for (; gather_next_ < gather_end_; ++gather_next_) {
    const std::size_t v = trace_[gather_next_];
    const auto from = trace_.begin() + static_cast<std::ptrdiff_t>(position_);
    const auto here = trace_.begin() + static_cast<std::ptrdiff_t>(gather_next_);
    if (!state_[v].live || state_[v].in_use > 0 || std::find(from, here, v) != here) return;
    actions_.gather(v);
    ++stats_.gathers_ahead;
  }
}

Status Coordinator::settle_gathers() {
  if (!options_.gather_on_use) return Status::ok();
  Status s = actions_.wait_gathers();
  for (; gather_next_ < gather_end_ && s.is_ok(); ++gather_next_)
    s = actions_.gather_unused(trace_[gather_next_]);
  gather_next_ = gather_end_ = 0;
  return s;
}

std::size_t Coordinator::next_use(std::size_t unit, std::size_t position) const {
  if (!replaying()) return kNever;
  for (std::size_t q = position; q < trace_.size(); ++q) {
    if (trace_[q] == unit) return q;
  }
  return kNever;
}

std::uint64_t Coordinator::elements_between(std::size_t a, std::size_t b) const {
  return prefix_[std::min(b, trace_.size())] - prefix_[std::min(a, trace_.size())];
}

}  // namespace zinf::offload
