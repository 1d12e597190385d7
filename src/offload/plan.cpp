#include "offload/plan.hpp"

#include <torch/torch.h>

#include <algorithm>

#include "offload/coordinator.hpp"
#include "offload/job.hpp"
#include "offload/state_tier.hpp"
#include "offload/units.hpp"
#include "zinf/gpu/device.hpp"
#include "zinf/offload/offload_options.hpp"

namespace zinf::offload {

gpu::PinnedPool::Options param_buffer_options(std::uint64_t largest_staged_bytes,
                                              const OffloadParamConfig& op) {
  return {"offload_param buffers", largest_staged_bytes, std::max<std::size_t>(1, op.buffer_count),
          op.pin_memory};
}

gpu::PinnedPool::Options grad_buffer_options(std::uint64_t largest_param_bytes, bool pin) {
  constexpr std::uint64_t kGradBuffer = 16 << 20;  // larger gradients leave in pieces
  constexpr std::size_t kGradBuffers = 4;
  return {"gradient buffers",
          std::max<std::uint64_t>(sizeof(float), std::min(largest_param_bytes, kGradBuffer)),
          kGradBuffers, pin};
}

torch::ScalarType reduction_dtype(torch::ScalarType grad, std::string_view requested, bool nccl) {
  const torch::ScalarType t = requested == "fp32"   ? torch::kFloat
                              : requested == "fp16" ? torch::kHalf
                              : requested == "bf16" ? torch::kBFloat16
                                                    : grad;
  return t == torch::kBFloat16 && !nccl ? torch::kFloat : t;
}

Status check_buffer_size(const std::string& unit, std::uint64_t home_elements,
                         const Config& config) {
  const std::uint64_t limit = config.zero_optimization.offload_param.buffer_size;
  if (home_elements <= limit) return Status::ok();
  return Status::invalid_argument(
      config.source + ": unit '" + unit + "' has " + std::to_string(home_elements) +
      " parameter elements, more than zero_optimization.offload_param.buffer_size = " +
      std::to_string(limit) + "; raise buffer_size");
}

int state_arrays(const OptimizerConfig& optimizer) {
  return optimizer.type == "Adagrad" || optimizer.type == "Lion" ? 2 : 3;
}

namespace {

// A unit's parameters as the engine's planner sees them: shapes on the meta
// device (nothing allocated), named inside the unit.
std::vector<std::pair<std::string, torch::Tensor>> meta_params(
    const std::vector<ModelParam>& params) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const ModelParam& p : params)
    out.emplace_back(p.name, torch::empty(p.shape, torch::dtype(p.dtype).device(torch::kMeta)));
  return out;
}

struct PlannedPartition {
  std::string unit;
  bool device_home = false;  // whole on the device for good (resident)
  std::size_t elem = 1;
  torch::ScalarType dtype = torch::kFloat;
  std::uint64_t numel = 0;
  std::uint64_t bytes = 0;
  std::uint64_t home_bytes = 0;
  std::uint64_t own = 0;           // elements of this rank's optimizer share
  std::uint64_t widest_param = 0;  // bytes of its largest parameter
};

// Counts what the coordinator's decisions move (the engine's Actions).
// What one unit's fetch and gather move.
struct UnitBytes {
  std::uint64_t h2d = 0;     // its home onto the device
  std::uint64_t nvme = 0;    // of that, read from NVMe
  std::uint64_t gather = 0;  // stage 3 over ranks: the all-gather of each use
};

class CountingActions final : public Coordinator::Actions {
 public:
  explicit CountingActions(std::vector<UnitBytes> bytes) : bytes_(std::move(bytes)) {}
  Status fetch(std::size_t unit) override {
    h2d += bytes_[unit].h2d;
    nvme += bytes_[unit].nvme;
    return Status::ok();
  }
  void release(std::size_t) override {}
  bool stage(std::size_t) override { return false; }  // moves no bytes of its own
  void unstage(std::size_t) override {}
  void gather(std::size_t unit) override { gathered += bytes_[unit].gather; }
  std::uint64_t h2d = 0, nvme = 0, gathered = 0;

 private:
  std::vector<UnitBytes> bytes_;
};

