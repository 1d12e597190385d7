#include "offload/torch_glue.hpp"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <dlfcn.h>
#include <sched.h>
#include <sys/mman.h>
#include <torch/csrc/autograd/function_hook.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>

#include "zinf/common/aligned.hpp"

namespace zinf::offload {
namespace {

torch::Tensor tensor_over(c10::intrusive_ptr<c10::StorageImpl> storage, c10::IntArrayRef shape,
                          torch::ScalarType dtype, torch::Device device) {
  const auto keys = c10::DispatchKeySet(c10::computeDispatchKey(dtype, torch::kStrided, device));
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(std::move(storage)), keys,
                                                   caffe2::TypeMeta::fromScalarType(dtype));
  impl->set_sizes_contiguous(shape);
  return torch::Tensor(std::move(impl));
}

c10::intrusive_ptr<c10::StorageImpl> empty_storage(torch::Device device) {
  return c10::make_intrusive<c10::StorageImpl>(c10::StorageImpl::use_byte_size_t(), 0,
                                               c10::DataPtr(nullptr, device), nullptr, false);
}

// --- zinf's CPU allocator ----------------------------------------------------
//
// Installed in place of LibTorch's CPU allocator by the first DeviceCharges
// or MappedAllocations. Every allocation carries a header: the target it was
// charged to (or null), its size, and the length of its own mapping (or 0),
// so that one deleter serves every kind and LibTorch's raw allocations
// (raw_allocate / raw_deallocate, which need the context to be the data
// pointer) work.
struct alignas(64) AllocationHeader {
  DeviceCharges::Target* target;
  std::size_t bytes;
  std::size_t mapped;
};

}  // namespace

// Reference-counted by its owner and by every allocation charged to it.
struct DeviceCharges::Target {
  std::mutex mutex;
  gpu::Device* device;  // null once the owner is gone
  std::atomic<std::int64_t> refs{1};

  void unref() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
};

namespace {

thread_local DeviceCharges::Target* t_charged = nullptr;
thread_local int t_mapped = 0;  // MappedAllocations alive on this thread
thread_local std::optional<Status> t_charge_failure;
constexpr std::size_t kMappedAllocation = 64 << 10;  // what a MappedAllocations maps

void free_allocation(void* data) {
  if (data == nullptr) return;
  auto* header = static_cast<AllocationHeader*>(data) - 1;
  if (DeviceCharges::Target* t = header->target) {
    {
      std::lock_guard lock(t->mutex);
      if (t->device != nullptr) t->device->uncharge(header->bytes);
    }
    t->unref();
  }
  if (header->mapped != 0) {
    ::munmap(header, header->mapped);
  } else {
    c10::free_cpu(header);
  }
}

// A charge that fails throws like a CUDA out-of-memory error, naming the
// budget and what is live.
class ZinfCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) const override {
    DeviceCharges::Target* t = bytes == 0 ? nullptr : t_charged;
    if (t != nullptr) {
      std::lock_guard lock(t->mutex);
      if (t->device != nullptr) {
        Status s = t->device->charge(bytes, "a LibTorch tensor (activations, gradients)");
        if (!s.is_ok()) {
          const std::string message = s.message();
          t_charge_failure = std::move(s);
          TORCH_CHECK(false, message);
        }
      }
      t->refs.fetch_add(1, std::memory_order_relaxed);
    }
    const std::size_t total = sizeof(AllocationHeader) + bytes;
    AllocationHeader* header = nullptr;
    std::size_t mapped = 0;
    if (t_mapped > 0 && bytes >= kMappedAllocation) {
      mapped = align_up(total, kIoAlignment);
      void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        mapped = 0;
      } else {
        header = static_cast<AllocationHeader*>(p);
      }
    }
    if (header == nullptr) header = static_cast<AllocationHeader*>(c10::alloc_cpu(total));
    header->target = t;
    header->bytes = bytes;
    header->mapped = mapped;
    void* data = header + 1;
    return {data, data, &free_allocation, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_allocation; }
  // A pure virtual in newer LibTorch; an ordinary method in 1.13.
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::memcpy(dest, src, count);
  }
};

void install_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    static ZinfCpuAllocator allocator;
    c10::SetCPUAllocator(&allocator, /*priority=*/100);
  });
}

// --- autograd hooks ---------------------------------------------------------

