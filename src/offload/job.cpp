#include "offload/job.hpp"

#include <functional>
#include <mutex>

namespace zinf::offload {

Result<std::shared_ptr<gpu::World>> join_job(const Config& config) {
  static std::mutex mutex;
  static std::shared_ptr<gpu::World> world;
  std::lock_guard lock(mutex);
  if (world) return world;
  ZINF_ASSIGN_OR_RETURN(gpu::Launch launch, gpu::launch_from_env());
  // What must agree for the ranks to train one model: everything but the
  // paths (swap, trace) and the device budget, which may differ from machine
  // to machine.
  Config shared = config;
  shared.zero_optimization.offload_param.nvme_path.clear();
  shared.zero_optimization.offload_optimizer.nvme_path.clear();
  shared.zinf.nvme_paths.clear();
  shared.zinf.trace_path.clear();
  shared.zinf.device_budget = 0;
  const std::string fingerprint = std::to_string(std::hash<std::string>{}(to_json(shared, -1)));
  ZINF_ASSIGN_OR_RETURN(
      world, gpu::World::join(launch, std::chrono::seconds(config.zinf.comm_timeout), fingerprint));
  return world;
}

Status check_engine_config(const Config& config) {
  const auto& z = config.zero_optimization;
  if (z.stage == 0) {
    return Status::invalid_argument(
        config.source +
        ": zero_optimization.stage is 0 (ZeRO off), and zinf's engine is ZeRO with offload; "
        "set stage 1, 2 or 3 (on one process they train the same)");
  }
  if (z.offload_optimizer.device == OffloadDevice::kNone) {
    return Status::invalid_argument(
        config.source +
        ": zero_optimization.offload_optimizer.device is \"none\": zinf's engine runs "
        "the optimizer on the CPU; set it to \"cpu\" or \"nvme\"");
  }
  if (!config.optimizer) {
    return Status::invalid_argument(
        config.source +
        ": the engine needs an \"optimizer\" block, e.g. {\"type\": \"AdamW\", "
        "\"params\": {\"lr\": 1e-4}}");
  }
  return Status::ok();
}

}  // namespace zinf::offload
