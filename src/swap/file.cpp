#include "zinf/swap/file.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
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

namespace {

std::string first_line(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line;
}

std::string filesystem_name(long magic) {
  switch (static_cast<unsigned long>(magic)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x858458F6:
      return "ramfs";
    case 0x794C7630:
      return "overlayfs";
    case 0x6969:
      return "nfs";
    case 0x2FC12FC1:
      return "zfs";
    case 0xF2F52010:
      return "f2fs";
    case 0x65735546:
      return "fuse";
    default:
      break;
  }
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%lx", static_cast<unsigned long>(magic));
  return hex;
}

}  // namespace

StorageInfo describe_storage(const std::filesystem::path& path) {
  StorageInfo info;
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) == 0) {
    info.filesystem = filesystem_name(static_cast<long>(fs.f_type));
    info.ram_backed = info.filesystem == "tmpfs" || info.filesystem == "ramfs";
  }
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_MEMLOCK, &limit) == 0)
    info.memlock_limit = limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : limit.rlim_cur;
  struct stat st {};
  if (info.ram_backed || ::stat(path.c_str(), &st) != 0 || major(st.st_dev) == 0) return info;
  // /sys/dev/block/M:m is the device or a partition of it; the whole disk
  // has a queue/ of its own.
  std::error_code ec;
  auto dev = std::filesystem::canonical(
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev)),
      ec);
  if (ec) return info;
  if (!std::filesystem::exists(dev / "queue", ec)) dev = dev.parent_path();
  info.device = dev.filename().string();
  info.model = first_line(dev / "device" / "model");
  info.rotational = first_line(dev / "queue" / "rotational") == "1";
  const auto driver = std::filesystem::canonical(dev / "device" / "driver", ec).filename().string();
  info.virtual_disk = driver.find("virtio") != std::string::npos || driver.rfind("xen", 0) == 0 ||
                      info.device.rfind("vd", 0) == 0 || info.device.rfind("xvd", 0) == 0;
  return info;
}

std::string StorageInfo::describe() const {
  if (ram_backed) return filesystem + " (memory, not a disk)";
  std::string out = filesystem.empty() ? "unknown file system" : filesystem;
  if (device.empty()) return out;
  out += " on " + device;
  if (!model.empty()) out += " (" + model + ")";
  if (virtual_disk) {
    out += ", a virtual disk: not an NVMe device";
  } else if (rotational) {
    out += ", rotational";
  }
  return out;
}

}  // namespace zinf::swap
