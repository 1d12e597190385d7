#include "zinf/common/logging.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace zinf {
namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("ZINF_LOG");
  if (env == nullptr || *env == '\0') return LogLevel::kInfo;
  if (auto level = parse_log_level(env)) return *level;
  const char msg[] =
      "[zinf W] ZINF_LOG: unknown level (use error, warn, info or debug); using info\n";
  (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  return LogLevel::kInfo;
}

std::atomic<int>& level_storage() {
  static std::atomic<int> level{static_cast<int>(level_from_env())};
  return level;
}

const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash == nullptr ? path : slash + 1;
}

}  // namespace

LogLevel log_level() {
  return static_cast<LogLevel>(level_storage().load(std::memory_order_relaxed));
}

void set_log_level(LogLevel level) { level_storage().store(static_cast<int>(level)); }

std::optional<LogLevel> parse_log_level(std::string_view name) {
  if (name == "error") return LogLevel::kError;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "info") return LogLevel::kInfo;
  if (name == "debug") return LogLevel::kDebug;
  return std::nullopt;
}

LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  static constexpr char kLetters[] = {'E', 'W', 'I', 'D'};
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  localtime_r(&secs, &tm);
  char stamp[16];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  char msbuf[8];
  std::snprintf(msbuf, sizeof(msbuf), ".%03d", static_cast<int>(ms));
  stream_ << "[zinf " << kLetters[static_cast<int>(level_)] << ' ' << stamp << msbuf << ' '
          << basename_of(file) << ':' << line << "] ";
}

LogLine::~LogLine() {
  stream_ << '\n';
  const std::string text = stream_.str();
  (void)!::write(STDERR_FILENO, text.data(), text.size());
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), v < 10 && u >= 3 ? "%.2f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

}  // namespace zinf
