// The Device implementations and what they share (private to zinf::gpu).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "zinf/gpu/device.hpp"

namespace zinf::gpu {

// A device's budget: everything allocated or charged, against one limit.
class MemoryAccount {
 public:
  MemoryAccount(std::string device, std::uint64_t budget) : device_(std::move(device)) {
    stats_.budget = budget;
  }
  // Counts `bytes` or, if that would pass the budget, fails naming the
  // budget, what is live and the request.
  Status reserve(std::uint64_t bytes, std::string_view what);
  void release(std::uint64_t bytes);
  MemoryStats stats() const;
  void reset_peak();

 private:
  const std::string device_;
  mutable std::mutex mutex_;
  MemoryStats stats_;
};

// What both devices share: the account behind charge() and the statistics.
class AccountedDevice : public Device {
 public:
  AccountedDevice(std::string name, std::uint64_t budget) : account_(std::move(name), budget) {}
  Status charge(std::size_t bytes, std::string_view what) override {
    return account_.reserve(bytes, what);
  }
  void uncharge(std::size_t bytes) override { account_.release(bytes); }
  MemoryStats memory() const override { return account_.stats(); }
  void reset_peak() override { account_.reset_peak(); }

 protected:
  MemoryAccount account_;
};

Result<std::unique_ptr<Device>> make_cpu_device(const DeviceOptions& options);
// Defined in cuda_device.cpp where the CUDA toolkit was found, else in device.cpp.
Result<std::unique_ptr<Device>> make_cuda_device(const DeviceOptions& options);
Status probe_cuda();

}  // namespace zinf::gpu
