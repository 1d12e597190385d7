#include "zinf/common/busy_time.hpp"

#include <gtest/gtest.h>

namespace zinf {
namespace {

using std::chrono::milliseconds;

Interval at(int begin_ms, int end_ms) {
  const SteadyClock::time_point t0{};
  return {t0 + milliseconds(begin_ms), t0 + milliseconds(end_ms)};
}

TEST(UnionSeconds, OverlapsCountOnce) {
  EXPECT_DOUBLE_EQ(union_seconds({}), 0.0);
  EXPECT_NEAR(union_seconds({at(0, 10), at(5, 15), at(20, 30)}), 0.025, 1e-12);
  EXPECT_NEAR(union_seconds({at(20, 30), at(0, 40), at(1, 2)}), 0.040, 1e-12);
  EXPECT_NEAR(union_seconds({at(0, 10), at(10, 20)}), 0.020, 1e-12);
  EXPECT_DOUBLE_EQ(union_seconds({at(5, 5), at(9, 3)}), 0.0);  // empty and reversed: nothing
}

TEST(Merged, DisjointInTimeOrder) {
  const auto m = merged({at(20, 30), at(0, 10), at(5, 15), at(30, 35), at(9, 3)});
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].begin, at(0, 15).begin);
  EXPECT_EQ(m[0].end, at(0, 15).end);
  EXPECT_EQ(m[1].begin, at(20, 35).begin);  // touching periods join
  EXPECT_EQ(m[1].end, at(20, 35).end);
}

TEST(Subtract, LeavesThePeriodsOutsideTheHoles) {
  const auto d = subtract({at(0, 10), at(20, 40), at(5, 12)}, {at(2, 4), at(30, 50), at(3, 6)});
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].end, at(0, 2).end);
  EXPECT_EQ(d[1].begin, at(6, 12).begin);
  EXPECT_EQ(d[1].end, at(6, 12).end);
  EXPECT_EQ(d[2].begin, at(20, 30).begin);
  EXPECT_EQ(d[2].end, at(20, 30).end);
  EXPECT_NEAR(union_seconds(d), 0.002 + 0.006 + 0.010, 1e-12);
  EXPECT_TRUE(subtract({at(0, 10)}, {at(0, 10)}).empty());
}

TEST(Clip, KeepsThePartInside) {
  const auto t0 = SteadyClock::time_point{};
  auto c = clip({at(0, 10), at(15, 30), at(40, 50)}, t0 + milliseconds(5), t0 + milliseconds(20));
  ASSERT_EQ(c.size(), 2u);
  EXPECT_NEAR(union_seconds(c), 0.010, 1e-12);
}

TEST(BusyLog, NestedActivitiesMakeOnePeriod) {
  BusyLog log;
  log.begin();
  log.begin();
  log.end();
  log.end();
  log.end();  // an unmatched end is ignored
  auto periods = log.take();
  ASSERT_EQ(periods.size(), 1u);
  EXPECT_LE(periods[0].begin, periods[0].end);
  EXPECT_TRUE(log.take().empty());
}

TEST(BusyLog, TakeCutsAnOpenPeriod) {
  BusyLog log;
  log.begin();
  auto first = log.take();
  ASSERT_EQ(first.size(), 1u);
  log.end();
  auto second = log.take();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_GE(second[0].begin, first[0].end);
  log.add(at(1, 2));
  EXPECT_EQ(log.take().size(), 1u);
}

}  // namespace
}  // namespace zinf
