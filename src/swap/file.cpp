#include "zinf/swap/file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "zinf/common/logging.hpp"

namespace zinf::swap {

FileDescriptor::~FileDescriptor() { reset(); }

FileDescriptor::FileDescriptor(FileDescriptor&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)) {}

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void FileDescriptor::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<OpenedFile> open_direct(const std::filesystem::path& path, int flags, mode_t mode,
                               bool allow_buffered_fallback) {
  int fd = ::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC, mode);
  if (fd >= 0) return OpenedFile{FileDescriptor(fd), true};
  const int err = errno;
  if (err != EINVAL) return Status::from_errno(err, "open " + path.string());
  if (!allow_buffered_fallback) {
    return Status::unavailable(
        "open " + path.string() +
        ": the file system refuses O_DIRECT (tmpfs?); use a path on a real "
        "disk, or set zinf.buffered_io_fallback to true to accept buffered I/O");
  }
  // Linux creates the file before rejecting O_DIRECT; an O_EXCL retry must
  // not fail on the file it just created.
  int retry_flags = flags;
  if ((flags & O_CREAT) && (flags & O_EXCL) && std::filesystem::exists(path))
    retry_flags &= ~O_EXCL;
  fd = ::open(path.c_str(), retry_flags | O_CLOEXEC, mode);
  if (fd < 0) return Status::from_errno(errno, "open " + path.string());
  ZINF_LOG(kWarn) << path.string() << ": O_DIRECT refused by the file system; using buffered I/O "
                  << "(zinf.buffered_io_fallback)";
  return OpenedFile{FileDescriptor(fd), false};
}

}  // namespace zinf::swap
