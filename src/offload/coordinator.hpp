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
//     used furthest in the future first; so does a fetch on demand that
//     finds the device full (Actions::fetch failing with kResourceExhausted);
//   - at the end of a micro-step every unit is released.
// Resident units (home on the device) are never fetched or released.
//
// Gathers (Options::gather_on_use: stage 3 across ranks, where every use of
// a unit is an all-gather of the ranks' shards into its copy). The ranks'
// collectives must come in the same order, and a rank's fetches depend on
// its own memory, so the gathers follow positions, not fetches: each use's
// gather is issued in use order, and while replaying, the gathers of the
// next positions within prefetch_bucket elements of the next use are issued
// ahead, in order, each once its unit is live, not in use, and not used
// again before that position (else the rest wait for a later use): the same
// positions on every rank, reached sooner or later. When a micro-step leaves
// the trace, or ends, every rank waits for its gathers and takes part in
// those of the positions any rank may have issued that it had not
// (Actions::gather_unused); their results are never read, as a use off the
// trace gathers anew.
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
    bool gather_on_use = false;
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
    // Start gathering it onto the device; kResourceExhausted: no device memory now.
    virtual Status fetch(std::size_t unit) = 0;
    virtual void release(std::size_t unit) = 0;  // free its device copy
    virtual bool stage(std::size_t unit) = 0;    // start reading it ahead; false: no buffer free
    virtual void unstage(std::size_t unit) = 0;  // drop a read-ahead that will not be used
    // gather_on_use: issue the gather of the unit's next use into its copy
    // (live); wait for every gather issued; take part in one whose result
    // nobody uses (into scratch), and wait for it.
    virtual void gather(std::size_t /*unit*/) {}
    virtual Status wait_gathers() { return Status::ok(); }
    virtual Status gather_unused(std::size_t /*unit*/) { return Status::ok(); }
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
  // not kept: the next micro-step records again. Errors: the gathers'.
  Status end_micro_step(bool whole = true);

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
  void gather_ahead();
  Status settle_gathers();
  // The next position after `position` at which `unit` is used, or kNever.
  std::size_t next_use(std::size_t unit, std::size_t position) const;
  // Elements used by the trace strictly between positions a and b.
  std::uint64_t elements_between(std::size_t a, std::size_t b) const;
  // The idle live unit to release first to make room, or kNever.
  std::size_t victim() const;
  // This micro-step follows a complete trace (so far).
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
  std::size_t gather_next_ = 0;  // the next position whose gather is not issued
  std::size_t gather_end_ = 0;   // every rank issues the gathers of the positions before it
  CoordinatorStats stats_;
  std::vector<std::size_t> prefetch_log_;
};

}  // namespace zinf::offload
