#include "offload/units.hpp"

#include <unordered_set>

#include "zinf/common/logging.hpp"

namespace zinf::detail {
namespace {

thread_local PartitionScopeState* t_scope = nullptr;

bool supported_dtype(torch::ScalarType t) {
  return t == torch::kFloat || t == torch::kHalf || t == torch::kBFloat16;
}

}  // namespace

Result<std::shared_ptr<PartitionStore>> PartitionStore::open(const Config& config,
                                                             std::optional<swap::FaultSpec> fault) {
  const auto& op = config.zero_optimization.offload_param;
  auto store = std::make_shared<PartitionStore>();
  store->device = op.device;
  if (op.device != OffloadDevice::kNvme) return store;
  if (op.nvme_path.empty()) {
    return Status::invalid_argument(config.source +
                                    ": zero_optimization.offload_param.nvme_path is required for "
                                    "device nvme");
  }
  swap::SwapStoreOptions so = swap::SwapStoreOptions::from_config(config);
  so.paths = {op.nvme_path};  // and zinf.nvme_paths, not the optimizer's path
  for (const auto& p : config.zinf.nvme_paths) so.paths.emplace_back(p);
  so.evict_verified_reads = true;  // parameters read from NVMe go on to the device
  so.reap_in_background = true;    // reads start ahead of use: their busy time ends with their I/O
  so.fault = std::move(fault);
  auto nvme = swap::SwapStore::open(std::move(so));
  if (!nvme.is_ok()) return nvme.status().with_context("zero_optimization.offload_param");
  store->nvme = std::move(*nvme);
  return store;
}

Status PartitionStore::put(const std::string& key, const std::byte* data, std::size_t bytes) {
  if (device == OffloadDevice::kNvme) {
    if (bytes == 0) return Status::ok();  // a rank whose shard of a small unit is empty
    ZINF_ASSIGN_OR_RETURN(auto ticket, nvme->write(key, {data, bytes}));
    return nvme->wait(ticket);
  }
  auto it = host.find(key);
  if (it == host.end()) {
    ZINF_ASSIGN_OR_RETURN(AlignedBuffer buffer,
                          AlignedBuffer::allocate(std::max<std::size_t>(1, bytes)));
    it = host.emplace(key, std::move(buffer)).first;
  }
  std::memcpy(it->second.data(), data, bytes);
  return Status::ok();
}

Status PartitionStore::get(const std::string& key, std::byte* out, std::size_t bytes) {
  if (bytes == 0) return Status::ok();
  if (device == OffloadDevice::kNvme) {
    ZINF_ASSIGN_OR_RETURN(auto ticket, nvme->read(key, {out, bytes}));
    return nvme->wait(ticket);
  }
  auto it = host.find(key);
  if (it == host.end()) return Status::not_found("partition '" + key + "' is not in host memory");
  std::memcpy(out, it->second.data(), bytes);
  return Status::ok();
}

std::uint64_t PartitionStore::host_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [key, buffer] : host) total += buffer.size();
  return total;
}

std::vector<std::pair<std::string, torch::Tensor>> unit_parameters(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (seen.insert(item.value().unsafeGetTensorImpl()).second)
      out.emplace_back(item.key(), item.value());
  }
  return out;
}

Result<UnitPlan> plan_params(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                             const std::string& unit, const Config& config,
                             std::uint64_t& persistent_budget) {
  const auto& zero = config.zero_optimization;
  UnitPlan plan;
  std::string first_name;
  for (const auto& [name, p] : params) {
    const std::string where = "unit '" + unit + "', parameter '" + name + "'";
    if (!supported_dtype(p.scalar_type())) {
      return Status::invalid_argument(where + " has dtype " +
                                      std::string(c10::toString(p.scalar_type())) +
                                      "; the engine takes float32, float16 or bfloat16");
    }
    if (!p.is_contiguous()) return Status::invalid_argument(where + " is not contiguous");
    const auto n = static_cast<std::uint64_t>(p.numel());
    // Mixed precision keeps fp32 parameters as bf16 / fp16 on the device;
    // the optimizer holds their fp32 masters.
    const torch::ScalarType dtype = p.scalar_type() != torch::kFloat ? p.scalar_type()
                                    : config.bf16_enabled            ? torch::kBFloat16
                                    : config.fp16.enabled            ? torch::kHalf
                                                                     : torch::kFloat;
    if (n <= zero.stage3_param_persistence_threshold && n <= persistent_budget) {
      if (plan.persistent.empty()) {
        plan.persistent_dtype = dtype;
      } else if (dtype != plan.persistent_dtype) {
        return Status::invalid_argument(where + " is " + std::string(c10::toString(dtype)) +
                                        " but '" + plan.persistent.front().name + "' is " +
                                        std::string(c10::toString(plan.persistent_dtype)) +
                                        ": a unit's persistent (small) parameters share one dtype");
      }
      persistent_budget -= n;
      plan.persistent.push_back({name, p, p.sizes().vec(), n});
      continue;
    }
    if (plan.partitioned.empty()) {
      plan.dtype = dtype;
      first_name = name;
    } else if (dtype != plan.dtype) {
      return Status::invalid_argument(
          where + " is " + std::string(c10::toString(dtype)) + " but '" + first_name + "' is " +
          std::string(c10::toString(plan.dtype)) +
          ": a unit's partitioned parameters share one dtype (make them one, or split the unit)");
    }
    plan.partitioned.push_back({name, p, p.sizes().vec(), n});
    plan.numel += n;
  }
  return plan;
}

