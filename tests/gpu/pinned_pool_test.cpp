#include "zinf/gpu/pinned_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "zinf/gpu/device.hpp"

namespace zinf::gpu {
namespace {

TEST(PinnedPool, LendsEachBufferToOneHolderAtATime) {
  auto pool = PinnedPool::create(nullptr, {"test pool", 10000, 2, true});
  ASSERT_TRUE(pool.is_ok()) << pool.status().to_string();
  EXPECT_EQ((*pool)->buffer_bytes(), 12288u);  // rounded up to kIoAlignment
  auto a = (*pool)->acquire();
  auto b = (*pool)->try_acquire();
  ASSERT_TRUE(b.has_value());
  EXPECT_NE(a.data(), b->data());
  EXPECT_TRUE(is_aligned(a.data(), kIoAlignment));
  EXPECT_FALSE((*pool)->try_acquire().has_value());
  EXPECT_EQ((*pool)->in_use(), 2u);
  std::byte* first = a.data();
  std::thread giver([&] { a = PinnedPool::Lease(); });
  auto c = (*pool)->acquire();  // waits for the giver
  giver.join();
  EXPECT_EQ(c.data(), first);
  c = {};
  b.reset();
  EXPECT_EQ((*pool)->in_use(), 0u);
}

TEST(PinnedPool, ThePeakOnLoanIsTakenAndRestartsFromWhatIsOnLoanNow) {
  auto pool = PinnedPool::create(nullptr, {"test pool", 4096, 3, false});
  ASSERT_TRUE(pool.is_ok()) << pool.status().to_string();
  EXPECT_EQ(PinnedPool::bytes_for({"test pool", 4096, 3, false}), (*pool)->bytes());
  EXPECT_EQ((*pool)->take_peak_in_use(), 0u);
  {
    auto a = (*pool)->acquire();
    auto b = (*pool)->try_acquire();
    auto c = (*pool)->acquire();
    b.reset();
    c = {};
    EXPECT_EQ((*pool)->take_peak_in_use(), 3u);
    EXPECT_EQ((*pool)->take_peak_in_use(), 1u);  // `a` is still on loan
  }
  EXPECT_EQ((*pool)->take_peak_in_use(), 1u);  // the period in which `a` came back
  EXPECT_EQ((*pool)->take_peak_in_use(), 0u);
}

// A buffer given back while some I/O may still use it is not lent again
// until that I/O is done; the pool lends its others meanwhile.
TEST(PinnedPool, RetiresABufferWhileItIsHeldAndReinstatesItAfter) {
  auto pool = PinnedPool::create(nullptr, {"test pool", 4096, 2, false});
  ASSERT_TRUE(pool.is_ok()) << pool.status().to_string();
  std::atomic<const std::byte*> held{nullptr};
  (*pool)->retire_while([&](std::span<const std::byte> b) { return b.data() == held.load(); });
  auto a = (*pool)->acquire();
  auto b = (*pool)->acquire();
  const std::byte* lost = a.data();
  held = lost;
  a = {};
  EXPECT_EQ((*pool)->retired(), 1u);
  EXPECT_EQ((*pool)->in_use(), 2u) << "a retired buffer is not free";
  EXPECT_FALSE((*pool)->try_acquire().has_value());
  b = {};
  auto c = (*pool)->try_acquire();
  ASSERT_TRUE(c.has_value());
  EXPECT_NE(c->data(), lost);
  EXPECT_FALSE((*pool)->try_acquire().has_value()) << "the held buffer is not lent";

  std::atomic<bool> lent{false};
  std::thread taker([&] {
    auto d = (*pool)->acquire();  // waits: the only other buffer is retired
    EXPECT_EQ(d.data(), lost);
    lent = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(lent.load()) << "acquire() lent a buffer some I/O still holds";
  held = nullptr;  // the I/O returned it: no give_back() wakes the taker
  taker.join();
  EXPECT_TRUE(lent.load());
  EXPECT_EQ((*pool)->retired(), 0u);
}

TEST(PinnedPool, PinsThroughTheDevice) {
  auto device = Device::create({"cpu", 0, 0});
  ASSERT_TRUE(device.is_ok());
  auto pool = PinnedPool::create(device->get(), {"test pool", 1 << 20, 2, true});
  ASSERT_TRUE(pool.is_ok());
  // Root (or a large enough memlock limit) pins; otherwise the pool says why and works.
  auto lease = (*pool)->acquire();
  std::memset(lease.data(), 1, lease.size());
  auto unpinned = PinnedPool::create(device->get(), {"test pool", 1 << 20, 1, false});
  ASSERT_TRUE(unpinned.is_ok());
  EXPECT_FALSE((*unpinned)->pinned());
}

TEST(PinnedPool, IoRegionsAreWholeBuffersOfAtMostOneGiB) {
  // Virtual memory only: nothing is touched or pinned.
  auto pool = PinnedPool::create(nullptr, {"test pool", 400u << 20, 3, false});
  ASSERT_TRUE(pool.is_ok());
  auto regions = (*pool)->io_regions();
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[0].size(), 800u << 20);
  EXPECT_EQ(regions[1].size(), 400u << 20);
  EXPECT_EQ(regions[1].data(), regions[0].data() + regions[0].size());
  auto big = PinnedPool::create(nullptr, {"test pool", 1536u << 20, 1, false});
  ASSERT_TRUE(big.is_ok());
  regions = (*big)->io_regions();
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[0].size(), 1u << 30);
  EXPECT_EQ(regions[1].size(), 512u << 20);
}

TEST(PinnedPool, EmptyPoolsAreErrors) {
  EXPECT_FALSE(PinnedPool::create(nullptr, {"x", 0, 1, false}).is_ok());
  EXPECT_FALSE(PinnedPool::create(nullptr, {"x", 4096, 0, false}).is_ok());
}

}  // namespace
}  // namespace zinf::gpu
