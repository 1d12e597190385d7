// A run's (or a plan's) bytes per tier as JSON: train_gpt's memory `host`
// and `nvme` objects and zinf-plan's, the same keys so that one can be
// checked against the other. `M` is zinf::MemoryReport or the planner's
// MemoryPlan (the same field names).
#pragma once

#include <nlohmann/json.hpp>

namespace zinf::tools {

template <typename M>
nlohmann::json host_json(const M& m) {
  return {{"params", m.host_params},
          {"param_buffers", m.host_param_buffers},
          {"grads", m.host_grads},
          {"grad_buffers", m.host_grad_buffers},
          {"optimizer", m.host_optimizer}};
}

template <typename M>
nlohmann::json nvme_json(const M& m) {
  return {{"params", m.nvme_params}, {"optimizer", m.nvme_optimizer}};
}

}  // namespace zinf::tools
