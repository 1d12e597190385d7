// IoQueue: the written I/O error policy, applied in one place for every
// engine (see the table in include/zinf/swap/io_engine.hpp). Each accepted
// request holds one slot until it is finished: retries and the remainders of
// short transfers reuse the slot, so the engine never sees more than its
// queue depth.
#include <algorithm>
#include <cerrno>
#include <deque>
#include <vector>

#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf::swap {

struct IoQueue::State {
  struct Slot {
    IoRequest request;       // as the caller gave it
    std::uint32_t done = 0;  // bytes transferred so far
    int retries = 0;
    bool cancelled = false;  // in flight when the engine was asked to cancel
    bool lost = false;       // reported lost; the slot is held until its completion
  };

  IoQueueOptions options;
  std::vector<Slot> slots;
  std::vector<std::uint32_t> free;
  std::deque<IoResult> finished;
  std::vector<IoCompletion> completions;
  std::vector<IoRequest> batch;
  Status fatal;

  std::string describe(const IoEngine& engine, const Slot& s) const {
    const IoRequest& r = s.request;
    return std::string(r.op == IoOp::kRead ? "read " : "write ") + engine.file_path(r.file) +
           " at offset " + std::to_string(r.offset + s.done) + " length " +
           std::to_string(r.length - s.done) + " (request offset " + std::to_string(r.offset) +
           " length " + std::to_string(r.length) + ")";
  }

  // The engine request for what is left of slot `i`.
  IoRequest remainder(std::uint32_t i) const {
    IoRequest r = slots[i].request;
    r.offset += slots[i].done;
    r.buffer = static_cast<std::byte*>(r.buffer) + slots[i].done;
    r.length -= slots[i].done;
    r.user_data = i;
    return r;
  }

  void finish(std::uint32_t i, Status status) {
    finished.push_back({slots[i].request.user_data, std::move(status), false});
    slots[i].cancelled = false;
    slots[i].lost = false;
    free.push_back(i);
  }

  // The slots whose request is in flight and not lost.
  std::vector<std::uint32_t> stuck() const {
    std::vector<bool> is_free(slots.size(), false);
    for (std::uint32_t i : free) is_free[i] = true;
    std::vector<std::uint32_t> out;
    for (std::uint32_t i = 0; i < slots.size(); ++i) {
      if (!is_free[i] && !slots[i].lost) out.push_back(i);
    }
    return out;
  }

  std::string timeout_text() const {
    return std::to_string(options.completion_timeout.count()) + " ms";
  }

  // Nothing completed for a whole timeout: requests not yet cancelled are
  // cancelled (true: wait once more); requests cancelled a timeout ago are
  // reported lost.
  bool cancel_or_lose(IoEngine& engine) {
    const std::vector<std::uint32_t> waiting = stuck();
    if (waiting.empty()) return false;
    const std::string first = describe(engine, slots[waiting.front()]);
    if (std::any_of(waiting.begin(), waiting.end(),
                    [&](std::uint32_t i) { return !slots[i].cancelled; })) {
      ZINF_LOG(kWarn) << engine.name() << ": " << waiting.size()
                      << " request(s) got no completion within " << timeout_text()
                      << " (first: " << first << "); cancelling them";
      for (std::uint32_t i : waiting) slots[i].cancelled = true;
      engine.cancel_all();
      return true;
    }
    for (std::uint32_t i : waiting) {
      slots[i].lost = true;
      finished.push_back(
          {slots[i].request.user_data,
           Status(StatusCode::kIoError,
                  "lost completion: no completion within " + timeout_text() + ", nor within " +
                      timeout_text() + " of being cancelled: " + describe(engine, slots[i]) +
                      "; the kernel may still use its buffer",
                  0, false),
           true});
    }
    ZINF_LOG(kError) << engine.name() << ": " << waiting.size()
                     << " request(s) lost (first: " << first
                     << "); their slots and buffers stay held until the kernel returns them";
    if (stuck().empty() && free.empty()) {
      fatal = Status(StatusCode::kIoError, "every slot of the " + std::string(engine.name()) +
                                               " queue holds a lost request (first: " + first +
                                               "); the queue refuses further work");
    }
    return true;
  }
};

IoQueue::IoQueue(std::unique_ptr<IoEngine> engine, IoQueueOptions options)
    : engine_(std::move(engine)), state_(std::make_unique<State>()) {
  state_->options = options;
  const std::uint32_t depth = engine_->queue_depth();
  state_->slots.resize(depth);
  state_->free.reserve(depth);
  for (std::uint32_t i = depth; i > 0; --i) state_->free.push_back(i - 1);
  state_->completions.resize(depth);
  state_->batch.reserve(depth);
}

IoQueue::~IoQueue() {
  // Requests still in flight reference caller memory: wait for them (bounded
  // by the completion timeout) before the engine goes away. The buffers of
  // those the kernel still has then are kept from the allocator for the
  // process's life (keep_for_lost_io): a late transfer must not land in
  // memory given to someone else. A failed queue does not wait (a refused
  // submission never completes) and keeps every buffer it still holds.
  State& s = *state_;
  std::vector<bool> out(s.slots.size(), true);
  for (std::uint32_t i : s.free) out[i] = false;
  const auto deadline = std::chrono::steady_clock::now() + s.options.completion_timeout;
  while (s.fatal.is_ok() && engine_->in_flight() > 0 &&
         std::chrono::steady_clock::now() < deadline) {
    auto n = engine_->reap(s.completions, 1, s.options.completion_timeout);
    if (!n.is_ok()) break;
    for (std::size_t k = 0; k < *n; ++k) {
      if (s.completions[k].user_data < out.size()) out[s.completions[k].user_data] = false;
    }
  }
  if (engine_->in_flight() == 0) return;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!out[i]) continue;
    const IoRequest& r = s.slots[i].request;
    keep_for_lost_io({static_cast<const std::byte*>(r.buffer), r.length});
    ZINF_LOG(kError) << engine_->name() << ": closing while the kernel still has the "
                     << s.describe(*engine_, s.slots[i])
                     << "; its buffer is kept from the allocator";
  }
}