// One micro-step's fetches and gathers: the coordinator records the first
// micro-step and replays from the second; the second is what every later
// one moves.
Status count_gathers(std::vector<Coordinator::Unit> units, std::vector<UnitBytes> bytes,
                     const ZeroConfig& z, bool sharded, MemoryPlan& m) {
  CountingActions actions(std::move(bytes));
  const std::size_t n = units.size();
  Coordinator c(std::move(units),
                {z.stage3_prefetch_bucket_size, z.stage3_max_live_parameters,
                 z.stage3_max_reuse_distance, sharded},
                actions);
  for (int micro = 0; micro < 2; ++micro) {
    actions.h2d = actions.nvme = actions.gathered = 0;
    c.begin_micro_step(true);
    ZINF_RETURN_IF_ERROR(c.use(0));  // the root, live for the whole micro-step
    for (std::size_t u = 1; u < n; ++u) {
      ZINF_RETURN_IF_ERROR(c.use(u));
      c.done(u);
    }
    for (std::size_t u = n; u-- > 1;) {
      ZINF_RETURN_IF_ERROR(c.use(u));
      c.done(u);
    }
    ZINF_RETURN_IF_ERROR(c.end_micro_step(true));
  }
  m.h2d_bytes = actions.h2d;
  m.peak_live_elements = c.stats().peak_live_elements;
  m.param_read_bytes = actions.nvme;
  m.comm_bytes += actions.gathered;
  return Status::ok();
}

}  // namespace

