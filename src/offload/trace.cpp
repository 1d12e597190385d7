#include "offload/trace.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "zinf/common/logging.hpp"

namespace zinf::offload {

namespace fs = std::filesystem;

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

void Trace::named_spans(const std::string& track, const std::vector<Interval>& periods,
                        std::uint64_t step) {
  auto [it, added] = named_.try_emplace(track, kTracks + static_cast<int>(named_.size()));
  if (added) name_track(it->second, track);
  spans_on(it->second, track, periods, step);
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
