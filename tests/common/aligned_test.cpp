#include "zinf/common/aligned.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <utility>

namespace zinf {
namespace {

TEST(AlignedBufferTest, RoundsSizeUpAndAligns) {
  auto buf = AlignedBuffer::allocate(5000);
  ASSERT_TRUE(buf.is_ok()) << buf.status().to_string();
  EXPECT_EQ(buf->size(), 8192u);
  EXPECT_TRUE(is_aligned(buf->data(), kIoAlignment));
}

TEST(AlignedBufferTest, MoveTransfersOwnership) {
  auto buf = AlignedBuffer::allocate(4096);
  ASSERT_TRUE(buf.is_ok());
  std::byte* p = buf->data();
  AlignedBuffer moved = std::move(*buf);
  EXPECT_EQ(moved.data(), p);
  EXPECT_EQ(buf->data(),
            nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
}

TEST(AlignedBufferTest, RejectsBadAlignment) {
  EXPECT_EQ(AlignedBuffer::allocate(100, 3000).status().code(), StatusCode::kInvalidArgument);
}

// Memory a lost I/O request may still use outlives its buffer: a mapped
// buffer stays mapped, a heap one is not freed (ASan would report the reads
// below as a use after free if it were), a buffer beside it is released.
TEST(AlignedBufferTest, MemoryALostRequestMayUseIsNeverReleased) {
  for (std::size_t size : {kMapThreshold * 2, std::size_t{16} << 10}) {
    auto kept = AlignedBuffer::allocate(size);
    auto other = AlignedBuffer::allocate(size);
    ASSERT_TRUE(kept.is_ok() && other.is_ok());
    const std::byte* p = kept->data();
    std::memset(kept->data(), 0x5a, size);
    const std::span<const std::byte> request{p + kIoAlignment, kIoAlignment};
    const std::uint64_t before = lost_io_bytes();
    EXPECT_FALSE(lost_io_holds(request));
    keep_for_lost_io(request);
    EXPECT_EQ(lost_io_bytes(), before + kIoAlignment);
    EXPECT_TRUE(lost_io_holds(kept->bytes()));
    EXPECT_FALSE(lost_io_holds(other->bytes()));
    *kept = AlignedBuffer();
    *other = AlignedBuffer();
    if (size >= kMapThreshold) {
      unsigned char resident = 0;
      EXPECT_EQ(::mincore(const_cast<std::byte*>(p), kIoAlignment, &resident), 0)
          << "the kept buffer was unmapped";
    }
    EXPECT_EQ(p[0], std::byte{0x5a});
    EXPECT_EQ(p[size - 1], std::byte{0x5a});
  }
}

TEST(AlignedTest, EvictFromCachesKeepsTheContents) {
  auto buf = AlignedBuffer::allocate(64 << 10);
  ASSERT_TRUE(buf.is_ok());
  auto* p = buf->as<unsigned char>();
  for (std::size_t i = 0; i < buf->size(); ++i) p[i] = static_cast<unsigned char>(i * 7 + 1);
  // Dirty lines, a span that starts and ends inside lines, and nothing.
  evict_from_caches(buf->bytes());
  evict_from_caches({buf->data() + 3, 1000});
  evict_from_caches({});
  for (std::size_t i = 0; i < buf->size(); ++i)
    ASSERT_EQ(p[i], static_cast<unsigned char>(i * 7 + 1)) << "byte " << i;
  p[5] = 0xAB;
  evict_from_caches({buf->data(), 64});
  EXPECT_EQ(p[5], 0xAB);
}

TEST(AlignedTest, AlignUp) {
  EXPECT_EQ(align_up(0, 4096), 0u);
  EXPECT_EQ(align_up(1, 4096), 4096u);
  EXPECT_EQ(align_up(4096, 4096), 4096u);
  EXPECT_TRUE(is_aligned(8192, 4096));
  EXPECT_FALSE(is_aligned(8193, 4096));
}

}  // namespace
}  // namespace zinf
