// The stage-3 engine. How one micro-step and one step flow:
//
// forward   Engine::operator() gathers the root unit; each zinf::Unit call
//           asks the coordinator to use the unit (fetched on demand, or
//           found prefetched), waits for its copy (stall), points the
//           parameters' storage at the device copy, runs, hooks each
//           parameter's gradient accumulator, wraps the outputs in
//           PreBackward, and tells the coordinator it is done (release, or
//           keep for reuse). Fetching a unit: device memory, then
//             cpu home:  an H2D copy from its pinned partition;
//             nvme home: an NVMe read into a pinned buffer (started now, or
//                        earlier when staged), then on the fetch worker:
//                        wait for the read, H2D copy, record the event,
//                        give the buffer back.
// backward  PreBackward re-gathers a unit before its backward; each
//           gradient, as its accumulator completes, is copied off the device
//           (D2H into a pinned buffer, after the compute stream) and added
//           into the fp32 host gradients by the gradient worker; a unit whose
//           gradients have all arrived is done. backward() returns when every
//           gradient is on the host and every unit released.
// step      at an accumulation boundary: the global norm over the host
//           gradients (inf/nan: skip, and with fp16 lower the loss scale;
//           else unscale and clip), then the optimizer tier's
//           pieces: the CPU kernel updates master and moments and writes the
//           parameter in its dtype to its home (in place for cpu, through a
//           pinned buffer written back to NVMe or copied to the device once
//           its partition is complete). On any failure the tier keeps the old
//           state and every home is rewritten from the old masters. After
//           an applied update the scheduler steps.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "offload/engine_impl.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/offload/offload_options.hpp"

namespace zinf::offload {
namespace {

namespace ca = cpu_adam;
using Lease = gpu::PinnedPool::Lease;

double seconds(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

ca::Dtype cpu_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf:
      return ca::Dtype::kF16;
    case torch::kBFloat16:
      return ca::Dtype::kBF16;
    default:
      return ca::Dtype::kF32;
  }
}

[[noreturn]] void fail(Status status) { throw Error(std::move(status)); }

gpu::CommDtype comm_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf:
      return gpu::CommDtype::kF16;
    case torch::kBFloat16:
      return gpu::CommDtype::kBF16;
    default:
      return gpu::CommDtype::kF32;
  }
}

Status wait(Result<gpu::CommWorkPtr> work) {
  return work.is_ok() ? (*work)->wait() : work.status();
}

// Collectives issued back to back on one channel (they queue there instead
// of costing a round trip each), each with what it is for; waits for every
// one, also after a failure (each still uses its buffer), and returns the
// first error in the context of its purpose.
using Issued = std::vector<std::pair<std::string, Result<gpu::CommWorkPtr>>>;
Status wait_all(Issued issued) {
  Status first;
  for (auto& [what, work] : issued) {
    Status s = wait(std::move(work));
    if (first.is_ok() && !s.is_ok()) first = s.with_context(what);
  }
  return first;
}

// The autograd callback of PreBackward: the token is the unit's registry entry.
void on_pre_backward(std::int64_t token) {
  auto* entry = reinterpret_cast<detail::UnitEntry*>(token);
  if (entry->engine != nullptr) entry->engine->pre_backward(entry->index);
}

}  // namespace

// ---------------------------------------------------------------------------
// Construction

EngineImpl::EngineImpl(std::shared_ptr<torch::nn::Module> model, const Config& config,
                       EngineOptions options)
    : config_(config), options_(std::move(options)), model_(std::move(model)) {
  if (options_.device) config_.zinf.device = *options_.device;
  if (options_.device_budget) config_.zinf.device_budget = *options_.device_budget;
  join_job();
  check_config();
  gpu::DeviceOptions d;
  d.type = config_.zinf.device;
  d.budget = config_.zinf.device_budget;
  auto device = gpu::Device::create(d);
  if (!device.is_ok()) fail(device.status().with_context(config_.source));
  device_ = std::move(*device);
  if (device_->type() == gpu::DeviceType::kCuda) {
    if (!torch::cuda::is_available()) {
      fail(Status::unavailable(
          "zinf.device: a CUDA GPU is visible but this LibTorch has no CUDA (build against "
          "PyTorch's LibTorch, or set zinf.device to \"cpu\")"));
    }
    torch_device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_->index()));
  }
  auto h2d = device_->create_stream("h2d");
  auto d2h = device_->create_stream("d2h");
  if (!h2d.is_ok()) fail(h2d.status());
  if (!d2h.is_ok()) fail(d2h.status());
  h2d_ = std::move(*h2d);
  d2h_ = std::move(*d2h);
  if (device_->type() == gpu::DeviceType::kCpu) {
    charges_.emplace(device_.get());
    const int threads = set_compute_threads(static_cast<int>(config_.zinf.compute_threads));
    ZINF_LOG(kInfo) << "engine: the emulated device computes on " << threads
                    << " thread(s) (zinf.compute_threads)";
  }
  make_channels();
  find_units(model_);
  place_partitions();
  make_buffers();
  make_optimizer();
  std::vector<Coordinator::Unit> cu;
  for (const UnitRec& u : units_) {
    Coordinator::Unit c;
    c.name = u.name;
    if (u.main) {
      const Partition& part = partitions_[*u.main];
      c.numel = part.numel;
      c.resident = part.home == Home::kDevice;
      c.stageable = part.home == Home::kNvme;
    } else {
      c.resident = true;
    }
    cu.push_back(std::move(c));
  }
  const auto& z = config_.zero_optimization;
  coordinator_ = std::make_unique<Coordinator>(
      std::move(cu),
      Coordinator::Options{z.stage3_prefetch_bucket_size, z.stage3_max_live_parameters,
                           z.stage3_max_reuse_distance, sharded_params_},
      *this);
  {
    std::lock_guard lock(detail::UnitRegistry::instance().mutex());
    for (std::size_t i = 0; i < units_.size(); ++i) {
      if (units_[i].entry == nullptr) continue;
      units_[i].entry->engine = this;
      units_[i].entry->index = i;
    }
  }
  describe_nvme_paths();
  if (trace_) {  // each transfer, copy, collective and optimizer thread on the timeline
    tier_->record_transfers(true);
    executor_->record_thread_busy(true);
    if (store_ && store_->nvme) store_->nvme->record_transfers(true);
    for (gpu::Stream* stream : copy_streams()) stream->record_spans(true);
    for (gpu::Communicator* c : channels()) c->record_spans(true);
    for (const Partition& part : partitions_)
      unit_of_key_.emplace(part.key, units_[part.unit].name);
  }
  const MemoryReport m = memory_report();
  if (world_size_ > 1) {
    ZINF_LOG(kInfo) << "engine: rank " << rank_ << " of " << world_size_ << ", stage "
                    << config_.zero_optimization.stage << ": " << own_elements_
                    << " of the optimizer's elements here"
                    << (sharded_params_ ? ", parameters sharded" : "")
                    << (partitioned_grads_ ? ", gradients partitioned" : "")
                    << " (collectives: " << gpu::to_string(host_comm_->backend())
                    << " on the host, " << gpu::to_string(param_comm_->backend())
                    << " on the device)";
  }
  ZINF_LOG(kInfo) << "engine: " << units_.size() << " units, " << elements_ << " parameters ("
                  << format_bytes(elements_ * 4) << " fp32) on " << m.device << "; params "
                  << to_string(z.offload_param.device) << ", optimizer "
                  << to_string(z.offload_optimizer.device) << "; host: params "
                  << format_bytes(m.host_params) << ", buffers "
                  << format_bytes(m.host_param_buffers + m.host_grad_buffers) << ", grads "
                  << format_bytes(m.host_grads) << ", optimizer " << format_bytes(m.host_optimizer)
                  << " (pinned: " << (m.pinned ? "yes" : "no")
                  << ", fixed buffers: " << (m.fixed_buffers ? "yes" : "no") << ")";
}

EngineImpl::~EngineImpl() {
  abort_micro_step(/*drop_window=*/false);
  std::lock_guard lock(detail::UnitRegistry::instance().mutex());
  for (UnitRec& u : units_) {
    if (u.entry != nullptr) u.entry->engine = nullptr;
  }
  for (Partition& part : partitions_) {
    if (part.device != nullptr) device_->deallocate(part.device, part.home_bytes);
    part.device = nullptr;
  }
  for (Param& p : params_) p.storage.release();
  if (store_) {
    for (auto& [key, buffer] : store_->host) {
      if (device_ && buffer.size() > 0) device_->unpin(buffer.data(), buffer.size());
    }
  }
}

void EngineImpl::check_config() {
  const std::string& src = config_.source;
  if (Status s = check_engine_config(config_); !s.is_ok()) fail(s);
  if (config_.train_batch_size || config_.train_micro_batch_size_per_gpu ||
      config_.gradient_accumulation_steps) {
    Status s = config_.resolve_batch(static_cast<std::uint64_t>(world_size_));
    if (!s.is_ok()) fail(s.with_context(src));
  }
  gas_ = config_.gradient_accumulation_steps.value_or(1);
  const OptimizerConfig& o = *config_.optimizer;
  hyper_.lr = static_cast<float>(o.lr);
  scaler_ = LossScaler(config_.fp16);
  hyper_.beta1 = static_cast<float>(o.beta1);
  hyper_.beta2 = static_cast<float>(o.beta2);
  hyper_.eps = static_cast<float>(o.eps);
  hyper_.weight_decay = static_cast<float>(o.weight_decay);
  hyper_.bias_correction = o.bias_correction;
  hyper_.adamw_mode = o.adam_w_mode;
  if (o.type == "Adagrad") {
    hyper_.algorithm = ca::Algorithm::kAdagrad;
  } else if (o.type == "Lion") {
    hyper_.algorithm = ca::Algorithm::kLion;
  } else {
    hyper_.algorithm = ca::Algorithm::kAdam;
  }
  num_states_ = state_arrays(o);
  if (config_.scheduler) {
    auto schedule = LrSchedule::create(*config_.scheduler, o.lr);
    if (!schedule.is_ok()) fail(schedule.status().with_context(src));
    schedule_ = std::move(*schedule);
    apply_schedule();
  }
}

void EngineImpl::apply_schedule() {
  hyper_.lr = static_cast<float>(schedule_->lr(schedule_t_));
  if (auto betas = schedule_->betas(schedule_t_)) {
    if (hyper_.algorithm == ca::Algorithm::kAdagrad) return;  // no betas: DeepSpeed skips them too
    hyper_.beta1 = static_cast<float>(betas->first);
    hyper_.beta2 = static_cast<float>(betas->second);
  }
}

void EngineImpl::join_job() {
  auto world = offload::join_job(config_);
  if (!world.is_ok()) fail(world.status());
  world_ = std::move(*world);
  rank_ = world_->rank();
  world_size_ = world_->world_size();
  sharded_params_ = world_size_ > 1 && config_.zero_optimization.stage == 3;
  partitioned_grads_ = world_size_ > 1 && config_.zero_optimization.stage >= 2;
  if (!config_.zinf.trace_path.empty()) {
    auto trace = Trace::open(Trace::path_for(config_.zinf.trace_path, rank_, world_size_), rank_);
    if (!trace.is_ok()) fail(trace.status());
    trace_ = std::move(*trace);
    ops_ = OpRecorder::start();
  }
}

void EngineImpl::make_channels() {
  if (world_size_ == 1) return;
  auto make = [&](const char* name, gpu::Backend backend) {
    auto c = world_->communicator(name, backend, device_->index());
    if (!c.is_ok()) fail(c.status());
    return std::move(*c);
  };
  const gpu::Backend on_device =
      device_->type() == gpu::DeviceType::kCuda ? gpu::Backend::kNccl : gpu::Backend::kGloo;
  host_comm_ = make("host", gpu::Backend::kGloo);
  grad_comm_ = make("gradients", on_device);
  param_comm_ = make("parameters", on_device);
}

