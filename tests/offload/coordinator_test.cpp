// The parameter coordinator as pure logic: a fake engine (Actions) records
// what it is asked to do, and the checks are on counters and logs, never on
// timing.
#include "offload/coordinator.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace zinf::offload {
namespace {

class FakeEngine : public Coordinator::Actions {
 public:
  explicit FakeEngine(std::vector<Coordinator::Unit> units) : units_(std::move(units)) {}

  Status fetch(std::size_t unit) override {
    EXPECT_EQ(live_.count(unit), 0u) << "unit " << unit << " fetched twice";
    if (live_elements_ + units_[unit].numel > device_elements)
      return Status::resource_exhausted("the fake device is full");
    live_.insert(unit);
    live_elements_ += units_[unit].numel;
    peak_live_ = std::max(peak_live_, live_elements_);
    fetched.push_back(unit);
    return Status::ok();
  }
  void release(std::size_t unit) override {
    EXPECT_EQ(live_.count(unit), 1u) << "unit " << unit << " released while not live";
    live_.erase(unit);
    live_elements_ -= units_[unit].numel;
    released.push_back(unit);
  }
  bool stage(std::size_t unit) override {
    if (staged_.size() >= stage_slots) return false;
    staged_.insert(unit);
    staged.push_back(unit);
    return true;
  }
  void unstage(std::size_t unit) override { staged_.erase(unit); }
  void gather(std::size_t unit) override {
    EXPECT_TRUE(live(unit)) << "unit " << unit << " gathered while not on the device";
    EXPECT_TRUE(gathers_.insert(unit).second) << "unit " << unit << " gathered twice for a use";
    collectives.push_back(unit);
  }
  Status wait_gathers() override {
    gathers_.clear();  // their results are not used
    return Status::ok();
  }
  Status gather_unused(std::size_t unit) override {
    collectives.push_back(unit);
    ++unused;
    return Status::ok();
  }
  // The use of `unit` found its gather issued.
  bool take_gather(std::size_t unit) { return gathers_.erase(unit) == 1; }

  bool live(std::size_t unit) const { return live_.count(unit) != 0; }
  std::uint64_t live_elements() const { return live_elements_; }
  std::uint64_t peak_live() const { return peak_live_; }

  std::size_t stage_slots = 0;
  bool gathering = false;                // gather_on_use: every use must find its gather
  std::vector<std::size_t> collectives;  // gathers, issued and unused, in order
  std::size_t unused = 0;
  std::uint64_t device_elements = UINT64_MAX;  // what the device holds
  std::vector<std::size_t> fetched, released, staged;

 private:
  std::vector<Coordinator::Unit> units_;
  std::set<std::size_t> live_, staged_, gathers_;
  std::uint64_t live_elements_ = 0, peak_live_ = 0;
};

std::vector<Coordinator::Unit> units(std::size_t n, std::uint64_t numel, bool stageable = false) {
  std::vector<Coordinator::Unit> out;
  for (std::size_t i = 0; i < n; ++i)
    out.push_back({"u" + std::to_string(i), numel, /*resident=*/false, stageable});
  return out;
}

// One micro-step that uses `order` (use, then done, as the engine does for
// each forward call and each backward), checking that every used unit is live.
void micro_step(Coordinator& c, FakeEngine& e, const std::vector<std::size_t>& order,
                bool record = true) {
  c.begin_micro_step(record);
  for (std::size_t u : order) {
    ASSERT_TRUE(c.use(u).is_ok());
    ASSERT_TRUE(e.live(u)) << "unit " << u << " used while not on the device";
    if (e.gathering) {
      EXPECT_TRUE(e.take_gather(u)) << "unit " << u << " used without its gather";
    }
    c.done(u);
  }
  EXPECT_TRUE(c.end_micro_step().is_ok());
  EXPECT_EQ(e.live_elements(), 0u) << "everything is released at the end of a micro-step";
}

// Forward over 0..n-1, then backward in reverse: the shape of a real step.
std::vector<std::size_t> forward_backward(std::size_t n) {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < n; ++i) order.push_back(i);
  for (std::size_t i = n; i > 0; --i) order.push_back(i - 1);
  return order;
}

