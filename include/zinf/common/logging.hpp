// Leveled logging to stderr. The level comes from the environment variable
// ZINF_LOG (error, warn, info, debug; default info) and can be changed with
// set_log_level(). Each line is written with one write(2), so lines from
// several threads never interleave.
//
//   ZINF_LOG(kInfo) << "io engine: io_uring (queue depth " << qd << ")";
#pragma once

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

namespace zinf {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

LogLevel log_level();
void set_log_level(LogLevel level);
std::optional<LogLevel> parse_log_level(std::string_view name);

// Byte counts for messages: "512 B", "4.0 KiB", "12.3 MiB", "1.50 GiB".
std::string format_bytes(std::uint64_t bytes);
inline bool log_enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(log_level());
}

class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Lets ZINF_LOG be one expression (safe under an unbraced if/else): `&` binds
// looser than `<<`, so the whole stream chain runs before it is voided.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace zinf

#define ZINF_LOG(level)                         \
  !::zinf::log_enabled(::zinf::LogLevel::level) \
      ? (void)0                                 \
      : ::zinf::LogVoidify() &                  \
            ::zinf::LogLine(::zinf::LogLevel::level, __FILE__, __LINE__).stream()
