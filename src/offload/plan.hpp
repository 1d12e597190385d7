// What the engine will hold for a model, from its parameters' shapes alone
// (private to zinf::offload; tools/zinf-plan prints it, with a step-time
// model on top). The engine sizes its buffers with the functions below, so a
// plan's bytes are the engine's MemoryReport, exactly, for a model built in
// a zinf::PartitionScope (zinf::partitioned), where the units take their
// share of stage3_model_persistence_threshold in construction order and the
// root what is left. tests/offload/engine_test.cpp holds one to the other.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "zinf/common/config.hpp"
#include "zinf/gpu/pinned_pool.hpp"

namespace zinf::offload {

struct ModelParam {
  std::string name;
  std::vector<std::int64_t> shape;
  torch::ScalarType dtype = torch::kFloat;
};

// The parameters of one zinf::Unit, in the order its module lists them.
struct ModelUnit {
  std::string name;
  std::vector<ModelParam> params;
};

// A model: the root (everything outside every unit) and its units in
// module order.
struct ModelShape {
  std::vector<ModelParam> root;
  std::vector<ModelUnit> units;
};

// The engine's pinned pools: offload_param's buffers (each as large as the
// largest partition not in pinned host memory) and the gradients' buffers
// on their way off the device.
gpu::PinnedPool::Options param_buffer_options(std::uint64_t largest_staged_bytes,
                                              const OffloadParamConfig& offload_param);
gpu::PinnedPool::Options grad_buffer_options(std::uint64_t largest_param_bytes, bool pin);
// The dtype gradients are reduced in across ranks: `requested`
// (communication_data_type: "fp32", "fp16", "bf16") or, empty, their own
// (DeepSpeed's default), except bf16 where the backend cannot sum it (Gloo
// in LibTorch 1.13; `nccl` can): then fp32.
torch::ScalarType reduction_dtype(torch::ScalarType grad, std::string_view requested, bool nccl);
// A unit whose home on NVMe holds more than offload_param.buffer_size elements
// cannot be read into the buffers.
Status check_buffer_size(const std::string& unit, std::uint64_t home_elements,
                         const Config& config);
// fp32 arrays per optimized element: the master and the optimizer's moments.
int state_arrays(const OptimizerConfig& optimizer);

struct MemoryPlan {
  std::uint64_t elements = 0;         // every parameter
  std::uint64_t own_elements = 0;     // this rank's share of the optimizer state
  std::uint64_t device_resident = 0;  // bytes that stay on the device
  std::uint64_t gathered_bytes = 0;   // every partition gathered on use, whole
  std::uint64_t nvme_home_bytes = 0;  // their homes on NVMe (this rank's shards in stage 3 of N)
  std::uint64_t largest_param_bytes = 0;  // the largest parameter (so its gradient)
  // Stages 2-3 across ranks: the device's gradients waiting for their
  // reduction, at most (reduce_bucket_size, and a partition opened past it).
  std::uint64_t grad_bucket_bytes = 0;
  // As MemoryReport names them.
  std::uint64_t host_params = 0;
  std::uint64_t host_param_buffers = 0;
  std::uint64_t host_grads = 0;
  std::uint64_t host_grad_buffers = 0;
  std::uint64_t host_optimizer = 0;
  std::uint64_t nvme_params = 0;
  std::uint64_t nvme_optimizer = 0;  // once a step has run: both slots
  std::uint64_t pinned = 0;          // of the host bytes, what the config pins

  // Traffic. Per micro-step, from the engine's own parameter coordinator
  // run over the model's use order (the root for the whole micro-step; the
  // units forward, then backward in reverse), replaying its trace:
  std::uint64_t h2d_bytes = 0;           // gathers onto the device
  std::uint64_t param_read_bytes = 0;    // of those, read from NVMe
  std::uint64_t d2h_bytes = 0;           // gradients off the device
  std::uint64_t peak_live_elements = 0;  // gathered onto the device at once, at most
  std::uint64_t comm_bytes = 0;          // collectives: stage 3's gathers, stages 2-3's reductions
  std::uint64_t reduce_comm_bytes = 0;   // of which the reductions
  // Per update:
  std::uint64_t optim_read_bytes = 0;  // the optimizer's state from NVMe
  std::uint64_t optim_write_bytes = 0;
  std::uint64_t param_write_bytes = 0;  // updated parameters written to their NVMe homes
  // Collectives: stage 1's reductions, the gradient norm, the updated
  // shards of partitions resident on the device onto every device.
  std::uint64_t step_comm_bytes = 0;

  std::uint64_t host() const {
    return host_params + host_param_buffers + host_grads + host_grad_buffers + host_optimizer;
  }
  std::uint64_t nvme() const { return nvme_params + nvme_optimizer; }
};

// Rank `rank` of a job of `world` ranks. Errors are what the engine would
// say about the same model and config (what the engine or the job does not
// take, a dtype, a unit larger than offload_param.buffer_size).
Result<MemoryPlan> plan_memory(const ModelShape& model, const Config& config, int world, int rank);

}  // namespace zinf::offload
