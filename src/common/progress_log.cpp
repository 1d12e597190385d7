#include "common/progress_log.hpp"

#include <cstdio>

#include "zinf/common/logging.hpp"

namespace zinf {

ProgressLog::ProgressLog(std::string what, std::uint64_t total_bytes,
                         std::chrono::milliseconds every)
    : what_(std::move(what)), total_(total_bytes), every_(every), next_(start_ + every) {}

void ProgressLog::add(std::uint64_t bytes) {
  done_ += bytes;
  const auto now = SteadyClock::now();
  if (now < next_) return;
  next_ = now + every_;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double rate = seconds > 0 ? static_cast<double>(done_) / seconds : 0;
  const double left = rate > 0 && total_ > done_ ? static_cast<double>(total_ - done_) / rate : 0;
  char tail[96];
  std::snprintf(
      tail, sizeof tail, " (%.0f%%), %s/s, about %.0f s left",
      total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0,
      format_bytes(static_cast<std::uint64_t>(rate)).c_str(), left);
  ZINF_LOG(kInfo) << what_ << ": " << format_bytes(done_) << " of " << format_bytes(total_) << tail;
}

}  // namespace zinf
