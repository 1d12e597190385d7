// The progress of a long operation (a checkpoint's save or load) as info
// log lines: one every `every` of wall time, with what is done of the
// total, the rate and the time left; an operation shorter than `every`
// logs nothing. Threads: one at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "zinf/common/busy_time.hpp"

namespace zinf {

class ProgressLog {
 public:
  ProgressLog(std::string what, std::uint64_t total_bytes,
              std::chrono::milliseconds every = std::chrono::seconds(10));
  void add(std::uint64_t bytes);

 private:
  std::string what_;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  std::chrono::milliseconds every_;
  SteadyClock::time_point start_ = SteadyClock::now();
  SteadyClock::time_point next_;
};

}  // namespace zinf
