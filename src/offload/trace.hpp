// The engine's step timeline (zinf.trace_path): a Chrome trace in the JSON
// array format that Perfetto and chrome://tracing open. The process is the
// rank; each stage is a track (a named thread) holding one complete event
// per busy period, the same periods the StepReport's times are the lengths
// of, so a track's spans in a step add up to that step's figure. Each span
// carries its step; counters (device bytes, pinned bytes in use, loss
// scale) come once a step, pinned bytes also once a micro-step. Each NVMe
// transfer, copy and collective, and each unit's forward and backward, is
// an async span of its own (transfer());
// each CPU optimizer thread and each NVMe lane has a track of its own
// (named_spans()), and so has each thread that ran LibTorch operators
// (ops(): a complete event per outermost operator).
//
// Threads: the engine's, one at a time. A write error is logged once, and
// the run goes on without its trace.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/common/status.hpp"

namespace zinf::offload {

// A LibTorch operator's run, as OpRecorder saw it.
struct OpSpan {
  std::string name;  // "aten::addmm"
  int thread = 0;    // 1, 2, ... in the order threads first ran an operator
  Interval when;
};

// Every LibTorch operator run in the process while one lives (a global
// RecordFunction callback: functions and autograd's backward functions),
// the outermost on each thread only (aten::linear, not the aten::t and
// aten::addmm it runs), for a trace to show what ran inside a unit's span. The host clock at the
// operator's start and end: on the emulated device the kernel itself, on
// CUDA its launch. One records at a time: a second, while the first lives,
// records nothing (and says so). Threads: the callback runs on whichever
// thread runs an operator; take() from any.
class OpRecorder {
 public:
  static std::unique_ptr<OpRecorder> start();
  ~OpRecorder();
  OpRecorder(const OpRecorder&) = delete;
  OpRecorder& operator=(const OpRecorder&) = delete;
  std::vector<OpSpan> take();  // the operators that ended since the last call

 private:
  OpRecorder() = default;
  std::uint64_t handle_ = 0;
  bool active_ = false;
};

class Trace {
 public:
  enum Track : int {
    kStep,             // the update
    kForwardBackward,  // each micro-step's forward and backward
    kCompute,          // the compute stream working: forward and backward less stalls
    kStall,            // compute waiting for parameters
    kParamReads,       // NVMe reads of parameters
    kH2d,
    kD2h,
    kOptimizerIo,  // the update's NVMe reads and writes, parameter write-back included
    kComm,         // collectives in flight
    kCpuAdam,      // the optimizer's CPU kernel (its waits for parameter write-back excluded)
    kTracks
  };
  static const char* name(Track track);

  // `path` as it is for a world of one, <stem>.rank<R><extension> otherwise.
  static std::filesystem::path path_for(const std::filesystem::path& path, int rank, int world);
  // A new file (replacing one there), its tracks named.
  static Result<std::unique_ptr<Trace>> open(const std::filesystem::path& path, int rank);
  ~Trace();  // closes the array
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;

  // Disjoint intervals (merged()), each one span.
  void spans(Track track, const std::vector<Interval>& periods, std::uint64_t step);
  // Disjoint intervals on a track of their own, made when first used: a CPU
  // optimizer thread's ("cpu adam thread N"), an NVMe lane's ("nvme
  // parameters lane N reads").
  void named_spans(const std::string& track, const std::vector<Interval>& periods,
                   std::uint64_t step);
  // Each operator that ran inside `window` (the engine's forward and
  // backward, or its update) a complete event on its thread's track ("ops:
  // thread N"); the caller's own work between them is left out.
  void ops(const std::vector<OpSpan>& ops, Interval window, std::uint64_t step);
  void counter(const char* name, SteadyClock::time_point at, double value);
  // One transfer, from its start to its completion, as an async span of
  // `category` (Perfetto puts a category's overlapping spans on rows of
  // their own) named after what it moved, with its step, bytes, `op` and,
  // for optimizer state, its sub-group. Categories: "parameters" and
  // "optimizer state" (NVMe, op "read" or "write"), "copies: <stream>" (op
  // "copy"), "collectives: <channel>" (op the collective), "compute: units"
  // (op "forward" or "backward", no bytes).
  struct Transfer {
    std::string category;
    std::string name;
    std::string op;
    std::uint64_t bytes;
    Interval when;
    std::int64_t sub_group = -1;  // none
  };
  void transfer(const Transfer& t, std::uint64_t step);

 private:
  Trace(std::ofstream out, std::filesystem::path path, int rank);
  void event(const std::string& json);
  void name_track(int tid, const std::string& name);  // a thread_name and its sort index
  int named_track(const std::string& track);          // named_spans()' tid, named when new
  void spans_on(int tid, const std::string& name, const std::vector<Interval>& periods,
                std::uint64_t step);
  double micros(SteadyClock::time_point t) const;

  std::ofstream out_;
  std::filesystem::path path_;
  int rank_;
  SteadyClock::time_point origin_ = SteadyClock::now();
  bool first_ = true;
  std::uint64_t next_id_ = 0;
  std::map<std::string, int> named_;  // named_spans()' tracks: their tids
  bool failed_ = false;
};

}  // namespace zinf::offload
