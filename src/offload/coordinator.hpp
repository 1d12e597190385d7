// The parameter coordinator: which units are on the device, and which to
// fetch next. Pure logic over unit ids and sizes; the engine carries out its
// decisions (Actions) and tells it what ran (use / done).
//
// The trace. A micro-step is a forward and a backward; the trace is the
// order of unit uses in one micro-step (forward calls, then the pre-backward
// re-gathers), recorded on the first micro-step and replayed after it. A use
// that differs from the trace invalidates it: a warning (once), fetch on
// demand for the rest of the micro-step, and the next micro-step records
// afresh, so a changed order never fetches the wrong thing for long.
//
// The window (DeepSpeed's stage-3 semantics, sizes in elements):
//   - after each use, the next units of the trace are fetched ahead while
//     the elements fetched ahead and not yet used stay within
//     stage3_prefetch_bucket_size and the live elements within
//     stage3_max_live_parameters;
//   - beyond that window, units whose home is NVMe are staged (read into
//     pinned host buffers) as far as Actions::stage() has buffers;
//   - a unit done with is kept if the trace uses it again within
//     stage3_max_reuse_distance elements, else released;
//   - a fetch that would pass max_live first evicts idle live units, the one
//     used furthest in the future first;
//   - at the end of a micro-step every unit is released.
// Resident units (home on the device) are never fetched or released.
//
// Thread safety: none; the engine calls it from the compute thread.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "zinf/common/status.hpp"
#include "zinf/offload/engine.hpp"

namespace zinf::offload {

class Coordinator {
 public:
  struct Options {
    std::uint64_t prefetch_bucket = 50000000;
    std::uint64_t max_live = 1000000000;
    std::uint64_t max_reuse_distance = 1000000000;
  };

  struct Unit {
    std::string name;
    std::uint64_t numel = 0;
    bool resident = false;
    bool stageable = false;  // home on NVMe: can be read ahead into host buffers
  };

  // What the engine does on the coordinator's behalf.
  class Actions {
   public:
    virtual ~Actions() = default;
    virtual Status fetch(std::size_t unit) = 0;  // start gathering it onto the device
    virtual void release(std::size_t unit) = 0;  // free its device copy
    virtual bool stage(std::size_t unit) = 0;    // start reading it ahead; false: no buffer free
    virtual void unstage(std::size_t unit) = 0;  // drop a read-ahead that will not be used
  };

  Coordinator(std::vector<Unit> units, Options options, Actions& actions);

  void begin_micro_step(bool record);
  // The unit is about to run: fetched if it is not live (on demand), then the
  // window ahead of it is fetched and staged.
  Status use(std::size_t unit);
  // The unit has run (forward) or its gradients are off the device (backward).
  void done(std::size_t unit);
  // `whole`: the micro-step ran its forward and backward to the end. A
  // recording of one that did not (an error, a forward without backward) is
  // not kept: the next micro-step records again.
  void end_micro_step(bool whole = true);

  bool live(std::size_t unit) const { return state_[unit].live; }
  bool trace_complete() const { return complete_; }
  const std::vector<std::size_t>& trace() const { return trace_; }
  const CoordinatorStats& stats() const { return stats_; }
  // Units fetched ahead of use, in the order they were fetched (for tests).
  const std::vector<std::size_t>& prefetch_log() const { return prefetch_log_; }
  void clear_prefetch_log() { prefetch_log_.clear(); }

 private:
  struct State {
    bool live = false;
    bool staged = false;
    bool ahead = false;  // fetched ahead and not used yet
    int in_use = 0;
  };

  static constexpr std::size_t kNever = std::numeric_limits<std::size_t>::max();

  Status fetch(std::size_t unit, bool prefetch);
  void release(std::size_t unit);
  void prefetch_after(std::size_t position);
  // The next position after `position` at which `unit` is used, or kNever.
  std::size_t next_use(std::size_t unit, std::size_t position) const;
  // Elements used by the trace strictly between positions a and b.
  std::uint64_t elements_between(std::size_t a, std::size_t b) const;
  bool replaying() const { return complete_ && valid_; }

  std::vector<Unit> units_;
  Options options_;
  Actions& actions_;
  std::vector<State> state_;
  std::vector<std::size_t> trace_;
  std::vector<std::uint64_t> prefix_;  // prefix_[i]: elements of trace_[0, i)
  bool complete_ = false;              // trace_ holds a whole micro-step
  bool valid_ = true;                  // this micro-step has followed the trace so far
  bool recording_ = false;
  bool warned_ = false;
  std::size_t position_ = 0;  // uses so far in this micro-step
  std::uint64_t live_elements_ = 0;
  std::uint64_t ahead_elements_ = 0;
  CoordinatorStats stats_;
  std::vector<std::size_t> prefetch_log_;
};

}  // namespace zinf::offload