TEST(CoordinatorTest, ReplayPrefetchesInTraceOrder) {
  const auto u = units(5, 10);
  FakeEngine e(u);
  Coordinator c(u, {/*prefetch_bucket=*/10, /*max_live=*/1000, /*max_reuse_distance=*/0}, e);
  const auto order = forward_backward(5);

  micro_step(c, e, order);  // records
  EXPECT_TRUE(c.trace_complete());
  EXPECT_EQ(c.trace(), order);
  EXPECT_EQ(c.stats().prefetches, 0u) << "nothing to prefetch from before a trace exists";
  EXPECT_EQ(c.stats().fetches, order.size()) << "while recording, every use fetches on demand";

  c.clear_prefetch_log();
  const auto before = c.stats();
  micro_step(c, e, order);  // replays
  // Each trace entry whose unit is not on the device is prefetched, in order;
  // the turn between forward and backward (unit 4 twice) is one fetch.
  std::vector<std::size_t> expected = order;
  expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
  EXPECT_EQ(c.prefetch_log(), expected);
  EXPECT_EQ(c.stats().fetches, before.fetches) << "no on-demand fetch while replaying";
  EXPECT_EQ(c.stats().prefetch_hits - before.prefetch_hits, expected.size());
  EXPECT_EQ(c.stats().trace_invalidations, 0u);
}

TEST(CoordinatorTest, LiveParametersNeverExceedMaxLive) {
  const auto u = units(8, 10);
  FakeEngine e(u);
  Coordinator c(u, {/*prefetch_bucket=*/1000, /*max_live=*/25, /*max_reuse_distance=*/1000}, e);
  const auto order = forward_backward(8);
  for (int step = 0; step < 3; ++step) micro_step(c, e, order);
  EXPECT_LE(e.peak_live(), 25u);
  EXPECT_LE(c.stats().peak_live_elements, 25u);
  EXPECT_GT(c.stats().prefetches, 0u) << "the window still prefetches one unit ahead";
}

// Units kept for reuse (a reuse distance that keeps everything) fill a device
// smaller than the model: a fetch on demand makes room as max_live does, and
// a unit that does not fit next to those running is the device's error.
TEST(CoordinatorTest, AFullDeviceEvictsIdleUnitsOnDemand) {
  const auto u = units(6, 10);
  FakeEngine e(u);
  e.device_elements = 25;
  Coordinator c(u, {/*prefetch_bucket=*/1000, /*max_live=*/1000, /*max_reuse_distance=*/1000}, e);
  const auto order = forward_backward(6);
  for (int step = 0; step < 3; ++step) micro_step(c, e, order);
  EXPECT_LE(e.peak_live(), 25u);
  EXPECT_GT(c.stats().evictions, 0u);
  EXPECT_GT(c.stats().prefetches, 0u) << "a full device ends the window, it does not close it";

  e.device_elements = 5;
  c.begin_micro_step(false);
  Status s = c.use(0);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  EXPECT_NE(s.message().find("the fake device is full"), std::string::npos) << s.message();
  EXPECT_TRUE(c.end_micro_step(false).is_ok());
}

// Stage 3 across ranks: two ranks whose devices differ (rank 1's holds two
// units, so its prefetch stops where rank 0's goes on, and it evicts what
// rank 0 keeps) issue the same gathers in the same order, through replays,
// an order that changes, and a forward without backward; every use finds
// its gather issued, and none is issued into a unit not on the device.
TEST(CoordinatorTest, RanksThatFetchDifferentlyGatherInTheSameOrder) {
  const auto u = units(5, 10);
  const auto order = forward_backward(5);
  auto changed = order;
  changed.erase(changed.begin() + 2);  // a unit left out of the forward
  std::vector<std::size_t> collectives[2];
  std::size_t unused[2];
  CoordinatorStats stats[2];
  for (int rank = 0; rank < 2; ++rank) {
    FakeEngine e(u);
    e.gathering = true;
    if (rank == 1) e.device_elements = 20;
    Coordinator c(u,
                  {/*prefetch_bucket=*/30, /*max_live=*/1000, /*max_reuse_distance=*/1000,
                   /*gather_on_use=*/true},
                  e);
    micro_step(c, e, order);                              // records
    micro_step(c, e, order);                              // replays
    micro_step(c, e, changed);                            // leaves the trace
    micro_step(c, e, order);                              // records again
    micro_step(c, e, {0, 1, 2, 3, 4}, /*record=*/false);  // a forward without backward
    micro_step(c, e, order);                              // replays
    collectives[rank] = e.collectives;
    unused[rank] = e.unused;
    stats[rank] = c.stats();
  }
  EXPECT_EQ(collectives[0], collectives[1]);
  EXPECT_GT(stats[0].gathers_ahead, stats[1].gathers_ahead) << "rank 1 fetched ahead less";
  EXPECT_GT(unused[1], unused[0]) << "rank 1 took part in gathers rank 0 had issued ahead";
  EXPECT_GT(stats[1].evictions, 0u);
}