Result<std::size_t> IoQueue::submit(std::span<const IoRequest> requests) {
  State& s = *state_;
  if (!s.fatal.is_ok()) return s.fatal;
  const std::size_t n = std::min(requests.size(), s.free.size());
  s.batch.clear();
  for (std::size_t k = 0; k < n; ++k) {
    const IoRequest& r = requests[k];
    if (r.buffer == nullptr || r.length == 0) {
      return Status::invalid_argument("io request " + std::to_string(k) +
                                      ": null buffer or zero length");
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint32_t i = s.free.back();
    s.free.pop_back();
    s.slots[i] = {requests[k], 0, 0};
    s.batch.push_back(s.remainder(i));
  }
  Status st = engine_->submit(s.batch);
  if (!st.is_ok()) {
    s.fatal = st.with_context(std::string(engine_->name()) + " submit");
    return s.fatal;
  }
  return n;
}

Result<std::size_t> IoQueue::wait(std::span<IoResult> out, std::size_t min_done) {
  State& s = *state_;
  min_done = std::min(min_done, pending());
  while (s.finished.size() < min_done) {
    if (!s.fatal.is_ok()) {
      if (s.finished.empty()) return s.fatal;
      break;  // hand over what finished first
    }
    const auto started = std::chrono::steady_clock::now();
    ZINF_ASSIGN_OR_RETURN(std::size_t got,
                          engine_->reap(s.completions, 1, s.options.completion_timeout));
    if (got == 0 && std::chrono::steady_clock::now() - started < s.options.completion_timeout) {
      break;  // woken: the caller has new work to submit
    }
    if (got == 0) {
      if (!s.cancel_or_lose(*engine_)) break;
      continue;
    }
    s.batch.clear();
    for (std::size_t k = 0; k < got; ++k) {
      const IoCompletion& c = s.completions[k];
      if (c.user_data >= s.slots.size()) {
        s.fatal = Status::internal("completion for unknown request " + std::to_string(c.user_data));
        return s.fatal;
      }
      const auto i = static_cast<std::uint32_t>(c.user_data);
      State::Slot& slot = s.slots[i];
      const std::uint32_t left = slot.request.length - slot.done;
      if (slot.lost) {
        s.finish(i, c.result < 0
                        ? Status::from_errno(static_cast<int>(-c.result),
                                             "late completion: " + s.describe(*engine_, slot))
                        : Status::ok());
      } else if (c.result == -ECANCELED && slot.cancelled) {
        s.finish(i, Status(StatusCode::kIoError,
                           "timed out: no completion within " + s.timeout_text() +
                               ", then cancelled: " + s.describe(*engine_, slot),
                           ECANCELED, false));
      } else if (c.result < 0) {
        const int err = static_cast<int>(-c.result);
        if ((err == EINTR || err == EAGAIN) && slot.retries < kMaxRetries) {
          ++slot.retries;
          s.batch.push_back(s.remainder(i));
        } else {
          std::string what = s.describe(*engine_, slot);
          if (err == EINTR || err == EAGAIN)
            what += " after " + std::to_string(slot.retries) + " retries";
          Status st = Status::from_errno(err, what);
          // Retries exhausted is final: the caller must not loop on it.
          s.finish(i, Status(st.code(), st.message(), err, false));
        }
      } else if (c.result == 0) {
        s.finish(i,
                 slot.request.op == IoOp::kRead
                     ? Status::out_of_range("unexpected end of file: " + s.describe(*engine_, slot))
                     : Status(StatusCode::kIoError, "no progress: " + s.describe(*engine_, slot)));
      } else if (static_cast<std::uint64_t>(c.result) > left) {
        s.fatal = Status::internal("engine reported " + std::to_string(c.result) + " bytes for " +
                                   s.describe(*engine_, slot));
        return s.fatal;
      } else {
        slot.done += static_cast<std::uint32_t>(c.result);
        if (slot.done < slot.request.length) {
          s.batch.push_back(s.remainder(i));  // short transfer: continue where it stopped
        } else {
          s.finish(i, Status::ok());
        }
      }
    }
    if (!s.batch.empty()) {
      Status st = engine_->submit(s.batch);
      if (!st.is_ok()) {
        s.fatal = st.with_context(std::string(engine_->name()) + " resubmit");
        return s.fatal;
      }
    }
  }
  const std::size_t n = std::min(out.size(), s.finished.size());
  std::move(s.finished.begin(), s.finished.begin() + static_cast<std::ptrdiff_t>(n), out.begin());
  s.finished.erase(s.finished.begin(), s.finished.begin() + static_cast<std::ptrdiff_t>(n));
  return n;
}

const Status& IoQueue::status() const { return state_->fatal; }

std::size_t IoQueue::pending() const {
  return state_->slots.size() - state_->free.size() + state_->finished.size();
}

std::size_t IoQueue::free_slots() const { return state_->free.size(); }

}  // namespace zinf::swap
