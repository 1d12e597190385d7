#include "offload/trace.hpp"

#include <ATen/record_function.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "zinf/common/logging.hpp"

namespace zinf::offload {

namespace fs = std::filesystem;

namespace {

// The live recorder's sink; the callback is global and outlives nothing.
std::mutex g_ops_mutex;
std::optional<std::vector<OpSpan>> g_ops;  // empty: no recorder
std::atomic<int> g_next_thread{0};

struct OpStart final : at::ObserverContext {
  SteadyClock::time_point at;
};

// Operators nest (aten::linear runs aten::t and aten::addmm): only the
// outermost on each thread is kept, which is what the caller asked for.
thread_local int t_depth = 0;

std::unique_ptr<at::ObserverContext> op_started(const at::RecordFunction&) {
  if (t_depth++ > 0) return nullptr;
  auto start = std::make_unique<OpStart>();
  start->at = SteadyClock::now();
  return start;
}

void op_ended(const at::RecordFunction& fn, at::ObserverContext* context) {
  --t_depth;
  const auto* start = static_cast<const OpStart*>(context);
  if (start == nullptr) return;
  const auto end = SteadyClock::now();
  thread_local const int thread = ++g_next_thread;
  std::lock_guard lock(g_ops_mutex);
  if (g_ops) g_ops->push_back({fn.name(), thread, {start->at, end}});
}

}  // namespace

std::unique_ptr<OpRecorder> OpRecorder::start() {
  std::unique_ptr<OpRecorder> recorder(new OpRecorder());
  {
    std::lock_guard lock(g_ops_mutex);
    if (g_ops) {
      ZINF_LOG(kWarn) << "zinf.trace_path: another engine's trace records LibTorch operators; "
                         "this one's trace goes without them";
      return recorder;
    }
    g_ops.emplace();
  }
  recorder->active_ = true;
  recorder->handle_ = at::addGlobalCallback(
      at::RecordFunctionCallback(op_started, op_ended)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  return recorder;
}

OpRecorder::~OpRecorder() {
  if (!active_) return;
  at::removeCallback(handle_);
  std::lock_guard lock(g_ops_mutex);
  g_ops.reset();
}

std::vector<OpSpan> OpRecorder::take() {
  if (!active_) return {};
  std::lock_guard lock(g_ops_mutex);
  return std::exchange(*g_ops, {});
}

const char* Trace::name(Track track) {
  switch (track) {
    case kStep:
      return "step (update)";
    case kForwardBackward:
      return "forward + backward";
    case kCompute:
      return "compute";
    case kStall:
      return "stall (waiting for parameters)";
    case kParamReads:
      return "nvme: parameter reads";
    case kH2d:
      return "copy: host to device";
    case kD2h:
      return "copy: device to host";
    case kOptimizerIo:
      return "nvme: optimizer state + parameter write-back";
    case kComm:
      return "communication";
    case kCpuAdam:
      return "cpu adam";
    case kTracks:
      break;
  }
  return "?";
}

fs::path Trace::path_for(const fs::path& path, int rank, int world) {
  if (world <= 1) return path;
  return path.parent_path() /
         (path.stem().string() + ".rank" + std::to_string(rank) + path.extension().string());
}

Trace::Trace(std::ofstream out, fs::path path, int rank)
    : out_(std::move(out)), path_(std::move(path)), rank_(rank) {}

Result<std::unique_ptr<Trace>> Trace::open(const fs::path& path, int rank) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return Status::from_errno(errno, "zinf.trace_path: cannot create " + path.string());
  out << "[\n";
  std::unique_ptr<Trace> trace(new Trace(std::move(out), path, rank));
  trace->event(R"({"ph":"M","name":"process_name","pid":)" + std::to_string(rank) +
               R"(,"args":{"name":"zinf rank )" + std::to_string(rank) + R"("}})");
  for (int t = 0; t < kTracks; ++t) trace->name_track(t, name(static_cast<Track>(t)));
  return trace;
}

Trace::~Trace() {
  out_ << "\n]\n";
  out_.flush();
  if (!out_ && !failed_)
    ZINF_LOG(kWarn) << "zinf.trace_path: writing " << path_.string() << " failed";
}

double Trace::micros(SteadyClock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - origin_).count();
}

