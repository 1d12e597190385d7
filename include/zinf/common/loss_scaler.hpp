// fp16 loss scaling with DeepSpeed's rules (deepspeed/runtime/fp16/
// loss_scaler.py, as ZeRO-3 runs it). The loss is multiplied by scale()
// before backward; at each optimizer boundary, update() is told whether any
// gradient was inf or nan:
//
//   overflow  the step is skipped. With hysteresis h left above 1 it only
//             counts down (h -= 1); at 1, the scale halves (not below
//             min_loss_scale; already at the minimum is an error, as
//             DeepSpeed's exception). Halving never refills h.
//   clean     with consecutive_hysteresis, h refills. After every
//             loss_scale_window clean steps since the last overflow (the
//             first doubling at the window's (W+1)-th clean step, as
//             DeepSpeed counts), the scale doubles and h refills.
//
// A fixed loss_scale > 0 never changes (overflows still skip); with fp16
// off the scale is 1. Not thread safe.
#pragma once

#include <cstdint>

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"

namespace zinf {

class LossScaler {
 public:
  explicit LossScaler(const Fp16Config& config);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  int hysteresis_left() const { return hysteresis_; }
  // One boundary. An overflow at min_loss_scale is an error naming it; the
  // scaler is then unchanged.
  Status update(bool overflow);

  // What a checkpoint keeps: with the config, the scaler's whole state.
  struct State {
    double scale = 1.0;
    int hysteresis = 0;
    std::int64_t iteration = 0;
    std::int64_t last_overflow = -1;
  };
  State state() const { return {scale_, hysteresis_, iteration_, last_overflow_}; }
  void restore(const State& s) {
    scale_ = s.scale;
    hysteresis_ = s.hysteresis;
    iteration_ = s.iteration;
    last_overflow_ = s.last_overflow;
  }

 private:
  Fp16Config config_;
  bool dynamic_ = false;
  double scale_ = 1.0;
  int hysteresis_ = 0;
  std::int64_t iteration_ = 0;
  std::int64_t last_overflow_ = -1;
};

}  // namespace zinf
