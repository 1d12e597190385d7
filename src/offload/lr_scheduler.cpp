#include "zinf/offload/lr_scheduler.hpp"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include "zinf/common/logging.hpp"
#include "zinf/offload/offload_optimizer.hpp"

namespace zinf {
namespace {

// Sets a group's betas where its options have them; false where they do not.
bool set_betas(torch::optim::OptimizerOptions& options, std::pair<double, double> betas) {
  const auto b = std::make_tuple(betas.first, betas.second);
  if (auto* o = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    o->betas(b);
  } else if (auto* a = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    a->betas(b);
  } else if (auto* l = dynamic_cast<LionOptions*>(&options)) {
    l->betas(b);
  } else {
    return false;
  }
  return true;
}

}  // namespace

LrScheduler::LrScheduler(torch::optim::Optimizer& optimizer, LrSchedule schedule)
    : optimizer_(optimizer), schedule_(std::move(schedule)) {
  apply();
}

LrScheduler LrScheduler::from_config(torch::optim::Optimizer& optimizer, const Config& config) {
  if (!config.scheduler) {
    throw Error(Status::invalid_argument(config.source + ": no \"scheduler\" block"));
  }
  const double base =
      optimizer.param_groups().empty() ? 0.0 : optimizer.param_groups().front().options().get_lr();
  auto schedule = LrSchedule::create(*config.scheduler, base);
  if (!schedule.is_ok()) throw Error(schedule.status().with_context(config.source));
  return LrScheduler(optimizer, std::move(*schedule));
}

void LrScheduler::step() {
  ++t_;
  apply();
}

void LrScheduler::apply() {
  const double lr = schedule_.lr(t_);
  const auto betas = schedule_.betas(t_);
  for (auto& group : optimizer_.param_groups()) {
    group.options().set_lr(lr);
    if (betas && !set_betas(group.options(), *betas) && !warned_) {
      // DeepSpeed disables cycle_momentum for optimizers without betas.
      ZINF_LOG(kWarn) << "scheduler OneCycle: this optimizer has no betas; cycle_momentum has "
                         "no effect";
      warned_ = true;
    }
  }
}

}  // namespace zinf
