// A pool of equal, page-locked host buffers shared by the PCIe path (copies
// to and from the device) and the NVMe path (io_uring reads and writes).
//
// Pinning: through the Device (cudaHostRegister on cuda, mlock on the
// emulated device). RLIMIT_MEMLOCK is checked before anything is locked; a
// pool that cannot be pinned works unpinned, and the first such pool in the
// process says so once, with the limit, the size and the fix (`ulimit -l`).
// pinned() tells the caller which it got.
//
// io_regions(): the pool's memory cut, at buffer boundaries, into regions of
// at most 1 GiB (the kernel's limit per io_uring fixed buffer), for
// SwapStore::register_buffers.
//
// Retiring: a buffer that a lost I/O request may still use (the kernel never
// returned it) must not be lent again. With retire_while(held), a buffer
// given back while held(buffer) is true is set aside, not lent, and goes back
// into service once held() says the kernel has returned it; the pool lends
// its other buffers meanwhile. acquire() with every free buffer retired
// waits, checking again every few milliseconds.
//
// Thread safety: acquire()/try_acquire() and Lease destruction from any
// thread; retire_while() before the first buffer is given back. Buffers
// are kIoAlignment-aligned, buffer_bytes() long (a multiple of
// kIoAlignment).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "zinf/common/aligned.hpp"
#include "zinf/common/status.hpp"

namespace zinf::gpu {

class Device;

class PinnedPool {
 public:
  struct Options {
    std::string name;  // for messages: "offload_param buffers"
    std::size_t buffer_bytes = 0;
    std::size_t count = 0;
    bool pin = true;
  };

  // A buffer on loan; returned to the pool when destroyed.
  class Lease {
   public:
    Lease() = default;
    ~Lease();
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    std::byte* data() const { return data_; }
    std::size_t size() const { return size_; }
    explicit operator bool() const { return data_ != nullptr; }

   private:
    friend class PinnedPool;
    Lease(PinnedPool* pool, std::size_t index, std::byte* data, std::size_t size)
        : pool_(pool), index_(index), data_(data), size_(size) {}
    void give_back();
    PinnedPool* pool_ = nullptr;
    std::size_t index_ = 0;
    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
  };

  // `device` pins the memory (null: mlock). Fails only if the memory cannot
  // be allocated or the options are empty.
  static Result<std::unique_ptr<PinnedPool>> create(Device* device, Options options);
  // The bytes() of a pool created with `options`.
  static std::size_t bytes_for(const Options& options) {
    return AlignedBuffer::size_for(align_up(options.buffer_bytes, kIoAlignment) * options.count);
  }
  ~PinnedPool();
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;

  Lease acquire();  // waits for a free buffer
  std::optional<Lease> try_acquire();

  // `held(buffer)`: whether some I/O may still use the buffer (for a pool
  // whose buffers go to a SwapStore: SwapStore::holds). Called under the
  // pool's lock: it must not call back into the pool.
  void retire_while(std::function<bool(std::span<const std::byte>)> held);
  std::size_t retired() const;  // buffers set aside now

  std::vector<std::span<std::byte>> io_regions() const;
  bool pinned() const { return pinned_; }
  std::size_t buffer_bytes() const { return buffer_bytes_; }
  std::size_t count() const { return count_; }
  std::size_t bytes() const { return memory_.size(); }
  std::size_t in_use() const;
  // The most buffers on loan at once since the last call (or creation);
  // the next period starts from those on loan now.
  std::size_t take_peak_in_use();
  const std::string& name() const { return name_; }

 private:
  PinnedPool() = default;
  void give_back(std::size_t index);
  std::span<const std::byte> buffer(std::size_t index) const {
    return {memory_.data() + index * buffer_bytes_, buffer_bytes_};
  }
  // Puts the retired buffers no longer held back into service; mutex_ held.
  void reinstate();
  Lease lend();  // a free buffer (there is one); mutex_ held

  std::string name_;
  Device* device_ = nullptr;
  AlignedBuffer memory_;
  std::size_t buffer_bytes_ = 0;
  std::size_t count_ = 0;
  bool pinned_ = false;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<std::size_t> free_;
  std::vector<std::size_t> retired_;
  std::function<bool(std::span<const std::byte>)> held_;
  std::size_t peak_in_use_ = 0;
};

}  // namespace zinf::gpu
