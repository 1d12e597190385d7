// The fault injector's own contract: faults are reproducible from the seed,
// `nth` fires exactly once, `only` and `max_faults` are honoured.
#include <fcntl.h>
#include <unistd.h>

#include "swap/swap_test_util.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::swap {
namespace {

// Runs `count` 4 KiB reads through a psync engine wrapped by `spec` and
// returns which ones failed.
std::vector<bool> failures(const FaultSpec& spec, IoOp op, int count) {
  testing::ScratchDir dir;
  const auto path = dir.path() / "f";
  auto file = open_direct(path, O_RDWR | O_CREAT | O_EXCL, 0600, true);
  EXPECT_TRUE(file.is_ok());
  EXPECT_EQ(::ftruncate(file->fd.get(), 1 << 20), 0);
  IoEngineOptions options;
  options.queue_depth = 1;
  auto engine = make_io_engine(IoBackend::kPsync, options);
  EXPECT_TRUE(engine.is_ok());
  auto faulty = make_fault_injecting_engine(std::move(*engine), spec);
  const int index = *faulty->add_file(file->fd.get(), path.string());
  auto buf = AlignedBuffer::allocate(kIoAlignment);
  std::vector<bool> failed;
  for (int i = 0; i < count; ++i) {
    IoRequest r{op, index, 0, buf->data(), static_cast<std::uint32_t>(kIoAlignment), 0};
    EXPECT_TRUE(faulty->submit({&r, 1}).is_ok());
    IoCompletion c;
    EXPECT_EQ(*faulty->reap({&c, 1}, 1, std::chrono::seconds(10)), 1u);
    failed.push_back(c.result < 0);
  }
  return failed;
}

TEST(FaultEngineTest, SameSeedSameFaults) {
  FaultSpec spec;
  spec.rate = 0.5;
  spec.seed = 99;
  auto a = failures(spec, IoOp::kWrite, 64);
  EXPECT_EQ(a, failures(spec, IoOp::kWrite, 64));
  spec.seed = 100;
  EXPECT_NE(a, failures(spec, IoOp::kWrite, 64));
  const auto n = std::count(a.begin(), a.end(), true);
  EXPECT_GT(n, 10);
  EXPECT_LT(n, 54);
}

TEST(FaultEngineTest, NthFiresExactlyOnce) {
  FaultSpec spec;
  spec.nth = 5;
  auto f = failures(spec, IoOp::kRead, 12);
  std::vector<bool> expected(12, false);
  expected[4] = true;
  EXPECT_EQ(f, expected);
}

TEST(FaultEngineTest, OnlyAndMaxFaultsAreHonoured) {
  FaultSpec spec;
  spec.rate = 1.0;
  spec.only = IoOp::kWrite;
  auto reads = failures(spec, IoOp::kRead, 8);
  EXPECT_EQ(std::count(reads.begin(), reads.end(), true), 0);
  spec.only.reset();
  spec.max_faults = 3;
  auto capped = failures(spec, IoOp::kRead, 8);
  EXPECT_EQ(std::count(capped.begin(), capped.end(), true), 3);
}

}  // namespace
}  // namespace zinf::swap