double EngineImpl::mean_over_ranks(double value) {
  if (!host_comm_) return value;
  throw_if_error(host_comm_->all_reduce_now(&value, 1, gpu::CommDtype::kF64, gpu::ReduceOp::kSum)
                     .with_context("mean_over_ranks"));
  return value / world_size_;
}

Status EngineImpl::agree(Status mine) {
  if (!host_comm_) return mine;
  // The lowest failing rank r sends world - r: the maximum names it.
  double failed = mine.is_ok() ? 0 : world_size_ - rank_;
  Status s = host_comm_->all_reduce_now(&failed, 1, gpu::CommDtype::kF64, gpu::ReduceOp::kMax);
  if (!mine.is_ok()) return mine;
  if (!s.is_ok()) return s;
  if (failed == 0) return Status::ok();
  return Status::cancelled("rank " + std::to_string(world_size_ - static_cast<int>(failed)) +
                           " failed (its output says why)");
}

Result<std::vector<std::byte>> EngineImpl::gather_bytes(const void* mine, std::size_t bytes) {
  std::vector<std::byte> all(bytes * static_cast<std::size_t>(world_size_));
  std::memcpy(all.data() + bytes * static_cast<std::size_t>(rank_), mine, bytes);
  if (host_comm_)
    ZINF_RETURN_IF_ERROR(wait(host_comm_->all_gather(all.data(), all.size(), gpu::CommDtype::kU8)));
  return all;
}

Status EngineImpl::broadcast_from_zero(void* data, std::size_t bytes) {
  return host_comm_ ? wait(host_comm_->broadcast(data, bytes, 0)) : Status::ok();
}

std::vector<gpu::Stream*> EngineImpl::copy_streams() const {
  return {h2d_.get(), d2h_.get(), &device_->compute_stream()};
}

std::vector<gpu::Communicator*> EngineImpl::channels() const {
  std::vector<gpu::Communicator*> out;
  for (const auto* c : {&host_comm_, &grad_comm_, &param_comm_}) {
    if (*c) out.push_back(c->get());
  }
  return out;
}

Home EngineImpl::param_home() const {
  switch (config_.zero_optimization.offload_param.device) {
    case OffloadDevice::kCpu:
      return Home::kHost;
    case OffloadDevice::kNvme:
      return Home::kNvme;
    default:
      return sharded_params_ ? Home::kDeviceShard : Home::kDevice;
  }
}

void EngineImpl::find_units(const std::shared_ptr<torch::nn::Module>& model) {
  auto& registry = detail::UnitRegistry::instance();
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> found;
  std::vector<detail::UnitEntry*> entries;
  {
    std::lock_guard lock(registry.mutex());
    std::unordered_set<const torch::nn::Module*> seen;
    for (const auto& item : model->named_modules("", /*include_self=*/true)) {
      detail::UnitEntry* entry = registry.find(item.value().get());
      if (entry == nullptr || !seen.insert(item.value().get()).second) continue;
      if (item.value() == model) {
        fail(Status::invalid_argument(
            "the model given to the Engine is itself a zinf::Unit; mark its parts instead"));
      }
      if (entry->engine != nullptr) {
        fail(Status::failed_precondition("unit '" + item.key() +
                                         "' belongs to another Engine already"));
      }
      found.emplace_back(item.key(), item.value());
      entries.push_back(entry);
    }
  }
  for (const auto& [a, ma] : found) {
    for (const auto& [b, mb] : found) {
      if (b.rfind(a + ".", 0) == 0) {
        fail(Status::invalid_argument("unit '" + b + "' is inside unit '" + a +
                                      "': units do not nest (mark one of them)"));
      }
    }
  }
  // Full names, and each parameter's one unit.
  std::unordered_map<const c10::TensorImpl*, std::string> full_name;
  for (const auto& item : model->named_parameters(/*recurse=*/true))
    full_name.emplace(item.value().unsafeGetTensorImpl(), item.key());
  std::unordered_map<const c10::TensorImpl*, std::string> owner;
  for (const auto& [name, module] : found) {
    for (const auto& [local, p] : detail::unit_parameters(*module)) {
      auto [it, inserted] = owner.emplace(p.unsafeGetTensorImpl(), name);
      if (!inserted) {
        fail(Status::invalid_argument(
            "parameter '" + full_name[p.unsafeGetTensorImpl()] + "' is shared by units '" +
            it->second + "' and '" + name +
            "': a parameter belongs to one unit (put shared weights in their common parent)"));
      }
    }
  }
  // Names inside the model, for messages and consolidated_parameters().
  auto rename = [&](detail::UnitPlan& plan) {
    for (auto* list : {&plan.partitioned, &plan.persistent}) {
      for (detail::PlannedParam& p : *list) p.name = full_name[p.tensor.unsafeGetTensorImpl()];
    }
  };
  std::uint64_t persistent_budget = config_.zero_optimization.stage3_model_persistence_threshold;
  for (const auto* e : entries) {
    if (!e->stored) continue;
    if (!store_) store_ = e->stored->store;  // the root is partitioned into the scope's store too
    for (const detail::PlannedParam& p : e->stored->plan.persistent)
      persistent_budget -= std::min(persistent_budget, p.numel);
  }
  // The root (everything outside the units) first, then the units in module order.
  std::vector<std::pair<std::string, torch::Tensor>> root;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    if (owner.count(item.value().unsafeGetTensorImpl()) == 0)
      root.emplace_back(item.key(), item.value());
  }
  auto root_plan = detail::plan_params(root, "root", config_, persistent_budget);
  if (!root_plan.is_ok()) fail(root_plan.status());
  add_unit("root", model, nullptr, *root_plan, "");
  for (std::size_t i = 0; i < found.size(); ++i) {
    const auto& [name, module] = found[i];
    detail::UnitEntry* entry = entries[i];
    if (entry->stored) {
      const detail::StoredUnit& s = *entry->stored;
      if (s.store->device != config_.zero_optimization.offload_param.device) {
        fail(Status::invalid_argument(
            "unit '" + name + "' was partitioned to offload_param \"" +
            std::string(to_string(s.store->device)) + "\" but the engine's config says \"" +
            std::string(to_string(config_.zero_optimization.offload_param.device)) + "\""));
      }
      if (store_ && store_ != s.store) {
        fail(Status::invalid_argument("unit '" + name +
                                      "' was partitioned in another PartitionScope than the "
                                      "units before it; build the model in one scope"));
      }
      store_ = s.store;
      detail::UnitPlan plan = s.plan;
      rename(plan);
      add_unit(name, module, entry, plan, s.key);
      continue;
    }
    auto plan =
        detail::plan_params(detail::unit_parameters(*module), name, config_, persistent_budget);
    if (!plan.is_ok()) fail(plan.status());
    rename(*plan);
    add_unit(name, module, entry, *plan, "");
  }
}

void EngineImpl::add_unit(const std::string& name, const std::shared_ptr<torch::nn::Module>& module,
                          detail::UnitEntry* entry, const detail::UnitPlan& plan, std::string key) {
  const std::size_t index = units_.size();
  units_.emplace_back();
  units_.back().name = name;
  units_.back().module = module;
  units_.back().entry = entry;
  const Home home = param_home();
  if (plan.numel > 0) {
    if ((home == Home::kHost || home == Home::kNvme) && key.empty()) {
      // Not partitioned by a scope: partition it now.
      if (!store_) {
        auto store = detail::PartitionStore::open(config_, options_.param_fault);
        if (!store.is_ok()) fail(store.status().with_context(config_.source));
        store_ = std::move(*store);
      }
      key = "u" + std::to_string(store_->next_key++);
      Status s = detail::store_partition(*store_, key, plan, sharding());
      if (!s.is_ok()) fail(s.with_context("partitioning unit '" + name + "'"));
    }
    units_[index].main = add_partition(index, plan.partitioned, home, plan.dtype, std::move(key));
  }
  if (!plan.persistent.empty()) {
    units_[index].persistent =
        add_partition(index, plan.persistent, Home::kDevice, plan.persistent_dtype, "");
  }
}

std::size_t EngineImpl::add_partition(std::size_t unit,
                                      const std::vector<detail::PlannedParam>& params, Home home,
                                      torch::ScalarType dtype, std::string key) {
  Partition part;
  part.key = key.empty() ? units_[unit].name : std::move(key);
  part.unit = unit;
  part.home = home;
  part.dtype = dtype;
  part.cdtype = cpu_dtype(dtype);
  part.flat = elements_;
  std::uint64_t numel = 0;
  for (const detail::PlannedParam& p : params) numel += p.numel;
  part.own = sharding().own(numel);
  const bool sharded = sharded_params_ && home != Home::kDevice;
  part.home_begin = sharded ? part.own.begin : 0;
  part.own_flat = own_elements_;
  const std::uint64_t own_end = part.own.begin + part.own.count;
  const std::size_t index = partitions_.size();
  for (const detail::PlannedParam& p : params) {
    Param param;
    param.name = p.name;
    param.dtype = dtype;
    param.numel = p.numel;
    param.unit = unit;
    param.partition = index;
    param.offset = part.numel;
    param.flat = elements_ + part.numel;
    const std::uint64_t lo = std::max(part.numel, part.own.begin);
    const std::uint64_t hi = std::min(part.numel + p.numel, own_end);
    if (hi > lo) {
      param.own_begin = lo - part.numel;
      param.own_count = hi - lo;
    }
    // Sorted in the optimizer's space also when empty here: at its place.
    param.own_flat =
        own_elements_ + std::clamp(part.numel, part.own.begin, own_end) - part.own.begin;
    param.grad_at = partitioned_grads_ ? param.own_flat : param.flat + param.own_begin;
    param.requires_grad = p.tensor.requires_grad();
    param.storage = ParamStorage(p.tensor, p.shape, torch_device_, dtype);
    part.numel += param.numel;
    part.params.push_back(params_.size());
    params_.push_back(std::move(param));
  }
  part.bytes = part.numel * c10::elementSize(dtype);
  part.home_bytes = sharded ? part.own.count * c10::elementSize(dtype) : part.bytes;
  elements_ += part.numel;
  own_elements_ += part.own.count;
  partitions_.push_back(std::move(part));
  return index;
}

