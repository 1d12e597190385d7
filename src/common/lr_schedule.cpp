#include "zinf/common/lr_schedule.hpp"

#include <algorithm>
#include <cmath>

namespace zinf {

Result<LrSchedule> LrSchedule::create(const SchedulerConfig& config, double base_lr) {
  auto bad = [&](const std::string& what) {
    return Status::invalid_argument("scheduler (" + config.type + "): " + what);
  };
  if (config.type == "WarmupDecayLR" || config.type == "WarmupCosineLR") {
    if (!config.total_num_steps) return bad("params.total_num_steps is required");
  }
  if (config.type == "OneCycle") {
    if (!config.cycle_min_lr || !config.cycle_max_lr)
      return bad("params.cycle_min_lr and params.cycle_max_lr are required");
  } else if (config.type != "WarmupLR" && config.type != "WarmupDecayLR" &&
             config.type != "WarmupCosineLR" && config.type != "LRRangeTest") {
    return bad("unknown type");
  }
  SchedulerConfig c = config;
  if (!c.warmup_max_lr) c.warmup_max_lr = base_lr;
  return LrSchedule(std::move(c), base_lr);
}

double LrSchedule::warmup_gamma(std::int64_t t) const {
  const auto n = static_cast<double>(std::max<std::uint64_t>(2, config_.warmup_num_steps));
  const auto x = static_cast<double>(t);
  if (x < n) return config_.warmup_type == "linear" ? x / n : std::log(x + 1) / std::log(n);
  if (config_.type == "WarmupDecayLR") {
    const auto total = static_cast<double>(*config_.total_num_steps);
    return std::max(0.0, (total - x) / std::max(1.0, total - n));
  }
  return 1.0;
}

double LrSchedule::one_cycle_scale(std::int64_t t) const {
  const auto s1 = static_cast<double>(config_.cycle_first_step_size);
  const auto s2 =
      static_cast<double>(config_.cycle_second_step_size.value_or(config_.cycle_first_step_size));
  const double total = s1 + s2;
  const double b = static_cast<double>(t + 1);
  const auto n1 = config_.cycle_first_stair_count;
  const auto n2 = config_.cycle_second_stair_count.value_or(n1);
  const double c = std::fmod(b, total);  // position in the cycle
  if (c <= s1 && n1 > 0)
    return std::floor(c * static_cast<double>(n1) / s1) / static_cast<double>(n1);
  if (c > s1 && n2 > 0)
    return std::floor((total - c) * static_cast<double>(n2) / s2) / static_cast<double>(n2);
  const double q = s1 / total;
  const double x = b / total - std::floor(b / total);
  return x <= q ? x / q : (x - 1) / (q - 1);
}

double LrSchedule::lr(std::int64_t t) const {
  const SchedulerConfig& c = config_;
  if (c.type == "WarmupLR" || c.type == "WarmupDecayLR") {
    if (t < 0) return c.warmup_min_lr;
    return c.warmup_min_lr + (*c.warmup_max_lr - c.warmup_min_lr) * warmup_gamma(t);
  }
  if (c.type == "WarmupCosineLR") {
    if (t < 0) return 0.0;
    const auto n = static_cast<double>(std::max<std::uint64_t>(2, c.warmup_num_steps));
    const auto x = static_cast<double>(t);
    if (x < n) return base_lr_ * (c.warmup_min_ratio + (1 - c.warmup_min_ratio) * warmup_gamma(t));
    const auto total = static_cast<double>(*c.total_num_steps);
    const double p = std::min(1.0, (x - n + 1) / std::max(1.0, total - n));
    const double kPi = std::acos(-1.0);
    return base_lr_ *
           std::max(0.0, c.cos_min_ratio + (1 - c.cos_min_ratio) * (1 + std::cos(kPi * p)) / 2);
  }
  if (c.type == "OneCycle") {
    const double lo = *c.cycle_min_lr, hi = *c.cycle_max_lr;
    if (t < 0) return lo;
    const auto total = static_cast<double>(
        c.cycle_first_step_size + c.cycle_second_step_size.value_or(c.cycle_first_step_size));
    if (static_cast<double>(t) < total) return lo + (hi - lo) * one_cycle_scale(t);
    if (c.decay_lr_rate == 0 || c.decay_step_size == 0) return lo;
    const double d = static_cast<double>(t) - total + 1;
    return lo / (1 + c.decay_lr_rate * d / static_cast<double>(c.decay_step_size));
  }
  // LRRangeTest
  const double i = static_cast<double>(t + 1) / static_cast<double>(c.lr_range_test_step_size);
  return c.lr_range_test_min_lr *
         (1 + c.lr_range_test_step_rate * (c.lr_range_test_staircase ? std::floor(i) : i));
}

std::optional<std::pair<double, double>> LrSchedule::betas(std::int64_t t) const {
  const SchedulerConfig& c = config_;
  if (c.type != "OneCycle" || !c.cycle_momentum) return std::nullopt;
  constexpr double kBeta2 = 0.99;  // DeepSpeed's OneCycle overwrites beta2
  if (t < 0) return std::pair{c.cycle_min_mom, kBeta2};
  const auto total = static_cast<double>(
      c.cycle_first_step_size + c.cycle_second_step_size.value_or(c.cycle_first_step_size));
  if (static_cast<double>(t) < total)
    return std::pair{c.cycle_max_mom - (c.cycle_max_mom - c.cycle_min_mom) * one_cycle_scale(t),
                     kBeta2};
  if (c.decay_mom_rate == 0 || c.decay_step_size == 0) return std::pair{c.cycle_max_mom, kBeta2};
  const double d = static_cast<double>(t) - total + 1;
  return std::pair{
      c.cycle_max_mom * (1 + c.decay_mom_rate * d / static_cast<double>(c.decay_step_size)),
      kBeta2};
}

}  // namespace zinf
