// DeepSpeed's schedules at chosen steps. The expected values are DeepSpeed's
// (worked from deepspeed/runtime/lr_schedules.py and checked against the
// examples in ../shared/REFERENCE-TRAINING.md), not produced by this code.
#include "zinf/common/lr_schedule.hpp"

#include <gtest/gtest.h>

namespace zinf {
namespace {

LrSchedule schedule(const std::string& json, double base_lr = 1e-3) {
  auto c = Config::from_string(R"({"scheduler": )" + json + "}");
  EXPECT_TRUE(c.is_ok()) << c.status().message();
  auto s = LrSchedule::create(*c->scheduler, base_lr);
  EXPECT_TRUE(s.is_ok()) << s.status().message();
  return *s;
}

void expect_lr(const LrSchedule& s, std::int64_t t, double lr) {
  EXPECT_NEAR(s.lr(t), lr, 1e-9 + 1e-5 * lr) << s.type() << " at t = " << t;
}

TEST(LrScheduleTest, WarmupLR) {
  const auto log =
      schedule(R"({"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-3}})");
  expect_lr(log, -1, 0);
  expect_lr(log, 0, 0);
  expect_lr(log, 9, 3.33333e-4);
  expect_lr(log, 999, 1e-3);
  expect_lr(log, 5000, 1e-3);
  const auto linear =
      schedule(R"({"type": "WarmupLR", "params": {"warmup_type": "linear"}})", 1e-3);
  expect_lr(linear, 999, 9.99e-4);
  // warmup_max_lr unset: the optimizer's lr.
  const auto to_base =
      schedule(R"({"type": "WarmupLR", "params": {"warmup_num_steps": 10}})", 5e-4);
  expect_lr(to_base, 10, 5e-4);
  // warmup_num_steps below 2 counts as 2.
  const auto short_warmup = schedule(
      R"({"type": "WarmupLR", "params": {"warmup_num_steps": 1, "warmup_type": "linear"}})");
  expect_lr(short_warmup, 1, 5e-4);
}

TEST(LrScheduleTest, WarmupDecayLR) {
  const auto s = schedule(R"({"type": "WarmupDecayLR",
                             "params": {"total_num_steps": 10000, "warmup_max_lr": 0.001}})");
  expect_lr(s, 1000, 1e-3);
  expect_lr(s, 5499, 5.00111e-4);
  expect_lr(s, 10000, 0);
  expect_lr(s, 20000, 0);
}

TEST(LrScheduleTest, WarmupCosineLR) {
  const auto s =
      schedule(R"({"type": "WarmupCosineLR", "params": {"total_num_steps": 10000}})", 1e-3);
  expect_lr(s, -1, 0);  // the constructor sets 0: the first update runs at lr 0
  expect_lr(s, 0, 0);
  expect_lr(s, 5499, 5.0005e-4);
  expect_lr(s, 9999, 1e-7);
  expect_lr(s, 30000, 1e-7);
}

TEST(LrScheduleTest, OneCycle) {
  const auto s =
      schedule(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1,
                                                               "cycle_first_step_size": 1000}})");
  expect_lr(s, -1, 0.01);
  EXPECT_DOUBLE_EQ(s.betas(-1)->first, 0.8);
  EXPECT_DOUBLE_EQ(s.betas(-1)->second, 0.99);
  expect_lr(s, 0, 0.01009);
  EXPECT_NEAR(s.betas(0)->first, 0.8999, 1e-9);
  expect_lr(s, 999, 0.1);
  EXPECT_NEAR(s.betas(999)->first, 0.8, 1e-9);
  expect_lr(s, 1999, 0.01);
  EXPECT_NEAR(s.betas(1999)->first, 0.9, 1e-9);
  expect_lr(s, 5000, 0.01);  // no decay rate: the minimum
  EXPECT_NEAR(s.betas(5000)->first, 0.9, 1e-9);
  const auto decay =
      schedule(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1,
      "cycle_first_step_size": 10, "decay_lr_rate": 0.5, "decay_step_size": 5}})");
  expect_lr(decay, 29, 5e-3);
  const auto no_momentum = schedule(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.01,
      "cycle_max_lr": 0.1, "cycle_momentum": false}})");
  EXPECT_FALSE(no_momentum.betas(0).has_value());
  // Stairs: 4 steps up over 1000, so the lr rises by a quarter every 250.
  const auto stairs =
      schedule(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.0, "cycle_max_lr": 1.0,
      "cycle_first_step_size": 1000, "cycle_first_stair_count": 4}})");
  expect_lr(stairs, 248, 0.0);
  expect_lr(stairs, 249, 0.25);
  expect_lr(stairs, 998, 0.75);
  expect_lr(stairs, 999, 1.0);
}

TEST(LrScheduleTest, LRRangeTest) {
  const auto s = schedule(R"({"type": "LRRangeTest", "params": {}})");
  expect_lr(s, -1, 1e-3);
  expect_lr(s, 0, 1.0005e-3);
  expect_lr(s, 1999, 2e-3);
  const auto stairs = schedule(R"({"type": "LRRangeTest", "params": {"lr_range_test_step_size": 10,
      "lr_range_test_step_rate": 2, "lr_range_test_staircase": true}})");
  expect_lr(stairs, 8, 1e-3);
  expect_lr(stairs, 9, 3e-3);
}

TEST(LrScheduleTest, BadBlocksNameTheKey) {
  auto expect_error = [](const std::string& json, const std::string& what) {
    auto c = Config::from_string(R"({"scheduler": )" + json + "}");
    ASSERT_FALSE(c.is_ok()) << json;
    EXPECT_NE(c.status().message().find(what), std::string::npos) << c.status().message();
  };
  expect_error(R"({"type": "warmuplr"})", "scheduler.type: unsupported scheduler \"warmuplr\"");
  expect_error(R"({"type": "WarmupDecayLR", "params": {}})", "total_num_steps is required");
  expect_error(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.1}})",
               "cycle_max_lr is required");
  expect_error(R"({"type": "WarmupLR", "params": {"cycle_min_lr": 0.1}})",
               "scheduler.params.cycle_min_lr: unknown key");
  expect_error(R"({"type": "WarmupLR", "params": {"warmup_num_steps": -5}})",
               "scheduler.params.warmup_num_steps");
  expect_error(R"({"type": "WarmupLR", "params": {"last_batch_iteration": 7}})",
               "scheduler.params.last_batch_iteration: only -1");
}

}  // namespace
}  // namespace zinf