// Resident partitions onto the device (their parameters bound for good),
// cpu partitions pinned, offloaded parameters released; then the checks
// that need the device's budget.
void EngineImpl::place_partitions() {
  const std::uint64_t budget = device_->memory().budget;
  // A partition gathered on use must fit the device whole.
  auto check_fits = [&](const UnitRec& unit, const Partition& part) {
    if (part.bytes <= budget) return;
    fail(Status::resource_exhausted("unit '" + unit.name + "' needs " + format_bytes(part.bytes) +
                                    " on the device, more than the device budget of " +
                                    format_bytes(budget) +
                                    " (zinf.device_budget): split the unit, or raise the budget"));
  };
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < partitions_.size(); ++i) {
    Partition& part = partitions_[i];
    const UnitRec& unit = units_[part.unit];
    const std::size_t elem = c10::elementSize(part.dtype);
    switch (part.home) {
      case Home::kDevice:
      case Home::kDeviceShard: {
        const bool shard = part.home == Home::kDeviceShard;
        const bool persistent = unit.persistent == i;
        auto mem = device_->allocate(
            part.home_bytes, shard ? "this rank's shard of the parameters of unit '" + unit.name +
                                         "' (stage 3 partitions them over the ranks)"
                                   : (persistent ? "the persistent parameters of unit '"
                                                 : "the parameters of unit '") +
                                         unit.name +
                                         "' (offload_param none keeps them on the device)");
        if (!mem.is_ok()) fail(mem.status());
        part.device = *mem;
        auto staging = AlignedBuffer::allocate(part.bytes);
        if (!staging.is_ok()) fail(staging.status());
        for (std::size_t k : part.params) {
          const Param& p = params_[k];
          torch::from_blob(staging->data() + p.offset * elem, {static_cast<std::int64_t>(p.numel)},
                           torch::dtype(part.dtype))
              .copy_(p.storage.param().detach().reshape({-1}));
        }
        Status s;
        if (host_comm_) {  // every rank starts from rank 0's values
          s = wait(host_comm_->broadcast(staging->data(), part.bytes, 0));
          if (!s.is_ok())
            fail(s.with_context("the initial parameters of unit '" + unit.name + "'"));
        }
        s = h2d_->copy_to_device(part.device, staging->data() + part.home_begin * elem,
                                 part.home_bytes, unit.name);
        if (s.is_ok()) s = h2d_->synchronize();
        if (!s.is_ok()) fail(s);
        for (std::size_t k : part.params) {
          if (shard) {
            params_[k].storage.release();
          } else {
            params_[k].storage.bind(static_cast<std::byte*>(part.device) +
                                    params_[k].offset * elem);
          }
        }
        if (shard) check_fits(unit, part);
        break;
      }
      case Home::kHost: {
        AlignedBuffer& buffer = store_->host.at(part.key);
        part.host = buffer.data();
        if (Status s = device_->pin(buffer.data(), buffer.size()); !s.is_ok()) {
          if (host_pinned_) {
            ZINF_LOG(kWarn) << "offload_param cpu: partitions are not pinned (" << s.message()
                            << "); copies to the device are not asynchronous";
          }
          host_pinned_ = false;
        }
        [[fallthrough]];
      }
      case Home::kNvme:
        for (std::size_t k : part.params) params_[k].storage.release();
        check_fits(unit, part);
        break;
    }
  }
  // Live parameters at most stage3_max_live_parameters: what they take must fit.
  std::size_t widest = 0;
  for (const Partition& part : partitions_) {
    if (part.home != Home::kDevice) widest = std::max(widest, c10::elementSize(part.dtype));
  }
  const auto max_live = config_.zero_optimization.stage3_max_live_parameters;
  if (widest > 0 && budget != UINT64_MAX && max_live <= UINT64_MAX / widest &&
      max_live * widest > budget) {
    fail(Status::invalid_argument(
        config_.source +
        ": zero_optimization.stage3_max_live_parameters = " + std::to_string(max_live) +
        " elements (" + format_bytes(max_live * widest) + ") is more than the device budget of " +
        format_bytes(budget) + " (zinf.device_budget) holds: lower it to at most " +
        std::to_string(budget / widest) + ", with room left for activations"));
  }
}

void EngineImpl::make_buffers() {
  const auto& op = config_.zero_optimization.offload_param;
  std::uint64_t staged = 0;  // the largest partition that goes through the pool
  for (const Partition& part : partitions_) {
    const std::uint64_t home_numel = part.home_bytes / c10::elementSize(part.dtype);
    if (part.home == Home::kNvme) {
      if (Status s = check_buffer_size(units_[part.unit].name, home_numel, config_); !s.is_ok())
        fail(s);
    }
    if (part.home != Home::kHost) staged = std::max(staged, part.home_bytes);
  }
  if (staged > 0) {
    auto pool = gpu::PinnedPool::create(device_.get(), param_buffer_options(staged, op));
    if (!pool.is_ok()) fail(pool.status());
    param_pool_ = std::move(*pool);
    if (store_ && store_->nvme) {
      if (Status s = store_->nvme->register_buffers(param_pool_->io_regions()); !s.is_ok())
        ZINF_LOG(kWarn) << "offload_param: " << s.message() << "; using plain buffers";
      param_pool_->retire_while(
          [nvme = store_->nvme.get()](std::span<const std::byte> b) { return nvme->holds(b); });
    }
  }
  std::uint64_t largest = 0;
  for (const Param& p : params_) largest = std::max(largest, p.numel * c10::elementSize(p.dtype));
  auto grads = gpu::PinnedPool::create(device_.get(), grad_buffer_options(largest, op.pin_memory));
  if (!grads.is_ok()) fail(grads.status());
  grad_pool_ = std::move(*grads);
  const std::uint64_t grad_elements = partitioned_grads_ ? own_elements_ : elements_;
  auto acc = AlignedBuffer::allocate(std::max<std::uint64_t>(1, grad_elements) * sizeof(float));
  if (!acc.is_ok()) fail(acc.status());
  grads_ = std::move(*acc);
  device_grads_.resize(partitions_.size());
}

Status EngineImpl::read_partition(const Partition& part, std::byte* out) const {
  switch (part.home) {
    case Home::kHost:
      std::memcpy(out, part.host, part.home_bytes);
      return Status::ok();
    case Home::kNvme:
      return store_->get(part.key, out, part.home_bytes);
    case Home::kDevice:
    case Home::kDeviceShard:
      ZINF_RETURN_IF_ERROR(
          d2h_->copy_to_host(out, part.device, part.home_bytes, units_[part.unit].name));
      return d2h_->synchronize();
  }
  return Status::internal("unknown home");
}

std::vector<Segment> EngineImpl::segments(const Piece& piece) const {
  return offload::segments(
      params_.size(), piece, [&](std::size_t i) { return params_[i].own_flat; },
      [&](std::size_t i) { return params_[i].own_count; });
}

void EngineImpl::make_optimizer() {
  OffloadOptions o = OffloadOptions::from_config(config_);
  o.fault(options_.optimizer_fault);
  TierShape shape;
  shape.num_states = num_states_;
  for (std::size_t i = 0; i < partitions_.size(); ++i) {
    for (std::uint64_t g : TierShape::even_groups(partitions_[i].own.count, o.sub_group_size())) {
      shape.groups.push_back(g);
      group_partition_.push_back(i);
    }
    partitions_[i].last_group = shape.groups.size() - 1;  // looked up only if it has groups
  }
  auto executor = ca::Executor::create(static_cast<int>(config_.zinf.threads));
  if (!executor.is_ok()) fail(executor.status());
  executor_ = std::move(*executor);
  auto grad_executor = ca::Executor::create(1);
  if (!grad_executor.is_ok()) fail(grad_executor.status());
  grad_executor_ = std::move(*grad_executor);
  // Masters from the parameters' homes, one partition on the host at a time.
  std::size_t loaded = partitions_.size();
  AlignedBuffer source;
  auto init = [&](Piece& piece) -> Status {
    for (int s = 1; s < num_states_; ++s) std::fill_n(piece.state[s], piece.count, 0.0f);
    for (const Segment& seg : segments(piece)) {
      const Param& p = params_[seg.item];
      const Partition& part = partitions_[p.partition];
      if (loaded != p.partition) {
        ZINF_ASSIGN_OR_RETURN(source,
                              AlignedBuffer::allocate(std::max<std::uint64_t>(1, part.bytes)));
        ZINF_RETURN_IF_ERROR(read_partition(part, source.data()));
        loaded = p.partition;
      }
      const std::size_t elem = c10::elementSize(part.dtype);
      ZINF_RETURN_IF_ERROR(executor_->accumulate(
          source.data() + (p.offset + p.own_begin + seg.item_offset - part.home_begin) * elem,
          part.cdtype, piece.state[0] + seg.piece_offset, seg.length, /*overwrite=*/true));
    }
    return Status::ok();
  };
  auto tier = o.device() == "nvme" ? make_nvme_tier(shape, o, config_.optimizer->type.c_str(), init)
                                   : make_host_tier(shape, o.pin_memory(), init);
  if (!tier.is_ok()) fail(tier.status().with_context("zero_optimization.offload_optimizer"));
  tier_ = std::move(*tier);
  pieces_ = tier_->pieces();
}

// Says once what each swap path is on, and warns where it is memory (a
// tmpfs): offloading there saves no host memory at all.
void EngineImpl::describe_nvme_paths() {
  const auto& z = config_.zero_optimization;
  auto add = [&](const char* role, const std::string& path) {
    MemoryReport::NvmePath p{role, path, swap::describe_storage(path)};
    ZINF_LOG(kInfo) << role << ".nvme_path " << path << ": " << p.storage.describe();
    if (p.storage.ram_backed) {
      ZINF_LOG(kWarn) << role << ".nvme_path " << path << " is on " << p.storage.filesystem
                      << ": memory, not NVMe; what is offloaded there still takes host memory";
    }
    nvme_paths_.push_back(std::move(p));
  };
  auto add_all = [&](const char* role, OffloadDevice device, const std::string& path) {
    if (device != OffloadDevice::kNvme) return;
    add(role, path);
    for (const auto& extra : config_.zinf.nvme_paths) add(role, extra);
  };
  add_all("offload_param", z.offload_param.device, z.offload_param.nvme_path);
  add_all("offload_optimizer", z.offload_optimizer.device, z.offload_optimizer.nvme_path);
}

// Page-locked host bytes held for the whole run (pinned cpu partitions, the
// optimizer tier's pinned memory), plus the most of each engine pool's
// buffers on loan at once since the last call.
std::uint64_t EngineImpl::pinned_in_use() {
  const TierBytes t = tier_->bytes();
  std::uint64_t bytes = t.host_pinned ? t.host : 0;
  if (store_ && host_pinned_) bytes += store_->host_bytes();
  for (gpu::PinnedPool* pool : {param_pool_.get(), grad_pool_.get()}) {
    if (pool != nullptr && pool->pinned()) bytes += pool->take_peak_in_use() * pool->buffer_bytes();
  }
  return bytes;
}

void EngineImpl::trace_param_transfers(const std::vector<swap::SwapTransfer>& transfers,
                                       std::uint64_t step) {
  for (const swap::SwapTransfer& t : transfers) {
    const auto unit = unit_of_key_.find(t.key);
    trace_->transfer({"parameters", unit == unit_of_key_.end() ? t.key : unit->second,
                      t.read ? "read" : "write", t.bytes, t.when},
                     step);
  }
}

void EngineImpl::trace_lanes(const std::string& store, const std::vector<swap::LaneBusy>& lanes,
                             SteadyClock::time_point from, SteadyClock::time_point to,
                             std::uint64_t step) {
  for (std::size_t k = 0; k < lanes.size(); ++k) {
    const std::string track = "nvme " + store + " lane " + std::to_string(k);
    trace_->named_spans(track + " reads", merged(clip(lanes[k].reads, from, to)), step);
    trace_->named_spans(track + " writes", merged(clip(lanes[k].writes, from, to)), step);
  }
}

MemoryReport EngineImpl::memory_report() const {
  MemoryReport m;
  const gpu::MemoryStats d = device_->memory();
  m.device = device_->describe();
  m.device_budget = d.budget;
  m.device_live = d.live;
  m.device_peak = d.peak;
  m.host_params = store_ ? store_->host_bytes() : 0;
  m.host_param_buffers = param_pool_ ? param_pool_->bytes() : 0;
  m.host_grads = grads_.size();
  m.host_grad_buffers = grad_pool_->bytes();
  const TierBytes t = tier_->bytes();
  m.host_optimizer = t.host;
  m.nvme_optimizer = t.nvme;
  const bool param_nvme = store_ && store_->nvme;
  if (param_nvme) m.nvme_params = store_->nvme->stats().live_bytes;
  m.pinned = host_pinned_ && t.host_pinned && grad_pool_->pinned() &&
             (!param_pool_ || param_pool_->pinned());
  const bool optimizer_nvme = t.nvme > 0;
  m.fixed_buffers = (param_nvme || optimizer_nvme) &&
                    (!param_nvme || store_->nvme->stats().fixed_buffers) &&
                    (!optimizer_nvme || t.fixed_buffers);
  m.nvme_paths = nvme_paths_;
  return m;
}

