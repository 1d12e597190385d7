// Where the engine meets LibTorch's internals (private to zinf::offload):
//
//  - Parameter storage that survives release. A parameter keeps one
//    StorageImpl for its whole life; gathering points that storage at the
//    device copy, releasing points it at nothing and gives the parameter an
//    empty placeholder. Autograd's saved views of a weight (torch::linear
//    saves weight.t()) share the StorageImpl, so they see the re-gathered
//    values in backward instead of keeping the old copy alive.
//  - zinf's CPU allocator, in place of LibTorch's: it charges every
//    allocation made while a ChargeScope is active on the thread to the
//    emulated device, so activations and gradients count against its budget
//    as they would on a GPU, and maps large ones of their own while a
//    MappedAllocations is alive (partitioned construction).
//  - The autograd hooks: PreBackward (identity on a unit's outputs; its
//    backward runs before the unit's) and a post-hook on a parameter's
//    gradient accumulator (its gradient is complete).
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

#include "zinf/gpu/device.hpp"

namespace zinf::offload {

class ParamStorage {
 public:
  ParamStorage() = default;
  // `shape`: the parameter's (it may be released already); `dtype`: what it
  // holds on the device (bf16 when bf16.enabled converts a float parameter).
  ParamStorage(torch::Tensor param, std::vector<std::int64_t> shape, torch::Device device,
               torch::ScalarType dtype);
  // Points the parameter at `data` (bytes of its dtype, on the device).
  void bind(void* data);
  // Gives the parameter an empty placeholder; its storage points nowhere.
  void release();
  bool bound() const { return bound_; }
  const torch::Tensor& param() const { return param_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }

 private:
  torch::Tensor param_;
  torch::Device device_{torch::kCPU};
  torch::ScalarType dtype_ = torch::kFloat;
  std::vector<std::int64_t> shape_;
  std::size_t bytes_ = 0;
  c10::intrusive_ptr<c10::StorageImpl> storage_;
  bool bound_ = false;
};

// What LibTorch CPU allocations are charged to on the emulated device.
// Charged tensors may outlive it (a loss the caller keeps after the engine is
// gone): once it is destroyed their frees uncharge nothing.
class DeviceCharges {
 public:
  explicit DeviceCharges(gpu::Device* device);
  ~DeviceCharges();
  DeviceCharges(const DeviceCharges&) = delete;
  DeviceCharges& operator=(const DeviceCharges&) = delete;

  struct Target;  // defined in torch_glue.cpp

 private:
  friend class ChargeScope;
  Target* target_;
};

// While alive, LibTorch CPU allocations on this thread are charged to
// `charges`. Nests; null charges nothing, also inside an outer scope.
class ChargeScope {
 public:
  explicit ChargeScope(DeviceCharges* charges);
  ~ChargeScope();
  ChargeScope(const ChargeScope&) = delete;
  ChargeScope& operator=(const ChargeScope&) = delete;

 private:
  DeviceCharges::Target* previous_;
};

// LibTorch's intra-op threads and OpenBLAS's (found at run time: Debian's
// LibTorch reaches BLAS through the system's libblas, often OpenBLAS);
// threads <= 0: the cores this process may use, less one, at least one.
int set_compute_threads(int threads);

// The device budget error of the last LibTorch allocation on this thread
// that failed its charge (LibTorch reports it as a c10::Error), if any since
// the last call.
std::optional<Status> take_charge_failure();

// While alive, LibTorch CPU allocations of 64 KiB or more on
// this thread are pages mapped for them alone and unmapped when freed. A
// PartitionScope holds one: building a model frees each unit's tensors as
// soon as it is partitioned, and the small allocations in between would
// otherwise split the freed heap so that the next unit cannot reuse it
// (measured: about 2 MiB more resident per 3 MiB unit).
class MappedAllocations {
 public:
  MappedAllocations();
  ~MappedAllocations();
  MappedAllocations(const MappedAllocations&) = delete;
  MappedAllocations& operator=(const MappedAllocations&) = delete;
};

// Identity on `outputs`; `on_backward(token)` runs when their gradients
// arrive, before the backward of whatever produced them.
using BackwardHook = void (*)(std::int64_t token);
std::vector<torch::Tensor> pre_backward(std::vector<torch::Tensor> outputs, std::int64_t token,
                                        BackwardHook on_backward);

// Calls `on_grad()` after the parameter's gradient accumulator has run in
// the current graph. kAlready: it was hooked in this graph; kNotInGraph: no
// live graph uses the parameter.
enum class Hooked { kAdded, kAlready, kNotInGraph };
Hooked hook_gradient(const torch::Tensor& param, std::function<void()> on_grad);

}  // namespace zinf::offload