Status store_partition(PartitionStore& store, const std::string& key, const UnitPlan& plan,
                       const offload::Sharding& sharding) {
  const std::size_t elem = c10::elementSize(plan.dtype);
  ZINF_ASSIGN_OR_RETURN(AlignedBuffer staging, AlignedBuffer::allocate(plan.numel * elem));
  torch::NoGradGuard no_grad;
  std::uint64_t offset = 0;
  for (const PlannedParam& pp : plan.partitioned) {
    const torch::Tensor& p = pp.tensor;
    torch::from_blob(staging.data() + offset * elem, {p.numel()}, torch::dtype(plan.dtype))
        .copy_(p.detach().reshape({-1}));
    offset += pp.numel;
    // Released as soon as copied: the unit is in host memory about once.
    p.set_data(torch::empty({0}, p.options().dtype(plan.dtype)));
  }
  const gpu::ShardRange own = sharding.own(plan.numel);
  if (sharding.init != nullptr) {
    ZINF_ASSIGN_OR_RETURN(auto work,
                          sharding.init->broadcast(staging.data(), plan.numel * elem, 0));
    ZINF_RETURN_IF_ERROR(work->wait());
  }
  if (own.count == plan.numel && store.device == OffloadDevice::kCpu) {
    store.host[key] = std::move(staging);
    return Status::ok();
  }
  ZINF_ASSIGN_OR_RETURN(AlignedBuffer shard,
                        AlignedBuffer::allocate(std::max<std::uint64_t>(1, own.count) * elem));
  std::memcpy(shard.data(), staging.data() + own.begin * elem, own.count * elem);
  return store.put(key, shard.data(), own.count * elem);
}

UnitRegistry& UnitRegistry::instance() {
  static UnitRegistry registry;
  return registry;
}

UnitEntry& UnitRegistry::enroll(const std::shared_ptr<torch::nn::Module>& module) {
  std::erase_if(entries_, [](const auto& e) { return e.second.module.expired(); });
  auto [it, inserted] = entries_.try_emplace(module.get());
  if (inserted) it->second.module = module;
  return it->second;
}

UnitEntry* UnitRegistry::find(const torch::nn::Module* module) {
  auto it = entries_.find(module);
  return it == entries_.end() || it->second.module.expired() ? nullptr : &it->second;
}

PartitionScopeState* current_partition_scope() { return t_scope; }

void enroll_unit(const std::shared_ptr<torch::nn::Module>& module) {
  UnitRegistry& registry = UnitRegistry::instance();
  UnitEntry* entry = nullptr;
  {
    std::lock_guard lock(registry.mutex());
    entry = &registry.enroll(module);
    if (entry->stored || entry->engine != nullptr) return;
  }
  PartitionScopeState* scope = t_scope;
  if (scope == nullptr) return;
  const std::string key = "u" + std::to_string(scope->store->next_key++);
  auto plan = plan_params(unit_parameters(*module), key, scope->config, scope->persistent_budget);
  throw_if_error(plan.status());
  if (plan->numel > 0) {
    throw_if_error(store_partition(*scope->store, key, *plan, scope->sharding)
                       .with_context("partitioning unit " + key + " to offload_param"));
  }
  auto stored = std::make_shared<StoredUnit>(StoredUnit{scope->store, key, std::move(*plan)});
  std::lock_guard lock(registry.mutex());
  entry->stored = std::move(stored);
}

}  // namespace zinf::detail

namespace zinf {

PartitionScope::PartitionScope(const Config& config) {
  if (config.zero_optimization.offload_param.device == OffloadDevice::kNone) return;
  auto store = detail::PartitionStore::open(config, std::nullopt);
  throw_if_error(store.status());
  state_ = std::make_unique<detail::PartitionScopeState>();
  state_->config = config;
  auto job = offload::join_job(config);
  throw_if_error(job.status());
  if ((*job)->world_size() > 1) {
    auto init = (*job)->communicator("partition init", gpu::Backend::kGloo);
    throw_if_error(init.status());
    state_->init = std::move(*init);
    state_->sharding = {(*job)->rank(), (*job)->world_size(), state_->init.get()};
  }
  state_->store = std::move(*store);
  state_->persistent_budget = config.zero_optimization.stage3_model_persistence_threshold;
  previous_ = detail::t_scope;
  detail::t_scope = state_.get();
}

PartitionScope::~PartitionScope() {
  if (state_) detail::t_scope = previous_;
}

}  // namespace zinf