// ---------------------------------------------------------------------------
// Forward and backward

void EngineImpl::begin_forward() {
  if (broken_) {
    fail(Status::failed_precondition(
        "the engine could not restore its parameters after a failed step; rebuild it"));
  }
  if (phase_ == Phase::kForward || phase_ == Phase::kBackward)
    fail(Status::failed_precondition("engine forward called inside a forward or backward"));
  if (phase_ == Phase::kAfterForward) end_micro_step(/*completed=*/false);  // evaluation
  const auto now = SteadyClock::now();
  if (!window_.open) {
    window_ = {};
    window_.open = true;
    window_.begin = now;
    comm_bytes_ = 0;  // what the channels moved before the window is not this step's
    for (gpu::Communicator* c : channels()) comm_bytes_ += c->stats().bytes;
  }
  take_busy(now, now);          // drop what happened outside the engine's phases
  (void)take_charge_failure();  // one from outside the engine's phases is not this forward's
  window_.micro_begin = now;
  if (store_ && store_->nvme) window_.store_read_bytes = store_->nvme->stats().bytes_read;
  charge_.emplace(charges_ ? &*charges_ : nullptr);
  coordinator_->begin_micro_step(torch::GradMode::is_enabled());
  phase_ = Phase::kForward;
  try {
    use(0);
  } catch (const Error& e) {
    abort_micro_step(/*drop_window=*/false);
    fail(e.status().with_context("forward failed"));
  }
}

std::vector<torch::Tensor> EngineImpl::end_forward(std::vector<torch::Tensor> outputs) {
  hook_grads(0);
  const bool trains = std::any_of(outputs.begin(), outputs.end(), [](const torch::Tensor& t) {
    return t.defined() && t.requires_grad();
  });
  phase_ = Phase::kAfterForward;
  if (!trains || !torch::GradMode::is_enabled()) end_micro_step(/*completed=*/false);
  return outputs;
}

void EngineImpl::fail_forward(const std::exception& error) {
  abort_micro_step(/*drop_window=*/false);
  if (const auto* e = dynamic_cast<const Error*>(&error))
    fail(e->status().with_context("forward failed"));
  if (auto budget = take_charge_failure()) fail(budget->with_context("forward failed"));
  std::string released;
  std::size_t n = 0;
  for (const UnitRec& u : units_) {
    if (!u.main || partitions_[*u.main].home == Home::kDevice) continue;
    if (n++ < 4) released += (released.empty() ? "'" : ", '") + u.name + "'";
  }
  if (n > 4) released += " and " + std::to_string(n - 4) + " more";
  const auto* c10 = dynamic_cast<const c10::Error*>(&error);
  std::string message = "forward failed: ";
  message += c10 != nullptr ? c10->what_without_backtrace() : error.what();
  if (n > 0) {
    message +=
        ". Under the engine a unit's parameters hold values only inside its zinf::Unit "
        "call: a parameter used outside it (a unit run as unit->forward(x), a weight "
        "shared with another unit) is empty. Released outside their calls: units " +
        released;
  }
  fail(Status::invalid_argument(message));
}

void EngineImpl::use(std::size_t unit) {
  Status s = coordinator_->use(unit);
  if (s.is_ok()) s = wait_ready(unit);
  if (!s.is_ok()) fail(s.with_context("gathering unit '" + units_[unit].name + "'"));
  bind(unit);
}

Status EngineImpl::wait_ready(std::size_t unit) {
  Gather& g = units_[unit].gather;
  Status s;
  stall_.begin();
  if (g.gathered.valid()) {
    s = g.gathered.get();
  } else if (g.fetched.valid()) {
    s = g.fetched.get();
  }
  if (s.is_ok() && g.ready) s = device_->compute_stream().wait(g.ready);
  stall_.end();
  return s;
}

void EngineImpl::bind(std::size_t unit) {
  UnitRec& u = units_[unit];
  if (!u.main || u.gather.bound || partitions_[*u.main].home == Home::kDevice) return;
  const Partition& part = partitions_[*u.main];
  const std::size_t elem = c10::elementSize(part.dtype);
  for (std::size_t k : part.params)
    params_[k].storage.bind(static_cast<std::byte*>(u.gather.device) + params_[k].offset * elem);
  u.gather.bound = true;
}

Status EngineImpl::fetch(std::size_t unit) {
  UnitRec& u = units_[unit];
  const Partition& part = partitions_[*u.main];
  Gather& g = u.gather;
  ZINF_ASSIGN_OR_RETURN(g.device,
                        device_->allocate(part.bytes, "the parameters of unit '" + u.name + "'"));
  std::byte* home_at =
      static_cast<std::byte*>(g.device) + part.home_begin * c10::elementSize(part.dtype);
  if (part.home == Home::kDeviceShard) {  // the shard into place; the gather brings the rest
    gpu::Stream& compute = device_->compute_stream();
    ZINF_RETURN_IF_ERROR(compute.copy_within_device(home_at, part.device, part.home_bytes, u.name));
    ZINF_ASSIGN_OR_RETURN(g.ready, compute.record());
    return Status::ok();
  }
  window_.h2d_bytes += part.home_bytes;
  if (part.home == Home::kHost) {
    ZINF_RETURN_IF_ERROR(h2d_->copy_to_device(home_at, part.host, part.home_bytes, u.name));
    ZINF_ASSIGN_OR_RETURN(g.ready, h2d_->record());
    return Status::ok();
  }
  {
    std::lock_guard lock(read_mutex_);
    if (g.staged) {
      g.staged = false;
    } else if (auto lease = deferred_.empty() ? param_pool_->try_acquire() : std::nullopt) {
      ZINF_RETURN_IF_ERROR(start_read(unit, std::move(*lease)));
    } else {
      deferred_.push_back(unit);
    }
  }
  g.fetched = fetch_worker_.submit([this, unit] { return finish_nvme_fetch(unit); });
  return Status::ok();
}

Status EngineImpl::start_read(std::size_t unit, Lease lease) {
  Gather& g = units_[unit].gather;
  const Partition& part = partitions_[*units_[unit].main];
  g.lease = std::make_shared<Lease>(std::move(lease));
  if (part.home_bytes == 0) return Status::ok();  // this rank's shard is empty
  ZINF_ASSIGN_OR_RETURN(auto ticket,
                        store_->nvme->read(part.key, {g.lease->data(), part.home_bytes}));
  g.read = ticket;
  return Status::ok();
}

// On the fetch worker, in fetch order: the read (started now if it had to
// wait for a buffer), the copy onto the device, then the buffer goes back
// and the reads that waited for one start.
Status EngineImpl::finish_nvme_fetch(std::size_t unit) {
  Gather& g = units_[unit].gather;
  const Partition& part = partitions_[*units_[unit].main];
  bool started = false;
  {
    std::lock_guard lock(read_mutex_);
    started = g.lease != nullptr;  // start_read() took a buffer
  }
  if (!started) {
    Lease lease = param_pool_->acquire();
    std::lock_guard lock(read_mutex_);
    deferred_.erase(std::find(deferred_.begin(), deferred_.end(), unit));
    ZINF_RETURN_IF_ERROR(start_read(unit, std::move(lease)));
  }
  Status s = g.read ? store_->nvme->wait(*g.read) : Status::ok();
  g.read.reset();
  std::byte* home_at =
      static_cast<std::byte*>(g.device) + part.home_begin * c10::elementSize(part.dtype);
  if (s.is_ok()) {
    s = h2d_->copy_to_device(home_at, g.lease->data(), part.home_bytes, units_[unit].name);
  }
  if (s.is_ok()) {
    auto event = h2d_->record();
    s = event.status();
    if (s.is_ok()) {
      g.ready = *event;
      s = g.ready->synchronize();
    }
  }
  std::lock_guard lock(read_mutex_);
  g.lease.reset();
  while (!deferred_.empty()) {
    auto lease = param_pool_->try_acquire();
    if (!lease) break;
    const std::size_t next = deferred_.front();
    deferred_.erase(deferred_.begin());
    if (Status r = start_read(next, std::move(*lease)); !r.is_ok()) {
      deferred_.insert(deferred_.begin(), next);  // its own job starts it, and reports
      break;
    }
  }
  return s;
}

bool EngineImpl::stage(std::size_t unit) {
  std::lock_guard lock(read_mutex_);
  // One buffer always stays for fetches, so staging never starves them.
  if (!deferred_.empty() || param_pool_->count() - param_pool_->in_use() < 2) return false;
  auto lease = param_pool_->try_acquire();
  if (!lease || !start_read(unit, std::move(*lease)).is_ok()) return false;
  units_[unit].gather.staged = true;
  return true;
}

void EngineImpl::unstage(std::size_t unit) {
  std::lock_guard lock(read_mutex_);
  Gather& g = units_[unit].gather;
  if (g.read) (void)store_->nvme->wait(*g.read);
  g.read.reset();
  g.lease.reset();
  g.staged = false;
}

// Stage 3 on several ranks: the coordinator says which use to gather when
// (the same order on every rank); the gather worker issues them, each after
// its shard is on the device.

void EngineImpl::gather(std::size_t unit) {
  Gather& g = units_[unit].gather;
  // The compute issued so far has finished with the copy's memory (a kept copy).
  auto computed = device_->compute_stream().record();
  auto fetched = std::make_shared<std::future<Status>>(std::move(g.fetched));
  g.gathered = gather_worker_.submit([this, unit, computed, fetched]() -> Status {
    const UnitRec& u = units_[unit];
    const Partition& part = partitions_[*u.main];
    if (fetched->valid()) ZINF_RETURN_IF_ERROR(fetched->get());
    ZINF_RETURN_IF_ERROR(computed.status());
    ZINF_RETURN_IF_ERROR((*computed)->synchronize());
    if (u.gather.ready) ZINF_RETURN_IF_ERROR(u.gather.ready->synchronize());  // the shard is in
    return wait(param_comm_->all_gather(u.gather.device, part.numel, comm_dtype(part.dtype)));
  });
}

Status EngineImpl::wait_gathers() {
  Status first;
  for (UnitRec& u : units_) {
    if (!u.gather.gathered.valid()) continue;
    Status s = u.gather.gathered.get();
    if (first.is_ok() && !s.is_ok()) first = s.with_context("gathering unit '" + u.name + "'");
  }
  return first;
}

Status EngineImpl::gather_unused(std::size_t unit) {
  const Partition& part = partitions_[*units_[unit].main];
  const std::string what = "a gather of unit '" + units_[unit].name +
                           "' that other ranks may have issued before the order changed";
  ZINF_ASSIGN_OR_RETURN(void* scratch, device_->allocate(part.bytes, what));
  Status s =
      gather_worker_
          .submit([&] {
            return wait(param_comm_->all_gather(scratch, part.numel, comm_dtype(part.dtype)));
          })
          .get();
  device_->deallocate(scratch, part.bytes, nullptr);
  return s.with_context(what);
}

void EngineImpl::release(std::size_t unit) {
  UnitRec& u = units_[unit];
  Gather& g = u.gather;
  if (g.gathered.valid()) (void)g.gathered.get();
  if (g.fetched.valid()) (void)g.fetched.get();
  if (g.ready) (void)g.ready->synchronize();  // the copy into it has finished
  if (g.bound) {
    for (std::size_t k : partitions_[*u.main].params) params_[k].storage.release();
    g.bound = false;
  }
  auto last_use = device_->compute_stream().record();
  device_->deallocate(g.device, partitions_[*u.main].bytes, last_use.is_ok() ? *last_use : nullptr);
  g.device = nullptr;
  g.ready.reset();
}

