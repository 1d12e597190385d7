#include "zinf/common/loss_scaler.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace zinf {

LossScaler::LossScaler(const Fp16Config& config) : config_(config) {
  if (!config.enabled) return;
  dynamic_ = config.loss_scale == 0;
  scale_ = dynamic_ ? std::ldexp(1.0, config.initial_scale_power) : config.loss_scale;
  hysteresis_ = config.hysteresis;
}

Status LossScaler::update(bool overflow) {
  if (!dynamic_) return Status::ok();
  if (overflow) {
    if (config_.hysteresis == 1 || hysteresis_ == 1) {
      if (scale_ <= config_.min_loss_scale) {
        return Status::failed_precondition(
            "fp16: a gradient overflowed at the minimum loss scale (fp16.min_loss_scale = " +
            std::to_string(config_.min_loss_scale) +
            "): training diverged, or lower min_loss_scale, or train in bf16");
      }
      scale_ = std::max(scale_ / 2, config_.min_loss_scale);
    } else {
      --hysteresis_;
    }
    last_overflow_ = iteration_;
  } else {
    if (config_.consecutive_hysteresis) hysteresis_ = config_.hysteresis;
    const std::int64_t stable = iteration_ - last_overflow_ - 1;
    if (stable > 0 && stable % config_.loss_scale_window == 0) {
      scale_ *= 2;
      if (!config_.consecutive_hysteresis) hysteresis_ = config_.hysteresis;
    }
  }
  ++iteration_;
  return Status::ok();
}

}  // namespace zinf
