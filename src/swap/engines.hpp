// The concrete raw engines (private to zinf: the swap layer, and the
// checkpoint writer, which runs plain-file writes through IoQueue). Each reports what the
// kernel said; IoQueue applies the policy. See include/zinf/swap/io_engine.hpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "zinf/swap/io_engine.hpp"

namespace zinf::swap {

// pread/pwrite on a pool of threads: always available.
Result<std::unique_ptr<IoEngine>> make_psync_engine(const IoEngineOptions& options);
// io_uring (liburing): kUnavailable when built without it or the kernel refuses a ring.
Result<std::unique_ptr<IoEngine>> make_uring_engine(const IoEngineOptions& options);
// Linux native AIO (libaio): kUnavailable when built without it or io_setup fails.
Result<std::unique_ptr<IoEngine>> make_aio_engine(const IoEngineOptions& options);

// Bookkeeping every engine shares: the files it knows, by index.
class FileTable {
 public:
  int add(int fd, const std::string& path) {
    fds_.push_back(fd);
    paths_.push_back(path);
    return static_cast<int>(fds_.size()) - 1;
  }
  bool valid(int file) const { return file >= 0 && static_cast<std::size_t>(file) < fds_.size(); }
  int fd(int file) const { return fds_[static_cast<std::size_t>(file)]; }
  const std::string& path(int file) const {
    static const std::string kUnknown = "<unknown file>";
    return valid(file) ? paths_[static_cast<std::size_t>(file)] : kUnknown;
  }
  const std::vector<int>& fds() const { return fds_; }

 private:
  std::vector<int> fds_;
  std::vector<std::string> paths_;
};

}  // namespace zinf::swap