void EngineImpl::unit_begin(std::size_t unit) {
  if (phase_ != Phase::kForward) {
    fail(Status::failed_precondition("unit '" + units_[unit].name +
                                     "' ran outside the engine's forward: run the model through "
                                     "the Engine (engine(x))"));
  }
  if (running_) {
    fail(Status::failed_precondition("unit '" + units_[unit].name + "' ran inside unit '" +
                                     units_[*running_].name + "': units do not nest"));
  }
  use(unit);
  running_ = unit;
  if (trace_) device_->compute_stream().begin_span(units_[unit].name, "forward");
}

std::vector<torch::Tensor> EngineImpl::unit_end(std::size_t unit,
                                                std::vector<torch::Tensor> outputs) {
  running_.reset();
  if (trace_) device_->compute_stream().end_span();
  hook_grads(unit);
  if (torch::GradMode::is_enabled()) {
    outputs = offload::pre_backward(
        std::move(outputs), reinterpret_cast<std::int64_t>(units_[unit].entry), &on_pre_backward);
  }
  coordinator_->done(unit);
  return outputs;
}

void EngineImpl::unit_abort(std::size_t unit) {
  running_.reset();
  coordinator_->done(unit);
}

void EngineImpl::hook_grads(std::size_t unit) {
  if (!torch::GradMode::is_enabled()) return;
  UnitRec& u = units_[unit];
  for (const auto& part : {u.main, u.persistent}) {
    if (!part) continue;
    for (std::size_t k : partitions_[*part].params) {
      if (!params_[k].requires_grad) continue;
      if (hook_gradient(params_[k].storage.param(), [this, k] { on_grad(k); }) == Hooked::kAdded)
        ++u.expected_grads;
    }
  }
}

void EngineImpl::pre_backward(std::size_t unit) {
  phase_ = Phase::kBackward;
  end_backward_span();
  use(unit);
  if (trace_) {
    device_->compute_stream().begin_span(units_[unit].name, "backward");
    in_backward_ = unit;
  }
}

void EngineImpl::end_backward_span() {
  if (!in_backward_) return;
  device_->compute_stream().end_span();
  in_backward_.reset();
}

// --- activation checkpointing --------------------------------------------
//
// Recompute is the autograd node of a checkpointed unit call: its forward
// runs the unit with gradients off (a Function's forward always does), so
// only the inputs are kept; its backward runs after PreBackward gathered
// the unit again, replays the forward with gradients on and the random
// state it first ran with, hooks the parameters' gradients as the forward
// of an ordinary call does, and back-propagates through the replay (a
// re-entrant backward, as PyTorch's checkpoint does).

namespace {

// `anchor` requires a gradient, so that the node is in the graph even when
// no input needs one (the first unit's, say): its parameters still do.
struct Recompute : torch::autograd::Function<Recompute> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList inputs,
                                                const torch::Tensor& /*anchor*/,
                                                std::int64_t state) {
    auto held = c10::intrusive_ptr<RecomputeState>::unsafe_reclaim_from_nonowning(
        reinterpret_cast<RecomputeState*>(state));
    ctx->saved_data["state"] = c10::IValue::make_capsule(held);
    return held->engine->checkpoint_forward(*held, inputs.vec());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto held = ctx->saved_data["state"].toCapsule();
    auto& state = static_cast<RecomputeState&>(*held);
    auto out = state.engine->checkpoint_backward(state, std::move(grads));
    out.push_back(torch::Tensor());  // the anchor
    out.push_back(torch::Tensor());  // the state
    return out;
  }
};

// Swaps `generator`'s state with `state`.
void swap_rng(at::Generator generator, torch::Tensor& state) {
  std::lock_guard lock(generator.mutex());
  torch::Tensor now = generator.get_state();
  generator.set_state(state);
  state = std::move(now);
}

}  // namespace

bool EngineImpl::checkpoints() const {
  return config_.zinf.checkpoint_units && torch::GradMode::is_enabled();
}

std::vector<torch::Tensor> EngineImpl::checkpoint(std::size_t unit, detail::FlatForward forward,
                                                  std::vector<torch::Tensor> inputs) {
  auto state = c10::make_intrusive<RecomputeState>();
  state->engine = this;
  state->unit = unit;
  state->forward = std::move(forward);
  static const torch::Tensor anchor = torch::empty({0}).requires_grad_();
  return Recompute::apply(at::TensorList(inputs), anchor,
                          reinterpret_cast<std::int64_t>(state.get()));
}

std::vector<torch::Tensor> EngineImpl::checkpoint_forward(RecomputeState& state,
                                                          std::vector<torch::Tensor> inputs) {
  const auto& ac = config_.activation_checkpointing;
  if (ac.synchronize_checkpoint_boundary) throw_if_error(device_->compute_stream().synchronize());
  for (const torch::Tensor& t : inputs) {
    state.requires_grad.push_back(t.requires_grad());
    if (!ac.cpu_checkpointing) {
      state.saved.push_back(t.detach());
    } else if (torch_device_.is_cuda()) {
      state.saved.push_back(
          torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true)).copy_(t));
    } else {
      ChargeScope host(nullptr);  // the emulated device's host memory is not its budget
      state.saved.push_back(t.detach().clone());
    }
  }
  state.cpu_rng = at::detail::getDefaultCPUGenerator().get_state();
  if (torch_device_.is_cuda())
    state.device_rng = at::globalContext().defaultGenerator(torch_device_).get_state();
  auto outputs = state.forward(std::move(inputs));
  if (ac.synchronize_checkpoint_boundary) throw_if_error(device_->compute_stream().synchronize());
  return outputs;
}

std::vector<torch::Tensor> EngineImpl::checkpoint_backward(RecomputeState& state,
                                                           std::vector<torch::Tensor> grads) {
  const auto& ac = config_.activation_checkpointing;
  if (ac.synchronize_checkpoint_boundary) throw_if_error(device_->compute_stream().synchronize());
  std::vector<torch::Tensor> inputs;
  for (std::size_t i = 0; i < state.saved.size(); ++i) {
    torch::Tensor t = state.saved[i];
    if (ac.cpu_checkpointing) t = torch_device_.is_cuda() ? t.to(torch_device_) : t.clone();
    inputs.push_back(t.detach().requires_grad_(state.requires_grad[i]));
  }
  state.saved.clear();
  swap_rng(at::detail::getDefaultCPUGenerator(), state.cpu_rng);
  if (state.device_rng.defined())
    swap_rng(at::globalContext().defaultGenerator(torch_device_), state.device_rng);
  std::vector<torch::Tensor> outputs;
  {
    torch::AutoGradMode replay(true);
    outputs = state.forward(inputs);
    hook_grads(state.unit);
  }
  swap_rng(at::detail::getDefaultCPUGenerator(), state.cpu_rng);
  if (state.device_rng.defined())
    swap_rng(at::globalContext().defaultGenerator(torch_device_), state.device_rng);
  std::vector<torch::Tensor> roots, root_grads;
  for (std::size_t k = 0; k < outputs.size() && k < grads.size(); ++k) {
    if (!grads[k].defined() || !outputs[k].requires_grad()) continue;
    roots.push_back(outputs[k]);
    root_grads.push_back(grads[k]);
  }
  if (!roots.empty()) torch::autograd::backward(roots, root_grads);
  std::vector<torch::Tensor> input_grads;
  for (std::size_t i = 0; i < inputs.size(); ++i)
    input_grads.push_back(state.requires_grad[i] ? inputs[i].grad() : torch::Tensor());
  if (ac.synchronize_checkpoint_boundary) throw_if_error(device_->compute_stream().synchronize());
  return input_grads;
}

// A gradient is complete on the device. Partitioned, it is added into its
// partition's gradients there, reduced across ranks once the unit's are all
// in. Otherwise it leaves through pinned buffers (D2H after the compute
// stream), and the gradient worker adds it into the fp32 host gradients.
// Either way the device copy is dropped once it has been used.
void EngineImpl::on_grad(std::size_t index) {
  Param& p = params_[index];
  torch::Tensor grad = p.storage.param().grad();
  p.storage.param().mutable_grad().reset();
  if (!grad.defined()) return;
  if (grad.scalar_type() != p.dtype || static_cast<std::uint64_t>(grad.numel()) != p.numel) {
    fail(Status::internal(
        "the gradient of '" + p.name + "' is " + std::string(c10::toString(grad.scalar_type())) +
        "[" + std::to_string(grad.numel()) + "], its parameter " +
        std::string(c10::toString(p.dtype)) + "[" + std::to_string(p.numel) + "]"));
  }
  const bool overwrite = !p.has_grad;
  p.has_grad = true;
  if (partitioned_grads_) {
    device_grad(p.partition)
        .narrow(0, static_cast<std::int64_t>(p.offset), grad.numel())
        .add_(grad.reshape({-1}));
  } else {
    grad = grad.contiguous();
    auto computed = device_->compute_stream().record();
    if (computed.is_ok()) (void)d2h_->wait(*computed);
    float* dest = grads_.as<float>() + p.flat;
    const std::size_t elem = c10::elementSize(p.dtype);
    const std::size_t bytes = p.numel * elem;
    const ca::Dtype dtype = cpu_dtype(p.dtype);
    for (std::size_t off = 0; off < bytes; off += grad_pool_->buffer_bytes()) {
      const std::size_t len = std::min(grad_pool_->buffer_bytes(), bytes - off);
      stall_.begin();
      auto lease = std::make_shared<Lease>(grad_pool_->acquire());
      stall_.end();
      Status s = d2h_->copy_to_host(lease->data(), static_cast<std::byte*>(grad.data_ptr()) + off,
                                    len, p.name);
      auto left = s.is_ok() ? d2h_->record() : Result<gpu::EventPtr>(s);
      if (!left.is_ok()) fail(left.status().with_context("gradient of '" + p.name + "'"));
      window_.d2h_bytes += len;
      float* acc = dest + off / elem;
      grad_jobs_.push_back(grad_worker_.submit(
          [this, event = *left, lease, grad, acc, n = len / elem, dtype, overwrite]() -> Status {
            ZINF_RETURN_IF_ERROR(event->synchronize());
            return grad_executor_->accumulate(lease->data(), dtype, acc, n, overwrite);
          }));
    }
  }
  UnitRec& u = units_[p.unit];
  if (++u.received_grads == u.expected_grads && p.unit != 0 && phase_ == Phase::kBackward) {
    coordinator_->done(p.unit);
    if (partitioned_grads_) {
      reduce_unit(p.unit);
      // overlap_comm: the reduction runs on while the rest of the backward does.
      if (!config_.zero_optimization.overlap_comm) wait_reductions(kAllQueued);
    }
  }
}

// communication_data_type, or the gradients' own dtype (bf16 in fp32 on Gloo).
torch::ScalarType EngineImpl::reduce_dtype(torch::ScalarType grad) const {
  return reduction_dtype(grad, config_.communication_data_type,
                         grad_comm_->backend() == gpu::Backend::kNccl);
}

torch::Tensor EngineImpl::device_grad(std::size_t index) {
  const Partition& part = partitions_[index];
  const torch::ScalarType dtype = reduce_dtype(part.dtype);
  const std::uint64_t n = std::max<std::uint64_t>(1, part.numel);
  const auto options = torch::TensorOptions().dtype(dtype).device(torch_device_);
  DeviceGrads& g = device_grads_[index];
  if (g.data != nullptr) return torch::from_blob(g.data, {static_cast<std::int64_t>(n)}, options);
  wait_reductions(n);
  const std::size_t bytes = n * c10::elementSize(dtype);
  const std::string what = "the gradients of unit '" + units_[part.unit].name + "' (" +
                           std::to_string(n) + " elements) until they are reduced";
  auto data = device_->allocate(bytes, what);
  if (!data.is_ok() && data.status().code() == StatusCode::kResourceExhausted) {
    wait_reductions(kAllQueued);
    data = device_->allocate(bytes, what);
  }
  if (!data.is_ok()) fail(data.status());
  g = {*data, bytes};
  waiting_grad_elements_ += n;
  return torch::from_blob(g.data, {static_cast<std::int64_t>(n)}, options).zero_();
}

