// The communicators over two ranks (Gloo through c10d), the world of one,
// and the rendezvous' failures.
#include "gpu/communicator.hpp"

#include <gtest/gtest.h>

#include <numeric>
#include <thread>
#include <vector>

#include "integration/ranks.hpp"
#include "zinf/gpu/device.hpp"

namespace zinf::gpu {
namespace {

// Gloo (and the store) come with LibTorch; the ASan build has neither.
#define SKIP_WITHOUT_GLOO() \
  if (!ZINF_TEST_GLOO) GTEST_SKIP() << "this build has no LibTorch c10d Gloo (the ASan preset)"

std::shared_ptr<World> join(const std::string& fingerprint = "same") {
  auto launch = launch_from_env();
  EXPECT_TRUE(launch.is_ok()) << launch.status().to_string();
  auto world = World::join(*launch, std::chrono::seconds(30), fingerprint);
  EXPECT_TRUE(world.is_ok()) << world.status().to_string();
  return world.is_ok() ? *world : nullptr;
}

TEST(ShardTest, SplitsEvenlyWithTheRemainderLast) {
  EXPECT_EQ(shard(10, 3, 0).begin, 0u);
  EXPECT_EQ(shard(10, 3, 0).count, 4u);
  EXPECT_EQ(shard(10, 3, 2).begin, 8u);
  EXPECT_EQ(shard(10, 3, 2).count, 2u);
  EXPECT_EQ(shard(1, 3, 1).count, 0u);  // more ranks than elements: empty shards
  EXPECT_EQ(shard(1, 3, 2).begin, 1u);
  std::uint64_t total = 0;
  for (int r = 0; r < 7; ++r) total += shard(100, 7, r).count;
  EXPECT_EQ(total, 100u);
}

TEST(LaunchTest, ReadsTheLaunchersVariables) {
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("MASTER_PORT", "1234", 1);
  auto launch = launch_from_env();
  ASSERT_TRUE(launch.is_ok()) << launch.status().to_string();
  EXPECT_EQ(launch->rank, 1);
  EXPECT_EQ(launch->world_size, 4);
  EXPECT_EQ(launch->local_rank, 1);
  EXPECT_EQ(launch->master_port, 1234);
  setenv("RANK", "4", 1);
  EXPECT_NE(launch_from_env().status().message().find("RANK=4 is not below WORLD_SIZE=4"),
            std::string::npos);
  setenv("RANK", "x", 1);
  EXPECT_NE(launch_from_env().status().message().find("RANK"), std::string::npos);
  unsetenv("RANK");
  EXPECT_NE(launch_from_env().status().message().find("sets WORLD_SIZE but not RANK"),
            std::string::npos);
  unsetenv("WORLD_SIZE");
  unsetenv("MASTER_PORT");
  setenv("OMPI_COMM_WORLD_RANK", "2", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
  launch = launch_from_env();
  ASSERT_TRUE(launch.is_ok());
  EXPECT_EQ(launch->rank, 2);
  EXPECT_EQ(launch->world_size, 3);
  unsetenv("OMPI_COMM_WORLD_RANK");
  unsetenv("OMPI_COMM_WORLD_SIZE");
}

TEST(WorldTest, OneRankNeedsNoStore) {
  Launch one;
  auto world = World::join(one, std::chrono::seconds(1), "");
  ASSERT_TRUE(world.is_ok());
  auto comm = (*world)->communicator("c", Backend::kSingle);
  ASSERT_TRUE(comm.is_ok());
  float x = 3;
  ASSERT_TRUE((*comm)->all_reduce_now(&x, 1, CommDtype::kF32, ReduceOp::kSum).is_ok());
  EXPECT_EQ(x, 3);
  EXPECT_FALSE((*world)->communicator("g", Backend::kGloo).is_ok());
}

// NCCL with a world of one (a machine with one GPU): every collective runs
// through NCCL on device memory and leaves the values as they were.
TEST(NcclTest, CollectivesWithAWorldOfOneOnTheGpu) {
  if (Status s = Device::cuda_available(); !s.is_ok()) GTEST_SKIP() << s.message();
  auto device = Device::create({"cuda", 0, 0});
  ASSERT_TRUE(device.is_ok()) << device.status().to_string();
  auto world = World::join(Launch{}, std::chrono::seconds(30), "");
  ASSERT_TRUE(world.is_ok());
  auto made = (*world)->communicator("nccl", Backend::kNccl, 0);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  Communicator& c = **made;
  std::vector<float> host(1000);
  std::iota(host.begin(), host.end(), 0.0f);
  auto mem = (*device)->allocate(host.size() * 4, "test");
  ASSERT_TRUE(mem.is_ok());
  auto stream = (*device)->create_stream("copies");
  ASSERT_TRUE(stream.is_ok());
  ASSERT_TRUE((*stream)->copy_to_device(*mem, host.data(), host.size() * 4, "input").is_ok());
  ASSERT_TRUE((*stream)->synchronize().is_ok());
  auto run = [](Result<CommWorkPtr> work) {
    ASSERT_TRUE(work.is_ok()) << work.status().to_string();
    ASSERT_TRUE((*work)->wait().is_ok());
  };
  run(c.all_gather(*mem, host.size(), CommDtype::kF32));
  run(c.reduce_scatter(*mem, host.size(), CommDtype::kF32, ReduceOp::kSum));
  run(c.all_reduce(*mem, host.size(), CommDtype::kF32, ReduceOp::kMax));
  run(c.broadcast(*mem, host.size() * 4, 0));
  EXPECT_TRUE(c.barrier().is_ok());
  std::vector<float> back(host.size());
  ASSERT_TRUE((*stream)->copy_to_host(back.data(), *mem, back.size() * 4, "output").is_ok());
  ASSERT_TRUE((*stream)->synchronize().is_ok());
  EXPECT_EQ(back, host);
  EXPECT_EQ(c.stats().collectives, 5u);
  (*device)->deallocate(*mem, host.size() * 4);
}

TEST(GlooTest, CollectivesOnTwoRanks) {
  SKIP_WITHOUT_GLOO();
  if (test::ran_on_ranks(2)) return;
  auto world = join();
  ASSERT_TRUE(world);
  auto made = world->communicator("test", Backend::kGloo);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  Communicator& c = **made;
  const int r = c.rank();
  ASSERT_EQ(c.world_size(), 2);

  // all_gather of an odd count: shards of 4 and 3.
  std::vector<float> g(7, -1.0f);
  const ShardRange mine = shard(7, 2, r);
  for (std::uint64_t i = mine.begin; i < mine.begin + mine.count; ++i) g[i] = 10.0f * r + i;
  auto work = c.all_gather(g.data(), g.size(), CommDtype::kF32);
  ASSERT_TRUE(work.is_ok());
  ASSERT_TRUE((*work)->wait().is_ok());
  for (int i = 0; i < 7; ++i) EXPECT_EQ(g[i], (i < 4 ? 0.0f : 10.0f) + i) << i;

  // reduce_scatter: this rank's shard holds the sum.
  std::vector<float> s(7);
  std::iota(s.begin(), s.end(), 1.0f + r);
  work = c.reduce_scatter(s.data(), s.size(), CommDtype::kF32, ReduceOp::kSum);
  ASSERT_TRUE(work.is_ok() && (*work)->wait().is_ok());
  for (std::uint64_t i = mine.begin; i < mine.begin + mine.count; ++i)
    EXPECT_EQ(s[i], 2.0f * i + 3.0f) << i;

  // all_reduce max, and broadcast from rank 1.
  double m = r == 0 ? 5.0 : -2.0;
  ASSERT_TRUE(c.all_reduce_now(&m, 1, CommDtype::kF64, ReduceOp::kMax).is_ok());
  EXPECT_EQ(m, 5.0);
  std::uint16_t half[3] = {0, 0, 0};
  if (r == 1) half[0] = 1, half[1] = 2, half[2] = 3;
  work = c.broadcast(half, sizeof(half), 1);
  ASSERT_TRUE(work.is_ok() && (*work)->wait().is_ok());
  EXPECT_EQ(half[2], 3);
  EXPECT_TRUE(c.barrier().is_ok());
  EXPECT_EQ(c.stats().bytes, 7u * 4 + 7u * 4 + 8 + sizeof(half));
  EXPECT_GT(union_seconds(c.take_busy()), 0.0);
}

TEST(GlooTest, RanksWithDifferentConfigsStop) {
  SKIP_WITHOUT_GLOO();
  if (test::ran_on_ranks(2)) return;
  auto launch = launch_from_env();
  ASSERT_TRUE(launch.is_ok());
  auto world =
      World::join(*launch, std::chrono::seconds(30), "config of " + std::to_string(launch->rank));
  ASSERT_FALSE(world.is_ok());
  EXPECT_NE(world.status().message().find("runs a different configuration"), std::string::npos)
      << world.status().message();
}

TEST(GlooTest, ACollectiveARankNeverJoinsTimesOut) {
  SKIP_WITHOUT_GLOO();
  if (test::ran_on_ranks(2)) return;
  auto launch = launch_from_env();
  ASSERT_TRUE(launch.is_ok());
  auto world = World::join(*launch, std::chrono::seconds(2), "");
  ASSERT_TRUE(world.is_ok()) << world.status().to_string();
  auto comm = (*world)->communicator("test", Backend::kGloo);
  ASSERT_TRUE(comm.is_ok());
  if ((*world)->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(6));  // alive, but never joins the collective
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  float x = 1;
  Status s = (*comm)->all_reduce_now(&x, 1, CommDtype::kF32, ReduceOp::kSum);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("communicator 'test': all_reduce failed"), std::string::npos)
      << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(GlooTest, AStoreNobodyServesIsAnErrorInTime) {
  SKIP_WITHOUT_GLOO();
  Launch two;
  two.rank = 1;
  two.world_size = 2;
  two.master_port = 1;  // nothing listens there
  two.source = "test";
  const auto t0 = std::chrono::steady_clock::now();
  auto world = World::join(two, std::chrono::seconds(2), "");
  ASSERT_FALSE(world.is_ok());
  EXPECT_NE(world.status().message().find("cannot reach the rendezvous store at 127.0.0.1:1"),
            std::string::npos)
      << world.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
}

}  // namespace
}  // namespace zinf::gpu
