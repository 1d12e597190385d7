// Files for the NVMe tier: a move-only fd owner and O_DIRECT opening with an
// explicit policy for file systems that refuse O_DIRECT (tmpfs).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "zinf/common/status.hpp"

namespace zinf::swap {

// Owns one file descriptor; closes it on destruction.
class FileDescriptor {
 public:
  FileDescriptor() = default;
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor();
  FileDescriptor(FileDescriptor&& other) noexcept;
  FileDescriptor& operator=(FileDescriptor&& other) noexcept;
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

struct OpenedFile {
  FileDescriptor fd;
  bool direct = false;  // O_DIRECT in effect
};

// Opens `path` with `flags | O_DIRECT | O_CLOEXEC`. Where the file system
// refuses O_DIRECT (EINVAL, e.g. tmpfs): with allow_buffered_fallback, reopens
// without O_DIRECT and logs a warning; otherwise returns kUnavailable naming
// the path and the config key zinf.buffered_io_fallback. If `flags` has
// O_CREAT|O_EXCL and the O_DIRECT open created the file before failing, the
// retry does not trip over it.
Result<OpenedFile> open_direct(const std::filesystem::path& path, int flags, mode_t mode,
                               bool allow_buffered_fallback);

// What a path is stored on, so that a figure can say what it measured.
// Fields that cannot be found stay empty (or false).
struct StorageInfo {
  std::string filesystem;           // "ext4", "xfs", "tmpfs", ... (statfs), or "0x<magic>"
  bool ram_backed = false;          // tmpfs, ramfs: I/O there measures memory, not a disk
  std::string device;               // the block device ("nvme0n1", "vda"), partitions resolved
  std::string model;                // /sys/block/<device>/device/model
  bool rotational = false;          // /sys/block/<device>/queue/rotational
  bool virtual_disk = false;        // virtio, Xen or another paravirtual block driver
  std::uint64_t memlock_limit = 0;  // RLIMIT_MEMLOCK in bytes (UINT64_MAX: unlimited)
  // "ext4 on vda (virtio, not an NVMe device)", "tmpfs (memory, not a disk)", ...
  std::string describe() const;
};
StorageInfo describe_storage(const std::filesystem::path& path);

}  // namespace zinf::swap