void EngineImpl::wait_reductions(std::uint64_t room) {
  while (!reductions_.empty() &&
         (room == kAllQueued ||
          waiting_grad_elements_ + room > config_.zero_optimization.reduce_bucket_size)) {
    stall_.begin();
    Status s = reductions_.front().done.get();
    stall_.end();
    ++window_.reduce_waits;
    waiting_grad_elements_ -= reductions_.front().elements;
    reductions_.pop_front();
    if (!s.is_ok()) fail(s);
  }
}

void EngineImpl::reduce_unit(std::size_t unit) {
  UnitRec& u = units_[unit];
  if (u.reduced) return;
  u.reduced = true;
  for (const auto& part : {u.main, u.persistent}) {
    if (!part) continue;
    const std::size_t index = *part;
    // Here, not on the worker: a partition without gradients reduces zeros.
    const std::uint64_t n = static_cast<std::uint64_t>(device_grad(index).numel());
    auto computed = device_->compute_stream().record();  // its gradients are in
    reductions_.push_back(
        {grad_worker_.submit([this, index, computed] { return reduce_partition(index, computed); }),
         n});
  }
}

// On the gradient worker, once the partition's gradients are in on the
// device: their sum over the ranks, of which this rank's shard goes into
// grads_ (the first micro-step of the window overwrites).
Status EngineImpl::reduce_partition(std::size_t index, const Result<gpu::EventPtr>& computed) {
  Partition& part = partitions_[index];
  DeviceGrads& g = device_grads_[index];
  const torch::ScalarType dtype = reduce_dtype(part.dtype);
  ZINF_RETURN_IF_ERROR(computed.status());
  ZINF_RETURN_IF_ERROR((*computed)->synchronize());
  ZINF_RETURN_IF_ERROR(
      wait(grad_comm_->reduce_scatter(g.data, part.numel, comm_dtype(dtype), gpu::ReduceOp::kSum))
          .with_context("reducing the gradients of unit '" + units_[part.unit].name + "'"));
  ZINF_RETURN_IF_ERROR(take_shard(
      part, static_cast<const std::byte*>(g.data) + part.own.begin * c10::elementSize(dtype),
      dtype));
  device_->deallocate(g.data, g.bytes);
  g = {};
  return Status::ok();
}

// The shard leaves the device through the pinned buffers, two pieces in
// flight, each added into grads_ as it lands.
Status EngineImpl::take_shard(Partition& part, const std::byte* shard, torch::ScalarType dtype) {
  struct InFlight {
    Lease lease;
    Result<gpu::EventPtr> left;
    std::uint64_t offset, bytes;
  };
  const std::size_t elem = c10::elementSize(dtype);
  const std::uint64_t total = part.own.count * elem;
  const std::uint64_t step = grad_pool_->buffer_bytes() / elem * elem;
  const bool overwrite = !part.reduced;
  float* dest = grads_.as<float>() + part.own_flat;
  std::deque<InFlight> flight;
  Status first;
  auto land = [&] {
    InFlight& f = flight.front();
    Status s = f.left.is_ok() ? (*f.left)->synchronize() : f.left.status();
    if (s.is_ok() && first.is_ok()) {
      s = grad_executor_->accumulate(f.lease.data(), cpu_dtype(dtype), dest + f.offset / elem,
                                     f.bytes / elem, overwrite);
    }
    if (first.is_ok()) first = s;
    flight.pop_front();
  };
  for (std::uint64_t off = 0; off < total && first.is_ok(); off += step) {
    if (flight.size() == 2) land();
    const std::uint64_t len = std::min(step, total - off);
    Lease lease = grad_pool_->acquire();
    Status s = d2h_->copy_to_host(lease.data(), shard + off, len, units_[part.unit].name);
    flight.push_back(
        {std::move(lease), s.is_ok() ? d2h_->record() : Result<gpu::EventPtr>(s), off, len});
    window_.d2h_bytes += len;
  }
  while (!flight.empty()) land();
  if (first.is_ok()) part.reduced = true;
  return first;
}

namespace {

Status status_of(const std::exception& e) {
  if (const auto* z = dynamic_cast<const Error*>(&e)) return z->status();
  if (auto budget = take_charge_failure()) return *budget;
  if (const auto* c = dynamic_cast<const c10::Error*>(&e))
    return Status::invalid_argument(std::string("LibTorch: ") + c->what_without_backtrace());
  return Status::internal(e.what());
}

}  // namespace

void EngineImpl::backward(const torch::Tensor& loss) {
  if (phase_ != Phase::kAfterForward) {
    fail(Status::failed_precondition(
        "backward() needs a forward through the engine first (engine(x), with gradients on)"));
  }
  try {
    const double factor = scaler_.scale() / static_cast<double>(gas_);
    const torch::Tensor scaled = factor != 1.0 ? loss * factor : loss;
    scaled.backward();
    end_backward_span();
    if (partitioned_grads_) {
      for (std::size_t u = 0; u < units_.size(); ++u) reduce_unit(u);  // the rest, in unit order
    }
    throw_if_error(drain_grads());
  } catch (const std::exception& e) {
    abort_micro_step(/*drop_window=*/true);
    fail(status_of(e).with_context(
        "backward failed (the gradients of this accumulation window were dropped; parameters "
        "and optimizer state are unchanged)"));
  }
  end_micro_step(/*completed=*/true);
  ++micro_steps_;
}

Status EngineImpl::drain_grads() {
  Status first;
  auto keep = [&first](Status s) {
    if (first.is_ok() && !s.is_ok()) first = std::move(s);
  };
  for (auto& job : grad_jobs_) keep(job.get());
  grad_jobs_.clear();
  for (Reduction& r : reductions_) {
    keep(r.done.get());
    waiting_grad_elements_ -= r.elements;
  }
  reductions_.clear();
  return first;
}

void EngineImpl::take_busy(SteadyClock::time_point from, SteadyClock::time_point to) {
  auto h2d = h2d_->take_busy();
  auto d2h = d2h_->take_busy();
  std::vector<std::pair<gpu::Stream*, std::vector<Span>>> copies;
  if (trace_) {
    for (gpu::Stream* stream : copy_streams()) copies.emplace_back(stream, stream->take_spans());
  }
  auto stall = stall_.take();
  in_backward_.reset();  // a failed backward's (the next begin_span() drops it)
  swap::SwapBusy param_io;
  if (store_ && store_->nvme) param_io = store_->nvme->take_busy();
  const std::vector<Interval>& reads = param_io.reads;
  if (from == to) return;
  const double wall = seconds(from, to);
  const double stalled = union_seconds(clip(stall, from, to));
  window_.fwd_bwd_s += wall;
  window_.stall_s += stalled;
  window_.compute_s += wall - stalled;
  window_.h2d_s += union_seconds(clip(h2d, from, to));
  window_.d2h_s += union_seconds(clip(d2h, from, to));
  window_.param_read_s += union_seconds(clip(reads, from, to));
  if (trace_) {
    const std::uint64_t step = global_steps_ + 1;
    const std::vector<Interval> stalls = merged(clip(stall, from, to));
    trace_->spans(Trace::kForwardBackward, {{from, to}}, step);
    trace_->spans(Trace::kCompute, subtract({{from, to}}, stalls), step);
    trace_->spans(Trace::kStall, stalls, step);
    trace_->spans(Trace::kH2d, merged(clip(h2d, from, to)), step);
    trace_->spans(Trace::kD2h, merged(clip(d2h, from, to)), step);
    trace_->spans(Trace::kParamReads, merged(clip(reads, from, to)), step);
    trace_param_transfers(param_io.transfers, step);
    trace_lanes("parameters", param_io.lanes, from, to, step);
    for (const auto& [stream, spans] : copies) {
      for (const Span& c : spans) {
        if (c.op.empty()) {
          trace_->transfer({"copies: " + stream->name(), c.what, "copy", c.bytes, c.when}, step);
        } else {  // a unit's forward or backward, on the compute stream
          trace_->transfer({"compute: units", c.what, c.op, 0, c.when}, step);
        }
      }
    }
    trace_->ops(ops_->take(), {from, to}, step);
    trace_->counter("pinned bytes in use", to, static_cast<double>(pinned_in_use()));
  }
  if (store_ && store_->nvme)
    window_.nvme_read_bytes += store_->nvme->stats().bytes_read - window_.store_read_bytes;
  ++window_.micro_steps;
}

void EngineImpl::end_micro_step(bool completed) {
  const Status settled = coordinator_->end_micro_step(completed);
  for (UnitRec& u : units_) {
    u.expected_grads = u.received_grads = 0;
    u.reduced = false;
  }
  charge_.reset();
  running_.reset();
  phase_ = Phase::kIdle;
  const auto now = SteadyClock::now();
  take_busy(completed ? window_.micro_begin : now, now);
  if (!settled.is_ok()) fail(settled.with_context("completing the micro-step's gathers"));
}

void EngineImpl::abort_micro_step(bool drop_window) {
  for (UnitRec& u : units_) {
    if (u.gather.fetched.valid()) (void)u.gather.fetched.get();
  }
  if (coordinator_) (void)coordinator_->end_micro_step(/*whole=*/false);
  (void)drain_grads();
  for (UnitRec& u : units_) {
    u.expected_grads = u.received_grads = 0;
    u.reduced = false;
  }
  auto computed = device_->compute_stream().record();  // done with what it added into them
  for (DeviceGrads& g : device_grads_) {
    if (g.data == nullptr) continue;
    device_->deallocate(g.data, g.bytes, computed.is_ok() ? *computed : nullptr);
    g = {};
  }
  waiting_grad_elements_ = 0;
  for (Param& p : params_) {
    if (p.storage.param().grad().defined()) p.storage.param().mutable_grad().reset();
  }
  charge_.reset();
  running_.reset();
  phase_ = Phase::kIdle;
  if (drop_window) zero_window();
}

void EngineImpl::zero_window() {
  for (Param& p : params_) p.has_grad = false;
  for (Partition& part : partitions_) part.reduced = false;
  micro_steps_ = 0;
  window_.open = false;
}

// ---------------------------------------------------------------------------
// The step

// Puts parameter values into their partitions' homes as the optimizer's
// pieces come, in order: cpu partitions in place; nvme and resident ones
// through a pinned buffer that is written back (to NVMe, or copied to the
// device) when the partition is complete, with several write-backs in
// flight.
class EngineImpl::HomeWriter {
 public:
  explicit HomeWriter(EngineImpl& engine) : e_(engine) {}
  ~HomeWriter() { (void)finish(); }

  // Where the element at `offset` of partition `index`'s home goes.
  Result<std::byte*> dest(std::size_t index, std::uint64_t offset) {
    const Partition& part = e_.partitions_[index];
    const std::size_t elem = c10::elementSize(part.dtype);
    if (part.home == Home::kHost) return part.host + offset * elem;
    if (current_ != index) {
      for (;;) {
        if (auto lease = e_.param_pool_->try_acquire()) {
          lease_ = std::make_shared<Lease>(std::move(*lease));
          break;
        }
        if (pending_.empty() && e_.param_pool_->retired() > 0) {  // the kernel returns one
          lease_ = std::make_shared<Lease>(e_.param_pool_->acquire());
          break;
        }
        ZINF_RETURN_IF_ERROR(retire_oldest());
      }
      current_ = index;
    }
    return lease_->data() + offset * elem;
  }

