#include "swap/extent_allocator.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace zinf::swap {
namespace {

constexpr std::uint64_t kAlign = 4096;

TEST(ExtentAllocatorTest, GrowsOnlyWhenNothingFits) {
  ExtentAllocator a(kAlign, 1 << 20);
  EXPECT_FALSE(a.allocate(100).has_value());
  a.grow(a.growth_for(100));
  EXPECT_EQ(a.file_size(), 1u << 20);
  auto e = a.allocate(100);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->offset, 0u);
  EXPECT_EQ(e->length, kAlign);
}

TEST(ExtentAllocatorTest, GrowthCountsAFreeTail) {
  ExtentAllocator a(kAlign, kAlign);
  a.grow(8 * kAlign);
  auto head = a.allocate(6 * kAlign);
  ASSERT_TRUE(head.has_value());
  // 2 blocks free at the end: a 5-block request needs 3 more.
  EXPECT_EQ(a.growth_for(5 * kAlign), 3 * kAlign);
  a.grow(a.growth_for(5 * kAlign));
  auto e = a.allocate(5 * kAlign);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->offset, 6 * kAlign);
}

TEST(ExtentAllocatorTest, FreedNeighboursCoalesce) {
  ExtentAllocator a(kAlign, kAlign);
  a.grow(3 * kAlign);
  auto x = *a.allocate(kAlign), y = *a.allocate(kAlign), z = *a.allocate(kAlign);
  a.free(x);
  a.free(z);
  EXPECT_EQ(a.free_extents(), 2u);
  a.free(y);
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.allocate(3 * kAlign)->offset, 0u);
}

// Random allocations and frees against a model: extents never overlap, and
// once everything is freed the whole file is one free extent again.
TEST(ExtentAllocatorTest, RandomWorkloadNeverOverlapsAndReusesEverything) {
  ExtentAllocator a(kAlign, 64 * kAlign);
  std::mt19937_64 rng(5);
  std::vector<Extent> live;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const std::uint64_t len = (1 + rng() % 32) * kAlign - rng() % kAlign;
      auto e = a.allocate(len);
      if (!e) {
        a.grow(a.growth_for(len));
        e = a.allocate(len);
      }
      ASSERT_TRUE(e.has_value());
      ASSERT_EQ(e->offset % kAlign, 0u);
      ASSERT_GE(e->length, len);
      ASSERT_LE(e->offset + e->length, a.file_size());
      for (const Extent& other : live) {
        ASSERT_TRUE(e->offset + e->length <= other.offset ||
                    other.offset + other.length <= e->offset);
      }
      live.push_back(*e);
    } else {
      const std::size_t k = rng() % live.size();
      a.free(live[k]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    }
  }
  const std::uint64_t size = a.file_size();
  for (const Extent& e : live) a.free(e);
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.free_bytes(), size);
  EXPECT_EQ(a.file_size(), size);
}

}  // namespace
}  // namespace zinf::swap
