// Device selection and the budget account both implementations share.
#include <algorithm>

#include "gpu/devices.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::gpu {

std::string_view to_string(DeviceType type) { return type == DeviceType::kCuda ? "cuda" : "cpu"; }

std::size_t allocation_bytes(DeviceType type, std::size_t bytes) {
  const std::size_t granularity = type == DeviceType::kCuda ? 512 : 256;
  return align_up(std::max<std::size_t>(bytes, 1), granularity);
}

Status MemoryAccount::reserve(std::uint64_t bytes, std::string_view what) {
  std::lock_guard lock(mutex_);
  if (bytes > stats_.budget - std::min(stats_.budget, stats_.live)) {
    return Status::resource_exhausted(
        "device " + device_ + ": cannot allocate " + format_bytes(bytes) + " for " +
        std::string(what) + ": the budget is " + format_bytes(stats_.budget) + " and " +
        format_bytes(stats_.live) + " is live in " + std::to_string(stats_.allocations) +
        " allocations (raise zinf.device_budget / --device-budget, or offload more: "
        "zero_optimization.offload_param, stage3_max_live_parameters)");
  }
  stats_.live += bytes;
  ++stats_.allocations;
  stats_.peak = std::max(stats_.peak, stats_.live);
  return Status::ok();
}

void MemoryAccount::release(std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  stats_.live -= std::min(stats_.live, bytes);
  if (stats_.allocations > 0) --stats_.allocations;
}

MemoryStats MemoryAccount::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void MemoryAccount::reset_peak() {
  std::lock_guard lock(mutex_);
  stats_.peak = stats_.live;
}

Status Device::cuda_available() { return probe_cuda(); }

Result<std::unique_ptr<Device>> Device::create(const DeviceOptions& options) {
  if (options.type == "cpu") return make_cpu_device(options);
  if (options.type == "cuda") {
    Status cuda = probe_cuda();
    if (!cuda.is_ok()) return cuda.with_context("zinf.device \"cuda\"");
    return make_cuda_device(options);
  }
  if (options.type != "auto") {
    return Status::invalid_argument("zinf.device must be \"auto\", \"cpu\" or \"cuda\", got \"" +
                                    options.type + "\"");
  }
  Status cuda = probe_cuda();
  if (cuda.is_ok()) return make_cuda_device(options);
  ZINF_LOG(kInfo) << "device: cpu (host-emulated), because " << cuda.message();
  return make_cpu_device(options);
}

#ifndef ZINF_HAVE_CUDA
Status probe_cuda() {
  return Status::unavailable("zinf was built without CUDA (no CUDA toolkit at configure time)");
}

Result<std::unique_ptr<Device>> make_cuda_device(const DeviceOptions&) { return probe_cuda(); }
#endif

}  // namespace zinf::gpu