void Trace::event(const std::string& json) {
  if (failed_) return;
  if (!first_) out_ << ",\n";
  first_ = false;
  out_ << json;
  if (!out_) {
    failed_ = true;
    ZINF_LOG(kWarn) << "zinf.trace_path: writing " << path_.string()
                    << " failed; the run goes on without its trace";
  }
}

void Trace::spans(Track track, const std::vector<Interval>& periods, std::uint64_t step) {
  spans_on(static_cast<int>(track), name(track), periods, step);
}

int Trace::named_track(const std::string& track) {
  auto [it, added] = named_.try_emplace(track, kTracks + static_cast<int>(named_.size()));
  if (added) name_track(it->second, track);
  return it->second;
}

void Trace::named_spans(const std::string& track, const std::vector<Interval>& periods,
                        std::uint64_t step) {
  spans_on(named_track(track), track, periods, step);
}

void Trace::ops(const std::vector<OpSpan>& ops, Interval window, std::uint64_t step) {
  for (const OpSpan& op : ops) {
    if (op.when.begin < window.begin || op.when.end > window.end) continue;
    const int tid = named_track("ops: thread " + std::to_string(op.thread));
    event(R"({"ph":"X","name":)" + nlohmann::json(op.name).dump() + R"(,"pid":)" +
          std::to_string(rank_) + R"(,"tid":)" + std::to_string(tid) + R"(,"ts":)" +
          std::to_string(micros(op.when.begin)) + R"(,"dur":)" +
          std::to_string(micros(op.when.end) - micros(op.when.begin)) + R"(,"args":{"step":)" +
          std::to_string(step) + "}}");
  }
}

void Trace::name_track(int tid, const std::string& track) {
  const std::string t = std::to_string(tid), pid = std::to_string(rank_);
  event(R"({"ph":"M","name":"thread_name","pid":)" + pid + R"(,"tid":)" + t +
        R"(,"args":{"name":")" + track + R"("}})");
  event(R"({"ph":"M","name":"thread_sort_index","pid":)" + pid + R"(,"tid":)" + t +
        R"(,"args":{"sort_index":)" + t + "}}");
}

void Trace::spans_on(int tid, const std::string& track, const std::vector<Interval>& periods,
                     std::uint64_t step) {
  char text[256];
  for (const Interval& i : periods) {
    std::snprintf(text, sizeof text,
                  R"({"ph":"X","name":"%s","pid":%d,"tid":%d,"ts":%.3f,"dur":%.3f,)"
                  R"("args":{"step":%llu}})",
                  track.c_str(), rank_, tid, micros(i.begin), micros(i.end) - micros(i.begin),
                  static_cast<unsigned long long>(step));
    event(text);
  }
}

void Trace::transfer(const Transfer& t, std::uint64_t step) {
  const std::string head = R"({"cat":)" + nlohmann::json(t.category).dump() + R"(,"name":)" +
                           nlohmann::json(t.name).dump() + R"(,"id":)" +
                           std::to_string(++next_id_) + R"(,"pid":)" + std::to_string(rank_);
  std::string begin = head + R"(,"ph":"b","ts":)" + std::to_string(micros(t.when.begin)) +
                      R"(,"args":{"step":)" + std::to_string(step) + R"(,"bytes":)" +
                      std::to_string(t.bytes) + R"(,"op":)" + nlohmann::json(t.op).dump();
  if (t.sub_group >= 0) begin += R"(,"sub_group":)" + std::to_string(t.sub_group);
  event(begin + "}}");
  event(head + R"(,"ph":"e","ts":)" + std::to_string(micros(t.when.end)) + "}");
}

void Trace::counter(const char* what, SteadyClock::time_point at, double value) {
  char text[256];
  std::snprintf(text, sizeof text,
                R"({"ph":"C","name":"%s","pid":%d,"ts":%.3f,"args":{"value":%.17g}})", what, rank_,
                micros(at), value);
  event(text);
}

}  // namespace zinf::offload
