#include "zinf/swap/file.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstring>

#include "swap/swap_test_util.hpp"

namespace zinf::swap {
namespace {

TEST(FileTest, OpensDirectOnARealDisk) {
  testing::ScratchDir dir;
  auto f = open_direct(dir.path() / "a", O_RDWR | O_CREAT | O_EXCL, 0600, false);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_TRUE(f->direct);
  struct stat st {};
  ASSERT_EQ(::fstat(f->fd.get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(FileTest, MissingDirectoryNamesThePath) {
  auto f = open_direct("/nonexistent-zinf/a", O_RDWR | O_CREAT, 0600, false);
  ASSERT_FALSE(f.is_ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent-zinf/a"), std::string::npos);
}

TEST(FileTest, DescriptorIsMoveOnlyAndCloses) {
  testing::ScratchDir dir;
  auto f = open_direct(dir.path() / "b", O_RDWR | O_CREAT | O_EXCL, 0600, false);
  ASSERT_TRUE(f.is_ok());
  const int raw = f->fd.get();
  FileDescriptor moved = std::move(f->fd);
  EXPECT_EQ(moved.get(), raw);
  EXPECT_FALSE(f->fd.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  moved.reset();
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);
}

// ramfs mounted over `path` (root only) for the object's life.
struct RamfsMount {
  explicit RamfsMount(const std::filesystem::path& path) : path_(path) {
    mounted = ::mount("zinf-test", path_.c_str(), "ramfs", 0, "mode=0700") == 0;
  }
  ~RamfsMount() {
    if (mounted) ::umount2(path_.c_str(), MNT_DETACH);
  }
  std::filesystem::path path_;
  bool mounted = false;
};

// A file system that refuses O_DIRECT: an error naming the key, or buffered
// I/O when the config allows it. ramfs never supports O_DIRECT.
TEST(FileTest, RefusedDirectIoIsAnErrorOrAnExplicitFallback) {
  testing::ScratchDir dir;
  RamfsMount ramfs(dir.path());
  if (!ramfs.mounted) GTEST_SKIP() << "cannot mount ramfs here (" << std::strerror(errno) << ")";
  auto refused = open_direct(dir.path() / "c", O_RDWR | O_CREAT | O_EXCL, 0600, false);
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("zinf.buffered_io_fallback"), std::string::npos);
  auto buffered = open_direct(dir.path() / "d", O_RDWR | O_CREAT | O_EXCL, 0600, true);
  ASSERT_TRUE(buffered.is_ok()) << buffered.status().to_string();
  EXPECT_FALSE(buffered->direct);
}

// What a path is stored on: a disk-backed directory names its file system
// and block device; a RAM-backed one says it is memory.
TEST(FileTest, DescribesWhatAPathIsStoredOn) {
  testing::ScratchDir dir;
  const StorageInfo disk = describe_storage(dir.path());
  EXPECT_FALSE(disk.filesystem.empty());
  EXPECT_GT(disk.memlock_limit, 0u);
  if (!disk.ram_backed) {
    EXPECT_NE(disk.describe().find(disk.filesystem), std::string::npos) << disk.describe();
  }
  RamfsMount ramfs(dir.path());
  if (!ramfs.mounted) GTEST_SKIP() << "cannot mount ramfs here (" << std::strerror(errno) << ")";
  const StorageInfo ram = describe_storage(dir.path());
  EXPECT_EQ(ram.filesystem, "ramfs");
  EXPECT_TRUE(ram.ram_backed);
  EXPECT_TRUE(ram.device.empty());
  EXPECT_EQ(ram.describe(), "ramfs (memory, not a disk)");
}

}  // namespace
}  // namespace zinf::swap