Result<MemoryPlan> plan_memory(const ModelShape& model, const Config& config, int world, int rank) {
  ZINF_RETURN_IF_ERROR(check_engine_config(config));
  const auto& z = config.zero_optimization;
  const bool sharded = world > 1 && z.stage == 3;
  const bool partitioned_grads = world > 1 && z.stage >= 2;
  const Sharding sharding{rank, world, nullptr};
  // Units in construction order, then the root with what they left of the
  // model's persistence budget (as a PartitionScope plans them).
  std::uint64_t budget = z.stage3_model_persistence_threshold;
  std::vector<detail::UnitPlan> plans(model.units.size() + 1);
  for (std::size_t i = 0; i < model.units.size(); ++i) {
    ZINF_ASSIGN_OR_RETURN(plans[i + 1], detail::plan_params(meta_params(model.units[i].params),
                                                            model.units[i].name, config, budget));
  }
  ZINF_ASSIGN_OR_RETURN(plans[0],
                        detail::plan_params(meta_params(model.root), "root", config, budget));

  MemoryPlan m;
  std::vector<PlannedPartition> parts;
  auto add = [&](const std::string& unit, const std::vector<detail::PlannedParam>& params,
                 torch::ScalarType dtype, bool device_home) {
    PlannedPartition p;
    const std::size_t elem = c10::elementSize(dtype);
    p.unit = unit;
    p.elem = elem;
    p.dtype = dtype;
    p.device_home = device_home;
    for (const detail::PlannedParam& pp : params) {
      p.numel += pp.numel;
      p.widest_param = std::max<std::uint64_t>(p.widest_param, pp.numel * elem);
    }
    p.bytes = p.numel * elem;
    p.own = sharding.own(p.numel).count;
    p.home_bytes = sharded && !device_home ? p.own * elem : p.bytes;
    parts.push_back(p);
  };
  const bool offloaded = z.offload_param.device != OffloadDevice::kNone;
  const bool nvme_params = z.offload_param.device == OffloadDevice::kNvme;
  const bool cpu_params = z.offload_param.device == OffloadDevice::kCpu;
  std::vector<Coordinator::Unit> coordinated;
  std::vector<UnitBytes> unit_bytes;
  for (std::size_t i = 0; i < plans.size(); ++i) {
    const detail::UnitPlan& plan = plans[i];
    Coordinator::Unit cu;
    cu.numel = plan.numel;
    cu.resident = plan.numel == 0 || (!offloaded && !sharded);
    cu.stageable = plan.numel > 0 && nvme_params;
    coordinated.push_back(cu);
    // A fetch moves this rank's home (its shard in stage 3 over N ranks; the
    // all-gather brings the rest) from the host, or from NVMe and then the host.
    const std::uint64_t home =
        (sharded ? sharding.own(plan.numel).count : plan.numel) * c10::elementSize(plan.dtype);
    unit_bytes.push_back({cu.resident || !offloaded ? 0 : home, cu.stageable ? home : 0,
                          sharded ? plan.numel * c10::elementSize(plan.dtype) : 0});
    const std::string& name = i == 0 ? std::string("root") : model.units[i - 1].name;
    if (plan.numel > 0) add(name, plan.partitioned, plan.dtype, !offloaded && !sharded);
    if (!plan.persistent.empty()) add(name, plan.persistent, plan.persistent_dtype, true);
  }

  std::uint64_t staged = 0, widest = 0;
  TierShape shape;
  shape.num_states = state_arrays(*config.optimizer);
  const OffloadOptions o = OffloadOptions::from_config(config);
  // "auto" plans for a GPU.
  const auto device = config.zinf.device == "cpu" ? gpu::DeviceType::kCpu : gpu::DeviceType::kCuda;
  for (const PlannedPartition& p : parts) {
    m.elements += p.numel;
    m.own_elements += p.own;
    widest = std::max(widest, p.widest_param);
    for (std::uint64_t g : TierShape::even_groups(p.own, o.sub_group_size()))
      shape.groups.push_back(g);
    if (p.device_home) {
      m.device_resident += gpu::allocation_bytes(device, p.bytes);
    } else {
      m.gathered_bytes += p.bytes;
      if (!offloaded) m.device_resident += gpu::allocation_bytes(device, p.home_bytes);  // a shard
      if (nvme_params)
        ZINF_RETURN_IF_ERROR(check_buffer_size(p.unit, p.home_bytes / p.elem, config));
      if (cpu_params) {
        m.host_params += AlignedBuffer::size_for(p.home_bytes);
      } else if (nvme_params && p.home_bytes > 0) {
        m.nvme_params += align_up(p.home_bytes, kIoAlignment);
        m.nvme_home_bytes += p.home_bytes;
      }
    }
    if (!cpu_params || p.device_home) staged = std::max(staged, p.home_bytes);  // through the pool
  }
  m.largest_param_bytes = widest;
  if (staged > 0)
    m.host_param_buffers =
        gpu::PinnedPool::bytes_for(param_buffer_options(staged, z.offload_param));
  m.host_grad_buffers =
      gpu::PinnedPool::bytes_for(grad_buffer_options(widest, z.offload_param.pin_memory));
  const std::uint64_t grad_elements = partitioned_grads ? m.own_elements : m.elements;
  m.host_grads = AlignedBuffer::size_for(std::max<std::uint64_t>(1, grad_elements) * sizeof(float));
  const TierFootprint tier = tier_footprint(shape, o);
  m.host_optimizer = tier.host;
  m.nvme_optimizer = tier.nvme;
  ZINF_RETURN_IF_ERROR(count_gathers(std::move(coordinated), std::move(unit_bytes), z, sharded, m));
  std::uint64_t reduce_elem = 0, widest_reduction = 0;
  for (const PlannedPartition& p : parts) {
    if (partitioned_grads) {
      // Reduced on the device (Gloo's reduce-scatter is an all-reduce of the
      // whole partition); this rank's shard leaves it.
      const std::size_t elem = c10::elementSize(reduction_dtype(
          p.dtype, config.communication_data_type, device == gpu::DeviceType::kCuda));
      m.reduce_comm_bytes += p.numel * elem;
      m.d2h_bytes += p.own * elem;
      reduce_elem = std::max(reduce_elem, elem);
      widest_reduction = std::max(widest_reduction, std::max<std::uint64_t>(1, p.numel) * elem);
    } else {
      m.d2h_bytes += p.bytes;  // every gradient, in its dtype
    }
    if (world > 1 && z.stage == 1) m.step_comm_bytes += p.numel * sizeof(float);
    if (world > 1 && p.device_home) m.step_comm_bytes += p.bytes;
  }
  m.comm_bytes += m.reduce_comm_bytes;
  if (world > 1) m.step_comm_bytes += 2 * sizeof(double);  // the norm and the non-finite count
  if (partitioned_grads)
    m.grad_bucket_bytes =
        std::min(z.reduce_bucket_size, m.elements) * reduce_elem + widest_reduction;
  if (z.offload_optimizer.device == OffloadDevice::kNvme)
    m.optim_read_bytes = m.optim_write_bytes =
        m.own_elements * sizeof(float) * static_cast<std::uint64_t>(shape.num_states);
  m.param_write_bytes = m.nvme_home_bytes;
  m.pinned = m.host_params +
             (z.offload_param.pin_memory ? m.host_param_buffers + m.host_grad_buffers : 0) +
             (z.offload_optimizer.pin_memory ? m.host_optimizer : 0);
  return m;
}

}  // namespace zinf::offload