struct PreBackward : torch::autograd::Function<PreBackward> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList outputs, std::int64_t token,
                                                std::int64_t hook) {
    ctx->saved_data["token"] = token;
    ctx->saved_data["hook"] = hook;
    return outputs.vec();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto hook = reinterpret_cast<BackwardHook>(ctx->saved_data["hook"].toInt());
    hook(ctx->saved_data["token"].toInt());
    grads.push_back(torch::Tensor());  // token
    grads.push_back(torch::Tensor());  // hook
    return grads;
  }
};

class GradientReady final : public torch::autograd::FunctionPostHook {
 public:
  explicit GradientReady(std::function<void()> on_grad) : on_grad_(std::move(on_grad)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    on_grad_();
    return outputs;
  }
  static bool is_one(const std::unique_ptr<torch::autograd::FunctionPostHook>& hook) {
    return dynamic_cast<const GradientReady*>(hook.get()) != nullptr;
  }

 private:
  std::function<void()> on_grad_;
};

}  // namespace

ParamStorage::ParamStorage(torch::Tensor param, std::vector<std::int64_t> shape,
                           torch::Device device, torch::ScalarType dtype)
    : param_(std::move(param)),
      device_(device),
      dtype_(dtype),
      shape_(std::move(shape)),
      bytes_(static_cast<std::size_t>(c10::multiply_integers(shape_)) * c10::elementSize(dtype)),
      storage_(empty_storage(device)) {}

void ParamStorage::bind(void* data) {
  storage_->set_data_ptr(c10::DataPtr(data, device_));
  storage_->set_nbytes(bytes_);
  torch::NoGradGuard no_grad;
  param_.set_data(tensor_over(storage_, shape_, dtype_, device_));
  bound_ = true;
}

void ParamStorage::release() {
  torch::NoGradGuard no_grad;
  param_.set_data(tensor_over(empty_storage(device_), {0}, dtype_, device_));
  storage_->set_data_ptr(c10::DataPtr(nullptr, device_));
  storage_->set_nbytes(0);
  bound_ = false;
}

DeviceCharges::DeviceCharges(gpu::Device* device) : target_(new Target) {
  target_->device = device;
  install_allocator();
}

DeviceCharges::~DeviceCharges() {
  {
    std::lock_guard lock(target_->mutex);
    target_->device = nullptr;
  }
  target_->unref();
}

ChargeScope::ChargeScope(DeviceCharges* charges)
    : previous_(std::exchange(t_charged, charges != nullptr ? charges->target_ : nullptr)) {}

ChargeScope::~ChargeScope() { t_charged = previous_; }

int set_compute_threads(int threads) {
  if (threads <= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    const int cores = ::sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    threads = std::max(1, cores - 1);
  }
  torch::set_num_threads(threads);
  using SetThreads = void (*)(int);
  if (auto set_blas =
          reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_blas(threads);
  return threads;
}

std::optional<Status> take_charge_failure() {
  return std::exchange(t_charge_failure, std::nullopt);
}

MappedAllocations::MappedAllocations() {
  install_allocator();
  ++t_mapped;
}

MappedAllocations::~MappedAllocations() { --t_mapped; }

std::vector<torch::Tensor> pre_backward(std::vector<torch::Tensor> outputs, std::int64_t token,
                                        BackwardHook on_backward) {
  std::vector<std::size_t> which;
  torch::autograd::variable_list grad_outputs;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].defined() && outputs[i].requires_grad()) {
      which.push_back(i);
      grad_outputs.push_back(outputs[i]);
    }
  }
  if (which.empty()) return outputs;
  // As a TensorList: autograd only sees tensors passed as Tensor or TensorList.
  auto wrapped = PreBackward::apply(at::TensorList(grad_outputs), token,
                                    reinterpret_cast<std::int64_t>(on_backward));
  for (std::size_t k = 0; k < which.size(); ++k) outputs[which[k]] = wrapped[k];
  return outputs;
}

Hooked hook_gradient(const torch::Tensor& param, std::function<void()> on_grad) {
  auto accumulator = torch::autograd::impl::try_get_grad_accumulator(param);
  if (!accumulator) return Hooked::kNotInGraph;
  for (const auto& hook : accumulator->post_hooks()) {
    if (GradientReady::is_one(hook)) return Hooked::kAlready;
  }
  accumulator->add_post_hook(std::make_unique<GradientReady>(std::move(on_grad)));
  return Hooked::kAdded;
}

}  // namespace zinf::offload
