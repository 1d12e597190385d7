// DeepSpeed's learning-rate schedules (zinf/common/lr_schedule.hpp) driving
// a LibTorch optimizer: zinf's drop-ins or LibTorch's own. As in DeepSpeed,
// the constructor sets the schedule's initial lr (and, for OneCycle with
// cycle_momentum, the betas of Adam, AdamW and Lion groups), and step(),
// called after each optimizer.step() that updated, advances it by one:
//
//   zinf::OffloadAdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
//   auto sched = zinf::LrScheduler::from_config(opt, config);  // the "scheduler" block
//   for (...) { ...; opt.step(); if (!opt.last_step_skipped()) sched.step(); }
//
// zinf::Engine runs its config's schedule itself. The optimizer must outlive
// the scheduler; one thread uses both.
#pragma once

#include <torch/optim/optimizer.h>

#include <cstdint>

#include "zinf/common/config.hpp"
#include "zinf/common/lr_schedule.hpp"

namespace zinf {

class LrScheduler {
 public:
  LrScheduler(torch::optim::Optimizer& optimizer, LrSchedule schedule);
  // The config's scheduler block, based on the first group's lr; throws
  // zinf::Error naming the file when the config has none or it is invalid.
  static LrScheduler from_config(torch::optim::Optimizer& optimizer, const Config& config);

  void step();
  // DeepSpeed's last_batch_iteration: -1 before the first step().
  std::int64_t last_batch_iteration() const { return t_; }
  double last_lr() const { return schedule_.lr(t_); }

 private:
  void apply();

  torch::optim::Optimizer& optimizer_;
  LrSchedule schedule_;
  std::int64_t t_ = -1;
  bool warned_ = false;  // about an optimizer without betas, once
};

}  // namespace zinf
