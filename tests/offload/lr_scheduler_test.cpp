// zinf::LrScheduler drives LibTorch optimizers and zinf's drop-ins alike,
// with DeepSpeed's timing: the constructor sets the initial values, each
// step() advances by one.
#include "zinf/offload/lr_scheduler.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "zinf/offload/offload_optimizer.hpp"

namespace zinf {
namespace {

Config config(const std::string& scheduler) {
  auto c = Config::from_string(R"({"scheduler": )" + scheduler + "}");
  EXPECT_TRUE(c.is_ok()) << c.status().message();
  return *c;
}

std::tuple<double, double> betas_of(torch::optim::Optimizer& opt) {
  return static_cast<torch::optim::AdamWOptions&>(opt.param_groups().front().options()).betas();
}

TEST(LrSchedulerTest, OneCycleSetsLrAndBetasOfLibTorchsAdamW) {
  auto p = torch::zeros({4}, torch::requires_grad());
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(0.5));
  LrScheduler s = LrScheduler::from_config(
      opt, config(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1,
                                                      "cycle_first_step_size": 1000}})"));
  EXPECT_EQ(s.last_batch_iteration(), -1);
  EXPECT_DOUBLE_EQ(opt.param_groups().front().options().get_lr(), 0.01);
  EXPECT_EQ(betas_of(opt), std::make_tuple(0.8, 0.99));
  s.step();
  EXPECT_NEAR(opt.param_groups().front().options().get_lr(), 0.01009, 1e-12);
  EXPECT_NEAR(std::get<0>(betas_of(opt)), 0.8999, 1e-12);
  EXPECT_DOUBLE_EQ(std::get<1>(betas_of(opt)), 0.99);
}

TEST(LrSchedulerTest, WarmupLRDefaultsItsMaximumToTheOptimizersLr) {
  auto p = torch::zeros({4}, torch::requires_grad());
  OffloadAdamW opt({p}, torch::optim::AdamWOptions(2e-3), OffloadOptions().device("cpu"));
  LrScheduler s = LrScheduler::from_config(
      opt,
      config(
          R"({"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_type": "linear"}})"));
  EXPECT_DOUBLE_EQ(opt.param_groups().front().options().get_lr(), 0.0);
  for (int i = 0; i < 5; ++i) s.step();  // t = 4
  EXPECT_DOUBLE_EQ(s.last_lr(), 2e-3 * 4 / 10);
  EXPECT_DOUBLE_EQ(opt.param_groups().front().options().get_lr(), 2e-3 * 4 / 10);
}

// The drop-in trains as LibTorch's AdamW under the same schedule.
TEST(LrSchedulerTest, DropInUnderAScheduleTracksLibTorch) {
  const Config cfg = config(R"({"type": "WarmupCosineLR",
                                "params": {"total_num_steps": 20, "warmup_num_steps": 5}})");
  torch::manual_seed(1);
  const auto init = torch::randn({256});
  auto a = init.clone().requires_grad_(true), b = init.clone().requires_grad_(true);
  torch::optim::AdamW ta({a}, torch::optim::AdamWOptions(1e-2));
  OffloadAdamW za({b}, torch::optim::AdamWOptions(1e-2), OffloadOptions().device("cpu"));
  LrScheduler sa = LrScheduler::from_config(ta, cfg), sb = LrScheduler::from_config(za, cfg);
  for (int step = 0; step < 20; ++step) {
    torch::manual_seed(100 + step);
    const auto g = torch::randn({256});
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    ta.step();
    za.step();
    sa.step();
    sb.step();
  }
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-7)) << (a - b).abs().max().item<double>();
  EXPECT_FALSE(torch::equal(a, init)) << "the schedule let it train";
}

TEST(LrSchedulerTest, AConfigWithoutASchedulerIsAnError) {
  auto p = torch::zeros({4}, torch::requires_grad());
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(0.5));
  auto c = Config::from_string("{}", "ds.json");
  EXPECT_THROW(LrScheduler::from_config(opt, *c), Error);
}

}  // namespace
}  // namespace zinf