  // The partition's last piece has been written.
  Status finish_partition(std::size_t index) {
    const Partition& part = e_.partitions_[index];
    if (part.home == Home::kHost) return Status::ok();
    Pending p;
    p.lease = std::move(lease_);
    p.partition = index;
    current_ = kNone;
    if (part.home == Home::kNvme) {
      ZINF_ASSIGN_OR_RETURN(auto ticket,
                            e_.store_->nvme->write(part.key, {p.lease->data(), part.home_bytes}));
      p.ticket = ticket;
    } else {  // on the device: this rank's elements (the others' arrive by gather_resident()
              // for a resident partition, by the next gather for a shard)
      const std::size_t at = (part.own.begin - part.home_begin) * c10::elementSize(part.dtype);
      ZINF_RETURN_IF_ERROR(e_.h2d_->copy_to_device(
          static_cast<std::byte*>(part.device) + at, p.lease->data() + at,
          part.own.count * c10::elementSize(part.dtype), e_.units_[part.unit].name));
      ZINF_ASSIGN_OR_RETURN(p.event, e_.h2d_->record());
    }
    pending_.push_back(std::move(p));
    return Status::ok();
  }

  // Waits for every write-back; the first error.
  Status finish() {
    Status first;
    while (!pending_.empty()) {
      Status s = retire_oldest();
      if (first.is_ok() && !s.is_ok()) first = std::move(s);
    }
    lease_.reset();
    current_ = kNone;
    return first;
  }

  double waited_s() const { return union_seconds(waits_); }
  const std::vector<Interval>& waits() const { return waits_; }

 private:
  struct Pending {
    std::shared_ptr<Lease> lease;
    std::size_t partition = 0;
    std::optional<swap::SwapTicket> ticket;
    gpu::EventPtr event;
  };
  static constexpr std::size_t kNone = ~std::size_t{0};

  Status retire_oldest() {
    if (pending_.empty()) {
      return Status::internal(
          "no write-back buffer free and none in flight (offload_param "
          "buffer_count too low?)");
    }
    const auto t0 = SteadyClock::now();
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    Status s = p.ticket ? e_.store_->nvme->wait(*p.ticket) : p.event->synchronize();
    waits_.push_back({t0, SteadyClock::now()});
    if (s.is_ok()) return s;
    return s.with_context("writing back the updated parameters of partition '" +
                          e_.partitions_[p.partition].key + "'");
  }

  EngineImpl& e_;
  std::size_t current_ = kNone;
  std::shared_ptr<Lease> lease_;
  std::deque<Pending> pending_;
  std::vector<Interval> waits_;  // retire_oldest()'s, one after another
};

// Stage 1: the window's gradients were accumulated whole on every rank;
// each partition's sum over the ranks, for this rank's shard.
Status EngineImpl::reduce_for_step() {
  Issued issued;
  for (const Partition& part : partitions_) {
    issued.emplace_back("reducing the gradients of unit '" + units_[part.unit].name + "'",
                        host_comm_->reduce_scatter(grads_.as<float>() + part.flat, part.numel,
                                                   gpu::CommDtype::kF32, gpu::ReduceOp::kSum));
  }
  return wait_all(std::move(issued));
}

// Resident partitions (stages 1-2, and every stage's persistent ones): each
// rank updated its shard on its device; every rank's, onto every device.
Status EngineImpl::gather_resident() {
  if (world_size_ == 1) return Status::ok();
  Issued issued;
  for (const Partition& part : partitions_) {
    if (part.home != Home::kDevice) continue;
    issued.emplace_back("gathering the updated parameters of unit '" + units_[part.unit].name + "'",
                        param_comm_->all_gather(part.device, part.numel, comm_dtype(part.dtype)));
  }
  return wait_all(std::move(issued));
}

std::uint64_t EngineImpl::home_offset(const Param& p, const Segment& seg) const {
  return p.offset + p.own_begin + seg.item_offset - partitions_[p.partition].home_begin;
}

Status EngineImpl::update(float clip, StepStats& stats) {
  HomeWriter writer(*this);
  auto fn = [&](Piece& piece) -> Status {
    for (const Segment& seg : segments(piece)) {
      Param& p = params_[seg.item];
      const Partition& part = partitions_[p.partition];
      float* master = piece.state[0] + seg.piece_offset;
      ZINF_ASSIGN_OR_RETURN(std::byte * out, writer.dest(p.partition, home_offset(p, seg)));
      if (!p.has_grad) {  // unchanged, like LibTorch's optimizers skip a parameter without grad
        ZINF_RETURN_IF_ERROR(executor_->convert(master, out, part.cdtype, seg.length));
        continue;
      }
      ca::Buffers b;
      b.params = master;
      b.param_dtype = ca::Dtype::kF32;
      b.grads = grads_.as<float>() + p.grad_at + seg.item_offset;
      b.grad_dtype = ca::Dtype::kF32;
      float* s1 = piece.state[1] + seg.piece_offset;
      float* s2 = num_states_ > 2 ? piece.state[2] + seg.piece_offset : nullptr;
      b.exp_avg = hyper_.algorithm == ca::Algorithm::kAdagrad ? nullptr : s1;
      b.exp_avg_sq = hyper_.algorithm == ca::Algorithm::kAdagrad ? s1 : s2;
      b.state_dtype = ca::Dtype::kF32;
      b.copy_out = out;
      b.copy_dtype = part.cdtype;
      b.count = seg.length;
      Status s = executor_->step(hyper_, p.step + 1, b, clip);
      if (!s.is_ok()) return s.with_context("parameter '" + p.name + "'");
    }
    const std::size_t part = group_partition_[piece.group];
    if (piece.ends_group && partitions_[part].last_group == piece.group)
      ZINF_RETURN_IF_ERROR(writer.finish_partition(part));
    // Every write-back lands before the tier commits the new state.
    if (piece.index + 1 == pieces_) return writer.finish();
    return Status::ok();
  };
  Status s = tier_->update(fn, stats);
  Status w = writer.finish();
  stats.compute_s -= writer.waited_s();
  stats.compute_periods = subtract(stats.compute_periods, writer.waits());
  return s.is_ok() ? w : s;
}

Status EngineImpl::write_homes(HomeWriter& writer, const Piece& piece) {
  for (const Segment& seg : segments(piece)) {
    const Param& p = params_[seg.item];
    ZINF_ASSIGN_OR_RETURN(std::byte * out, writer.dest(p.partition, home_offset(p, seg)));
    ZINF_RETURN_IF_ERROR(executor_->convert(piece.state[0] + seg.piece_offset, out,
                                            partitions_[p.partition].cdtype, seg.length));
  }
  const std::size_t part = group_partition_[piece.group];
  if (piece.ends_group && partitions_[part].last_group == piece.group)
    return writer.finish_partition(part);
  return Status::ok();
}

Status EngineImpl::restore_homes() {
  HomeWriter writer(*this);
  Status s = tier_->read([&](Piece& piece) { return write_homes(writer, piece); });
  Status w = writer.finish();
  return s.is_ok() ? w : s;
}

Status EngineImpl::overwrite_state(const PieceFn& fill, bool all_or_nothing, bool& filled) {
  Status s;
  filled = false;
  {
    HomeWriter writer(*this);
    StepStats stats;
    const PieceFn piece_fn = [&](Piece& piece) -> Status {
      filled = true;
      ZINF_RETURN_IF_ERROR(fill(piece));
      ZINF_RETURN_IF_ERROR(write_homes(writer, piece));
      // Every write-back lands before the tier commits the new state.
      return piece.index + 1 == pieces_ ? writer.finish() : Status::ok();
    };
    s = all_or_nothing ? tier_->replace(piece_fn, stats) : tier_->overwrite(piece_fn, stats);
    Status w = writer.finish();
    if (s.is_ok()) s = w;
  }
  if (s.is_ok() || !filled || !(all_or_nothing || tier_->atomic())) return s;
  // The tier kept the old state: so do the parameters.
  Status restored = restore_homes();
  if (!restored.is_ok()) {
    broken_ = true;
    return Status(s.code(), s.message() +
                                "; restoring the parameters from the state as it was "
                                "also failed (" +
                                restored.message() + "): rebuild the engine");
  }
  return s;
}

