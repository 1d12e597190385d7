// Aligned host memory. Everything that goes through O_DIRECT I/O must be
// aligned to kIoAlignment in address, length and file offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "zinf/common/status.hpp"

namespace zinf {

inline constexpr std::size_t kIoAlignment = 4096;
inline constexpr std::size_t kMapThreshold = std::size_t{1} << 20;

constexpr std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}
constexpr bool is_aligned(std::uint64_t value, std::uint64_t alignment) {
  return value % alignment == 0;
}
inline bool is_aligned(const void* ptr, std::uint64_t alignment) {
  return reinterpret_cast<std::uintptr_t>(ptr) % alignment == 0;
}

// Writes back and drops every cache line of `bytes` from the CPU caches
// (clflushopt), so that a device writing into this memory next need not take
// the lines back from a core first. The contents do not change. A no-op on a
// CPU without clflushopt.
void evict_from_caches(std::span<const std::byte> bytes);

// Memory that an I/O request may still transfer into or out of after its
// queue has closed: a lost request (see IoQueue) the kernel never returned.
// An IoQueue closing with such requests declares their buffers here; from
// then on an AlignedBuffer that overlaps one is never given back to the
// allocator or the system (release() leaves it allocated and logs the
// bytes), so no later allocation can receive the kernel's late write. The
// process keeps that memory for its life. Memory of your own that such a
// request used: do not free it while lost_io_holds() says so.
// Thread safety: all three may be called from any thread.
void keep_for_lost_io(std::span<const std::byte> memory);
bool lost_io_holds(std::span<const std::byte> memory);
std::uint64_t lost_io_bytes();  // the bytes declared so far

// A move-only owner of one aligned allocation. The size is rounded up to the
// alignment, so the whole buffer can be used for O_DIRECT transfers. With
// `lock`, the pages are mlock'ed (pinned) and unlocked on release; failing to
// lock (RLIMIT_MEMLOCK) is an error that says so. Buffers of kMapThreshold
// bytes or more are mapped pages of their own (returned to the system when
// released), so that large short-lived buffers, such as the staging of a
// partition being built, leave no holes in the heap that keep it resident.
// A buffer that a lost I/O request may still use is never released (see
// keep_for_lost_io).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  static Result<AlignedBuffer> allocate(std::size_t bytes, std::size_t alignment = kIoAlignment,
                                        bool lock = false);
  // What allocate(bytes, alignment) returns a buffer of (a zero-byte
  // request takes one alignment unit).
  static std::size_t size_for(std::size_t bytes, std::size_t alignment = kIoAlignment) {
    return align_up(bytes == 0 ? alignment : bytes, alignment);
  }
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool locked() const { return locked_; }
  // mlock the pages now (allocate's `lock`, for a buffer filled first);
  // an error (RLIMIT_MEMLOCK) leaves it unlocked.
  Status lock();
  std::span<std::byte> bytes() const { return {data_, size_}; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }

 private:
  void release();
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool locked_ = false;
  bool mapped_ = false;
};

}  // namespace zinf
