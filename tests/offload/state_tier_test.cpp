// The optimizer-state tiers' update contract when the update itself fails,
// by an error or by a throw (a c10::Error from a device copy, a bad_alloc):
// the error comes back as a Status after the tier's I/O has drained; the
// NVMe tier keeps the previous state whole, the host tier (updated in place)
// keeps what the pieces before the failure computed.
#include "offload/state_tier.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <new>
#include <thread>
#include <vector>

#include "swap/swap_test_util.hpp"

namespace zinf::offload {
namespace {

using swap::testing::ScratchDir;

TierShape shape() {
  TierShape s;
  s.groups = {6144, 6144};
  s.num_states = 3;
  return s;
}

// Element e of state k starts as k * 1e6 + e.
Status init(Piece& p) {
  for (int k = 0; k < 3; ++k)
    for (std::uint64_t i = 0; i < p.count; ++i) p.state[k][i] = float(k * 1e6 + p.begin + i);
  return Status::ok();
}

std::vector<float> snapshot(StateTier& tier) {
  std::vector<float> out(3 * shape().elements());
  EXPECT_TRUE(tier.read([&](Piece& p) {
                    for (int k = 0; k < 3; ++k)
                      std::copy(p.state[k], p.state[k] + p.count,
                                out.begin() + k * shape().elements() + p.begin);
                    return Status::ok();
                  })
                  .is_ok());
  return out;
}

// Adds 1 to every state of each piece, and fails in the third piece.
template <typename Failure>
PieceFn failing_at_third(Failure fail) {
  return [fail](Piece& p) -> Status {
    for (int k = 0; k < 3; ++k)
      for (std::uint64_t i = 0; i < p.count; ++i) p.state[k][i] += 1;
    if (p.index == 2) return fail();
    return Status::ok();
  };
}

void expect_contract(StateTier& tier, const PieceFn& fn, const std::string& needle) {
  const auto before = snapshot(tier);
  ASSERT_GT(tier.pieces(), 3u);
  StepStats stats;
  Status s = tier.update(fn, stats);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
  const auto after = snapshot(tier);
  if (tier.atomic()) {
    EXPECT_EQ(after, before);
  } else {
    std::size_t changed = 0;
    for (std::size_t i = 0; i < after.size(); ++i) changed += after[i] != before[i];
    EXPECT_GT(changed, 0u) << "the host tier updates in place";
  }
  EXPECT_TRUE(tier.update([](Piece&) { return Status::ok(); }, stats).is_ok()) << "usable again";
}

TEST(StateTierTest, AFailedOrThrowingUpdateIsAStatusAndNvmeKeepsThePreviousState) {
  ScratchDir dir;
  const std::vector<std::pair<PieceFn, std::string>> failures = {
      {failing_at_third([]() -> Status { return Status::internal("copy failed"); }), "copy failed"},
      {failing_at_third([]() -> Status { throw std::bad_alloc(); }), "out of host memory"},
      {failing_at_third([]() -> Status { TORCH_CHECK(false, "device lost"); }),
       "LibTorch: device lost"}};
  auto nvme =
      make_nvme_tier(shape(), OffloadOptions().device("nvme").nvme_path(dir.path()), "AdamW", init);
  ASSERT_TRUE(nvme.is_ok()) << nvme.status().to_string();
  auto host = make_host_tier(
      [] {
        TierShape s = shape();
        s.chunk = 2048;
        return s;
      }(),
      false, init);
  ASSERT_TRUE(host.is_ok()) << host.status().to_string();
  for (const auto& [fn, needle] : failures) {
    expect_contract(**nvme, fn, needle);
    expect_contract(**host, fn, needle);
  }
}

// replace() is all or nothing on both tiers: a failure at the third piece
// leaves the state as it was (the host tier drops its second copy), and a
// replace that succeeds keeps exactly what `fn` wrote.
TEST(StateTierTest, ReplaceIsAllOrNothingOnBothTiers) {
  ScratchDir dir;
  auto nvme =
      make_nvme_tier(shape(), OffloadOptions().device("nvme").nvme_path(dir.path()), "AdamW", init);
  ASSERT_TRUE(nvme.is_ok()) << nvme.status().to_string();
  TierShape chunked = shape();
  chunked.chunk = 2048;
  auto host = make_host_tier(chunked, false, init);
  ASSERT_TRUE(host.is_ok()) << host.status().to_string();
  auto set_to = [](float v, std::size_t fail_at) {
    return [v, fail_at](Piece& p) -> Status {
      for (int k = 0; k < 3; ++k) std::fill(p.state[k], p.state[k] + p.count, v + float(k));
      return p.index == fail_at ? Status::data_loss("checksum mismatch") : Status::ok();
    };
  };
  for (StateTier* tier : {nvme->get(), host->get()}) {
    ASSERT_GT(tier->pieces(), 3u);
    const auto before = snapshot(*tier);
    StepStats stats;
    Status s = tier->replace(set_to(7, 2), stats);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
    EXPECT_EQ(snapshot(*tier), before) << "a failed replace changed the state";
    ASSERT_TRUE(tier->replace(set_to(7, SIZE_MAX), stats).is_ok());
    const auto after = snapshot(*tier);
    for (int k = 0; k < 3; ++k) EXPECT_EQ(after[k * shape().elements()], 7.0f + float(k));
  }
}

// A read the device holds past its cancel is lost: that pass fails, the
// next ones run through a stand-in for the buffer the kernel may still fill,
// and once the late completion has been reaped the pool's own buffer is back
// (host bytes as before) and the state is whole.
TEST(StateTierTest, ALostReadFailsOnePassAndAStandInCarriesTheNextUntilTheKernelReturns) {
  ScratchDir dir;
  swap::FaultSpec fault;
  fault.kind = swap::FaultKind::kDelay;
  fault.only = swap::IoOp::kRead;
  fault.nth = 1;
  fault.delay = std::chrono::milliseconds(3000);  // lost at 2 s, returned at 3 s
  auto tier = make_nvme_tier(
      shape(), OffloadOptions().device("nvme").nvme_path(dir.path()).io_timeout(1).fault(fault),
      "AdamW", init);
  ASSERT_TRUE(tier.is_ok()) << tier.status().to_string();
  const std::uint64_t host = (*tier)->bytes().host;
  auto noop = [](Piece&) { return Status::ok(); };
  Status lost = (*tier)->read(noop);
  EXPECT_NE(lost.message().find("lost completion"), std::string::npos) << lost.to_string();

  std::vector<float> expected(3 * shape().elements());
  for (int k = 0; k < 3; ++k)
    for (std::uint64_t e = 0; e < shape().elements(); ++e)
      expected[k * shape().elements() + e] = float(k * 1e6 + e);
  EXPECT_EQ(snapshot(**tier), expected);
  EXPECT_GT((*tier)->bytes().host, host) << "no stand-in while the kernel holds the buffer";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((*tier)->bytes().host > host && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(snapshot(**tier), expected);  // each pass drives the store, which reaps it
  }
  EXPECT_EQ((*tier)->bytes().host, host) << "the stand-in outlived the lost request";
}

}  // namespace
}  // namespace zinf::offload
