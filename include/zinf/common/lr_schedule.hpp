// DeepSpeed's learning-rate schedules (deepspeed/runtime/lr_schedules.py) as
// pure functions of the scheduler's step count t, DeepSpeed's
// last_batch_iteration: t = -1 is what the scheduler's constructor sets, and
// each scheduler step() adds one. DeepSpeed's engine steps the scheduler
// after every applied optimizer update (not after skipped ones, not per
// micro-step), so update k (1-based) runs with lr(k - 2).
//
//   WarmupLR       g = ln(t+1)/ln N (log) or t/N (linear) while t < N, then 1,
//                  N = max(2, warmup_num_steps); lr = min + (max - min) g;
//                  t < 0: min. max defaults to the optimizer's lr.
//   WarmupDecayLR  as WarmupLR, then g = max(0, (T - t) / max(1, T - N)).
//   WarmupCosineLR ratio of the optimizer's lr: warmup_min_ratio + (1 - it) g
//                  while t < N, then cos_min_ratio + (1 - cos_min_ratio)
//                  (1 + cos(pi p)) / 2, p = min(1, (t - N + 1) / max(1, T - N));
//                  t < 0: 0 (the first update runs at lr 0, as in DeepSpeed).
//   OneCycle       up from cycle_min_lr to cycle_max_lr over the first step
//                  size, down over the second (optionally in stairs), then
//                  min / (1 + decay_lr_rate d / decay_step_size); with
//                  cycle_momentum, beta1 moves the other way between
//                  cycle_max_mom and cycle_min_mom and beta2 becomes 0.99.
//   LRRangeTest    min (1 + rate i), i = (t + 1) / step_size (floored with
//                  staircase).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"

namespace zinf {

class LrSchedule {
 public:
  // `base_lr` is the optimizer's lr (WarmupLR's default maximum,
  // WarmupCosineLR's base). Errors name the scheduler param.
  static Result<LrSchedule> create(const SchedulerConfig& config, double base_lr);

  double lr(std::int64_t t) const;
  // (beta1, beta2) at t where the schedule sets them (OneCycle with
  // cycle_momentum), else nullopt.
  std::optional<std::pair<double, double>> betas(std::int64_t t) const;
  const std::string& type() const { return config_.type; }

 private:
  LrSchedule(SchedulerConfig config, double base_lr)
      : config_(std::move(config)), base_lr_(base_lr) {}
  double warmup_gamma(std::int64_t t) const;
  double one_cycle_scale(std::int64_t t) const;

  SchedulerConfig config_;
  double base_lr_;
};

}  // namespace zinf
