// A progress line on stderr for the tools. On a terminal it is one line
// redrawn in place (a bar, done/total, what is happening); when stderr is
// not a terminal (a log file, CI) each show() is a plain line, so logs keep
// no carriage returns or escape codes. Single-threaded use.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace zinf::tools {

class ProgressLine {
 public:
  ProgressLine() : tty_(::isatty(STDERR_FILENO) == 1) {}
  ~ProgressLine() { clear(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  bool tty() const { return tty_; }

  void show(std::size_t done, std::size_t total, const std::string& what) {
    constexpr std::size_t kWidth = 30;
    const std::size_t filled = kWidth * std::min(done, total) / std::max<std::size_t>(total, 1);
    if (tty_) {
      std::fprintf(stderr, "\r[%s%s] %zu/%zu %s\033[K", std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, ' ').c_str(), done, total, what.c_str());
      shown_ = true;
    } else {
      std::fprintf(stderr, "[%zu/%zu] %s\n", done, total, what.c_str());
    }
    std::fflush(stderr);
  }

  // Erases a terminal's line (before other output goes there).
  void clear() {
    if (!shown_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    shown_ = false;
  }

 private:
  bool tty_;
  bool shown_ = false;
};

}  // namespace zinf::tools