void EngineImpl::step() {
  if (phase_ != Phase::kIdle)
    fail(Status::failed_precondition("step() called inside a forward or backward"));
  if (broken_) {
    fail(Status::failed_precondition(
        "the engine could not restore its parameters after a failed step; rebuild it"));
  }
  if (micro_steps_ < gas_) return;  // not an accumulation boundary
  const auto t0 = SteadyClock::now();
  StepReport r;
  r.micro_steps = window_.micro_steps;
  r.lr = hyper_.lr;
  if (world_size_ > 1 && !partitioned_grads_) throw_if_error(reduce_for_step());
  // [squared norm, non-finite count] of this rank's gradients, then over the ranks'.
  double norm[2] = {0, 0};
  for (const Param& p : params_) {
    if (!p.has_grad || p.own_count == 0) continue;
    auto stats =
        executor_->grad_stats(grads_.as<float>() + p.grad_at, ca::Dtype::kF32, p.own_count);
    throw_if_error(stats.status());
    norm[0] += stats->sq_norm;
    norm[1] += stats->finite ? 0 : 1;
  }
  if (host_comm_) {
    throw_if_error(host_comm_->all_reduce_now(norm, 2, gpu::CommDtype::kF64, gpu::ReduceOp::kSum)
                       .with_context("step " + std::to_string(global_steps_ + 1) +
                                     ": the gradient norm over the ranks"));
  }
  const double sq = norm[0];
  const bool finite = norm[1] == 0 && std::isfinite(sq);
  // The ranks' gradients are summed; the step uses their mean (DeepSpeed's
  // data-parallel average), folded into the kernel's multiplier.
  const double divisor = scaler_.scale() * world_size_;
  r.loss_scale = scaler_.scale();
  (void)tier_->take_io();
  if (trace_) (void)executor_->take_thread_busy();  // a checkpoint's conversions, say
  std::uint64_t param_written = 0;
  if (store_ && store_->nvme) {
    (void)store_->nvme->take_busy();
    param_written = store_->nvme->stats().bytes_written;
  }
  StepStats st;
  if (!finite) {
    // DeepSpeed's overflow: no update, no norm, no scheduler step; the loss
    // scale goes down (or the hysteresis), and the window starts again.
    Status lowered = scaler_.update(/*overflow=*/true);
    if (!lowered.is_ok()) {
      zero_window();
      fail(lowered.with_context("step " + std::to_string(global_steps_ + 1)));
    }
    r.skipped = true;
    ++skipped_steps_;
    const std::string why = "step " + std::to_string(global_steps_ + 1) +
                            ": a gradient is inf or nan; step skipped (" +
                            std::to_string(skipped_steps_) + " so far)";
    if (scaler_.dynamic()) {
      ZINF_LOG(kInfo) << why << ", loss scale now " << scaler_.scale();  // expected in fp16
    } else {
      ZINF_LOG(kWarn) << why;
    }
  } else {
    // The norm of the unscaled gradients; clipping as DeepSpeed's (and
    // torch's clip_grad_norm_): min(1, clip / (norm + 1e-6)), fused with the
    // unscale into the kernel's gradient multiplier. Unlike DeepSpeed, the
    // gradients are unscaled by the scale their backward used, also on a
    // step after which the scale doubles (DeepSpeed divides those by the
    // doubled scale).
    r.grad_norm = std::sqrt(sq) / divisor;
    const double max_norm = config_.gradient_clipping;
    const double clip = max_norm > 0 ? std::min(1.0, max_norm / (r.grad_norm + 1e-6)) : 1.0;
    const auto coefficient = static_cast<float>(clip / divisor);
    auto computed = device_->compute_stream().record();
    if (computed.is_ok()) (void)h2d_->wait(*computed);  // resident parameters are free to write
    Status s = update(coefficient, st);
    if (!s.is_ok()) {
      Status restored = restore_homes();
      if (!restored.is_ok()) {
        broken_ = true;
        fail(
            s.with_context("step failed, and rewriting the parameters from the previous "
                           "optimizer state failed too (" +
                           restored.to_string() + "); the engine cannot continue"));
      }
      fail(s.with_context(
          tier_->atomic()
              ? "step failed; parameters and optimizer state are as before it (the gradients "
                "are kept, so step() may be called again)"
              : "step failed partway: offload_optimizer cpu updates in place, so the "
                "sub-groups before the failure hold this step, and the parameters were "
                "rewritten to match them (the gradients are kept)"));
    }
    if (Status g = gather_resident(); !g.is_ok()) {
      broken_ = true;
      fail(g.with_context(
          "step " + std::to_string(global_steps_ + 1) +
          ": the update was applied but the ranks could not exchange it, so their parameters "
          "differ; the engine cannot continue (resume from a checkpoint)"));
    }
    for (Param& p : params_) {
      if (p.has_grad) ++p.step;
    }
    (void)scaler_.update(/*overflow=*/false);  // a clean step cannot fail
    if (schedule_) {
      ++schedule_t_;
      apply_schedule();
    }
  }
  const auto t1 = SteadyClock::now();
  TierIo tier_io = tier_->take_io();
  std::vector<Interval>& io = tier_io.busy;
  swap::SwapBusy param_io;
  if (store_ && store_->nvme) {
    param_io = store_->nvme->take_busy();
    io.insert(io.end(), param_io.writes.begin(), param_io.writes.end());
    param_written = store_->nvme->stats().bytes_written - param_written;
  }
  ++global_steps_;
  r.step = global_steps_;
  r.fwd_bwd_s = window_.fwd_bwd_s;
  r.compute_s = window_.compute_s;
  r.param_read_s = window_.param_read_s;
  r.h2d_s = window_.h2d_s;
  r.d2h_s = window_.d2h_s;
  r.stall_s = window_.stall_s;
  r.reduce_waits = window_.reduce_waits;
  r.step_s = seconds(t0, t1);
  r.cpu_adam_s = st.compute_s;
  r.optim_io_s = union_seconds(clip(io, t0, t1));
  r.param_read_bytes = window_.nvme_read_bytes;
  r.param_write_bytes = param_written;
  r.optim_read_bytes = st.bytes_read;
  r.optim_write_bytes = st.bytes_written;
  r.nvme_read_bytes = r.param_read_bytes + r.optim_read_bytes;
  r.nvme_write_bytes = r.param_write_bytes + r.optim_write_bytes;
  r.h2d_bytes = window_.h2d_bytes;
  r.d2h_bytes = window_.d2h_bytes;
  r.wall_s = seconds(window_.open ? window_.begin : t0, t1);
  std::vector<Interval> comm;
  for (gpu::Communicator* c : channels()) {
    auto busy = c->take_busy();
    comm.insert(comm.end(), busy.begin(), busy.end());
    r.comm_bytes += c->stats().bytes;
  }
  r.comm_s = union_seconds(clip(comm, window_.open ? window_.begin : t0, t1));
  if (trace_) {
    trace_->spans(Trace::kStep, {{t0, t1}}, r.step);
    trace_->ops(ops_->take(), {t0, t1}, r.step);
    trace_->spans(Trace::kOptimizerIo, merged(clip(io, t0, t1)), r.step);
    trace_->spans(Trace::kComm, merged(clip(comm, window_.open ? window_.begin : t0, t1)), r.step);
    trace_->spans(Trace::kCpuAdam, st.compute_periods, r.step);
    const auto threads = executor_->take_thread_busy();
    for (std::size_t k = 0; k < threads.size(); ++k) {
      trace_->named_spans("cpu adam thread " + std::to_string(k), merged(clip(threads[k], t0, t1)),
                          r.step);
    }
    trace_lanes("optimizer", tier_io.lanes, t0, t1, r.step);
    trace_lanes("parameters", param_io.lanes, t0, t1, r.step);
    for (const TierTransfer& t : tier_io.transfers) {
      trace_->transfer(
          {"optimizer state", "piece " + std::to_string(t.piece) + " " + t.state,
           t.read ? "read" : "write", t.bytes, t.when, static_cast<std::int64_t>(t.group)},
          r.step);
    }
    trace_param_transfers(param_io.transfers, r.step);
    for (gpu::Communicator* c : channels()) {
      for (const Span& x : c->take_spans()) {
        if (x.when.begin < (window_.open ? window_.begin : t0)) continue;  // before the window
        trace_->transfer({"collectives: " + c->name(), x.what, x.what, x.bytes, x.when}, r.step);
      }
    }
    trace_->counter("device bytes", t1, static_cast<double>(device_->memory().live));
    trace_->counter("pinned bytes in use", t1, static_cast<double>(pinned_in_use()));
    trace_->counter("loss scale", t1, r.loss_scale);
  }
  r.comm_bytes -= comm_bytes_;
  report_ = r;
  zero_window();
  const auto every = config_.steps_per_print;
  if (every && global_steps_ % *every == 0) {  // DeepSpeed's progress line
    ZINF_LOG(kInfo) << "step=" << global_steps_ << ", skipped=" << skipped_steps_ << ", lr=" << r.lr
                    << ", loss_scale=" << r.loss_scale << ", grad_norm=" << r.grad_norm;
  }
}

torch::OrderedDict<std::string, torch::Tensor> EngineImpl::consolidated_parameters() const {
  std::unordered_map<const c10::TensorImpl*, std::size_t> index;
  for (std::size_t k = 0; k < params_.size(); ++k)
    index.emplace(params_[k].storage.param().unsafeGetTensorImpl(), k);
  std::vector<torch::Tensor> values(params_.size());
  for (const Partition& part : partitions_) {
    auto buffer = AlignedBuffer::allocate(std::max<std::uint64_t>(1, part.bytes));
    throw_if_error(buffer.status());
    const std::size_t elem = c10::elementSize(part.dtype);
    if (part.home_bytes == part.bytes) {
      throw_if_error(read_partition(part, buffer->data()));
    } else {  // this rank's shard (read aligned, for O_DIRECT), then the others' from their ranks
      auto shard = AlignedBuffer::allocate(std::max<std::uint64_t>(1, part.home_bytes));
      throw_if_error(shard.status());
      throw_if_error(read_partition(part, shard->data()));
      std::memcpy(buffer->data() + part.home_begin * elem, shard->data(), part.home_bytes);
      throw_if_error(
          wait(host_comm_->all_gather(buffer->data(), part.numel, comm_dtype(part.dtype)))
              .with_context("consolidating the parameters"));
    }
    for (std::size_t k : part.params) {
      const Param& p = params_[k];
      values[k] = torch::from_blob(buffer->data() + p.offset * elem, p.storage.shape(),
                                   torch::dtype(part.dtype))
                      .clone();
    }
  }
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& item : model_->named_parameters(/*recurse=*/true)) {
    auto it = index.find(item.value().unsafeGetTensorImpl());
    if (it != index.end() && !out.contains(item.key())) out.insert(item.key(), values[it->second]);
  }
  return out;
}

}  // namespace zinf::offload

// ---------------------------------------------------------------------------
// The public surface

namespace zinf {

int set_host_compute_threads(int threads) { return offload::set_compute_threads(threads); }

JobPlace job_place() {
  auto launch = gpu::launch_from_env();
  throw_if_error(launch.status());
  return {launch->rank, launch->world_size};
}

namespace detail {

UnitCall::UnitCall(torch::nn::Module& module) {
  auto& registry = UnitRegistry::instance();
  UnitEntry* entry = nullptr;
  bool partitioned = false;
  {
    std::lock_guard lock(registry.mutex());
    entry = registry.find(&module);
    if (entry == nullptr) return;
    partitioned = entry->stored && entry->stored->plan.numel > 0;
  }
  if (entry->engine == nullptr) {
    if (partitioned) {
      throw Error(Status::failed_precondition(
          "a zinf::Unit partitioned by a PartitionScope ran with no Engine owning it: build the "
          "Engine from the model first"));
    }
    return;
  }
  entry->engine->unit_begin(entry->index);
  unit_ = entry;
}

UnitCall::~UnitCall() {
  if (unit_ == nullptr || finished_) return;
  auto* entry = static_cast<UnitEntry*>(unit_);
  entry->engine->unit_abort(entry->index);
}

bool UnitCall::checkpointed() const {
  return unit_ != nullptr && static_cast<UnitEntry*>(unit_)->engine->checkpoints();
}

std::vector<torch::Tensor> UnitCall::checkpoint(FlatForward forward,
                                                std::vector<torch::Tensor> inputs) {
  auto* entry = static_cast<UnitEntry*>(unit_);
  return entry->engine->checkpoint(entry->index, std::move(forward), std::move(inputs));
}

void UnitCall::refuse_checkpoint() const {
  if (!checkpointed()) return;
  auto* entry = static_cast<UnitEntry*>(unit_);
  throw Error(Status::invalid_argument(
      "unit '" + entry->engine->unit_name(entry->index) +
      "' takes arguments other than tensors, so zinf.checkpoint_units cannot replay its "
      "forward from saved inputs"));
}

std::vector<torch::Tensor> UnitCall::hand_over(std::vector<torch::Tensor> out) {
  if (unit_ == nullptr) return out;
  finished_ = true;
  auto* entry = static_cast<UnitEntry*>(unit_);
  return entry->engine->unit_end(entry->index, std::move(out));
}

}  // namespace detail

EngineBase::EngineBase(std::shared_ptr<torch::nn::Module> model, const Config& config,
                       EngineOptions options)
    : impl_(std::make_unique<offload::EngineImpl>(std::move(model), config, std::move(options))) {}
EngineBase::~EngineBase() = default;

void EngineBase::backward(const torch::Tensor& loss) { impl_->backward(loss); }
void EngineBase::step() { impl_->step(); }
bool EngineBase::is_gradient_accumulation_boundary() const { return impl_->boundary(); }
void EngineBase::save_checkpoint(const std::filesystem::path& dir, const std::string& tag) {
  impl_->save_checkpoint(dir, tag);
}
void EngineBase::load_checkpoint(const std::filesystem::path& dir, const std::string& tag) {
  impl_->load_checkpoint(dir, tag);
}
torch::Device EngineBase::device() const { return impl_->torch_device(); }
int EngineBase::rank() const { return impl_->rank(); }
double EngineBase::mean_over_ranks(double value) { return impl_->mean_over_ranks(value); }
int EngineBase::world_size() const { return impl_->world_size(); }
const Config& EngineBase::config() const { return impl_->config(); }
std::uint64_t EngineBase::global_steps() const { return impl_->global_steps(); }
std::uint64_t EngineBase::skipped_steps() const { return impl_->skipped_steps(); }
const StepReport& EngineBase::last_step_report() const { return impl_->report(); }
CoordinatorStats EngineBase::coordinator_stats() const { return impl_->coordinator_stats(); }
MemoryReport EngineBase::memory_report() const { return impl_->memory_report(); }
void EngineBase::reset_peak_memory() { impl_->reset_peak_memory(); }
torch::OrderedDict<std::string, torch::Tensor> EngineBase::consolidated_parameters() const {
  return impl_->consolidated_parameters();
}
void EngineBase::begin_forward() { impl_->begin_forward(); }
std::vector<torch::Tensor> EngineBase::end_forward(std::vector<torch::Tensor> outputs) {
  return impl_->end_forward(std::move(outputs));
}
void EngineBase::fail_forward(const std::exception& error) { impl_->fail_forward(error); }

}  // namespace zinf
