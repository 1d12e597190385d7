// Busy time as the union of intervals. A stage of the pipeline (a copy
// stream, an NVMe store's reads, the CPU optimizer) is busy while at least one
// of its activities runs; activities that overlap count once. Overlap between
// stages is then measured, not assumed: a phase whose wall time is close to
// its busiest stage's busy time hides the other stages.
//
// Thread safety: BusyLog may be used from any number of threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace zinf {

using SteadyClock = std::chrono::steady_clock;

struct Interval {
  SteadyClock::time_point begin;
  SteadyClock::time_point end;
  double seconds() const { return std::chrono::duration<double>(end - begin).count(); }
};

// The union of `intervals` (in any order, overlapping or not) as disjoint
// intervals in time order.
std::vector<Interval> merged(std::vector<Interval> intervals);
// Its length.
double union_seconds(std::vector<Interval> intervals);

// `periods` less `holes` (each in any order, overlapping or not), as
// disjoint intervals in time order.
std::vector<Interval> subtract(const std::vector<Interval>& periods,
                               const std::vector<Interval>& holes);

// Intervals clipped to [from, to); those outside are dropped.
std::vector<Interval> clip(const std::vector<Interval>& intervals, SteadyClock::time_point from,
                           SteadyClock::time_point to);

class BusyLog {
 public:
  // An activity starts / ends. The log is busy while any activity is open;
  // each busy period becomes one interval.
  void begin();
  void end();
  // One activity that ran from `begin` to `end` (measured elsewhere).
  void add(Interval interval);
  // The busy periods since the last take(); a period still open is cut at
  // now (and continues from now).
  std::vector<Interval> take();

 private:
  std::mutex mutex_;
  std::size_t open_ = 0;
  SteadyClock::time_point open_since_;
  std::vector<Interval> done_;
};

// One activity as it ran (a copy, a collective), for a trace: when, how
// many bytes, and what it moved.
struct Span {
  Interval when;
  std::uint64_t bytes = 0;
  std::string what;
  std::string op;  // the kind of work: empty for a copy
};

// Spans, kept only while on: off, a producer checks on() and builds nothing.
class SpanLog {
 public:
  void set_on(bool on) { on_.store(on, std::memory_order_relaxed); }
  bool on() const { return on_.load(std::memory_order_relaxed); }
  void add(Span span);
  std::vector<Span> take();

 private:
  std::atomic<bool> on_{false};
  std::mutex mutex_;
  std::vector<Span> spans_;
};

}  // namespace zinf