TEST(CoordinatorTest, AUnitLargerThanMaxLiveIsAnErrorNamingTheKey) {
  std::vector<Coordinator::Unit> u = {{"big", 100, false, false}};
  FakeEngine e(u);
  Coordinator c(u, {10, 50, 0}, e);
  c.begin_micro_step(true);
  Status s = c.use(0);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("stage3_max_live_parameters"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'big'"), std::string::npos) << s.message();
}

TEST(CoordinatorTest, AChangedOrderInvalidatesAndReRecords) {
  const auto u = units(4, 10);
  FakeEngine e(u);
  Coordinator c(u, {10, 1000, 0}, e);
  micro_step(c, e, {0, 1, 2, 3});
  micro_step(c, e, {0, 1, 2, 3});
  EXPECT_EQ(c.stats().trace_invalidations, 0u);

  const std::vector<std::size_t> changed = {0, 2, 1, 3};
  micro_step(c, e, changed);  // differs at position 1: fetch on demand from there
  EXPECT_EQ(c.stats().trace_invalidations, 1u);
  EXPECT_FALSE(c.trace_complete());

  micro_step(c, e, changed);  // records the new order
  EXPECT_TRUE(c.trace_complete());
  EXPECT_EQ(c.trace(), changed);

  c.clear_prefetch_log();
  const auto before = c.stats();
  micro_step(c, e, changed);  // replays it
  EXPECT_EQ(c.prefetch_log(), changed);
  EXPECT_EQ(c.stats().trace_invalidations, 1u);
  EXPECT_EQ(c.stats().fetches, before.fetches);
}

TEST(CoordinatorTest, MaxReuseDistanceKeepsAUnitUsedAgainSoon) {
  // Unit 0 is used, then units 1 and 2 (20 elements), then 0 again.
  const std::vector<std::size_t> order = {0, 1, 2, 0};
  for (const std::uint64_t distance : {std::uint64_t{20}, std::uint64_t{19}}) {
    const auto u = units(3, 10);
    FakeEngine e(u);
    Coordinator c(u, {/*prefetch_bucket=*/0, /*max_live=*/1000, distance}, e);
    micro_step(c, e, order);  // records
    const auto before = c.stats();
    micro_step(c, e, order);
    const std::uint64_t reuse = c.stats().reuse_hits - before.reuse_hits;
    if (distance >= 20) {
      EXPECT_EQ(reuse, 1u) << "distance " << distance << ": unit 0 is kept for its second use";
      EXPECT_EQ(c.stats().fetches - before.fetches, 3u);
    } else {
      EXPECT_EQ(reuse, 0u) << "distance " << distance << ": unit 0 is released in between";
      EXPECT_EQ(c.stats().fetches - before.fetches, 4u);
    }
  }
}

TEST(CoordinatorTest, StagesNvmeUnitsBeyondTheDeviceWindow) {
  const auto u = units(6, 10, /*stageable=*/true);
  FakeEngine e(u);
  e.stage_slots = 2;
  Coordinator c(u, {/*prefetch_bucket=*/10, 1000, 0}, e);
  const std::vector<std::size_t> order = {0, 1, 2, 3, 4, 5};
  micro_step(c, e, order);
  micro_step(c, e, order);
  // At the start of the replay, unit 0 is prefetched and units 1 and 2 (as
  // far as there are buffers) are read ahead.
  ASSERT_GE(e.staged.size(), 2u);
  EXPECT_EQ(e.staged[0], 1u);
  EXPECT_EQ(e.staged[1], 2u);
  EXPECT_GT(c.stats().staged, 0u);
}

TEST(CoordinatorTest, ResidentUnitsAreNeverFetched) {
  std::vector<Coordinator::Unit> u = {{"root", 10, /*resident=*/true, false},
                                      {"a", 10, false, false}};
  FakeEngine e(u);
  Coordinator c(u, {10, 1000, 0}, e);
  c.begin_micro_step(true);
  ASSERT_TRUE(c.use(0).is_ok());
  ASSERT_TRUE(c.use(1).is_ok());
  c.done(1);
  c.done(0);
  EXPECT_TRUE(c.end_micro_step().is_ok());
  EXPECT_EQ(e.fetched, std::vector<std::size_t>{1});
  EXPECT_EQ(c.trace(), std::vector<std::size_t>{1});
}

}  // namespace
}  // namespace zinf::offload
