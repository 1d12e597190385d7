#include "zinf/common/aligned.hpp"

#include <immintrin.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "zinf/common/cpu_features.hpp"
#include "zinf/common/logging.hpp"

namespace zinf {
namespace {

// The memory lost I/O requests may still use. Never destroyed (and so the
// kept buffers stay reachable for leak checkers).
struct LostIo {
  std::mutex mutex;
  std::vector<std::span<const std::byte>> ranges;
  std::atomic<std::uint64_t> bytes{0};
};

LostIo& lost_io() {
  static LostIo* const registry = new LostIo;
  return *registry;
}

}  // namespace

void keep_for_lost_io(std::span<const std::byte> memory) {
  if (memory.empty()) return;
  LostIo& r = lost_io();
  std::lock_guard lock(r.mutex);
  r.ranges.push_back(memory);
  r.bytes += memory.size();
}

bool lost_io_holds(std::span<const std::byte> memory) {
  LostIo& r = lost_io();
  if (r.bytes.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard lock(r.mutex);
  for (const auto& held : r.ranges) {
    if (held.data() < memory.data() + memory.size() && memory.data() < held.data() + held.size())
      return true;
  }
  return false;
}

std::uint64_t lost_io_bytes() { return lost_io().bytes.load(); }

Result<AlignedBuffer> AlignedBuffer::allocate(std::size_t bytes, std::size_t alignment, bool lock) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return Status::invalid_argument("alignment " + std::to_string(alignment) +
                                    " is not a power of two");
  }
  AlignedBuffer buf;
  buf.size_ = size_for(bytes, alignment);
  if (buf.size_ >= kMapThreshold && alignment <= kIoAlignment) {
    void* p =
        ::mmap(nullptr, buf.size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      buf.data_ = static_cast<std::byte*>(p);
      buf.mapped_ = true;
    }
  } else {
    buf.data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, buf.size_));
  }
  if (buf.data_ == nullptr) {
    return Status::resource_exhausted("cannot allocate " + std::to_string(buf.size_) +
                                      " aligned bytes");
  }
  if (lock) ZINF_RETURN_IF_ERROR(buf.lock());
  return buf;
}

Status AlignedBuffer::lock() {
  if (locked_ || data_ == nullptr) return Status::ok();
  if (::mlock(data_, size_) != 0) {
    return Status::from_errno(errno, "mlock of " + std::to_string(size_) +
                                         " bytes (raise RLIMIT_MEMLOCK or set pin_memory false)");
  }
  locked_ = true;
  return Status::ok();
}

AlignedBuffer::~AlignedBuffer() { release(); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      locked_(std::exchange(other.locked_, false)),
      mapped_(std::exchange(other.mapped_, false)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    locked_ = std::exchange(other.locked_, false);
    mapped_ = std::exchange(other.mapped_, false);
  }
  return *this;
}

void AlignedBuffer::release() {
  if (data_ == nullptr) return;
  if (lost_io_holds(bytes())) {
    ZINF_LOG(kWarn) << "keeping " << format_bytes(size_)
                    << " of host memory from the allocator: a lost I/O request may still use it";
  } else {
    if (locked_) ::munlock(data_, size_);
    if (mapped_) {
      ::munmap(data_, size_);
    } else {
      std::free(data_);
    }
  }
  data_ = nullptr;
  size_ = 0;
  locked_ = false;
  mapped_ = false;
}

namespace {

__attribute__((target("clflushopt"))) void flush_lines(const std::byte* begin,
                                                       const std::byte* end) {
  constexpr std::uintptr_t kLine = 64;
  auto line = reinterpret_cast<std::uintptr_t>(begin) & ~(kLine - 1);
  for (; line < reinterpret_cast<std::uintptr_t>(end); line += kLine)
    _mm_clflushopt(reinterpret_cast<void*>(line));
  _mm_sfence();  // clflushopt is ordered only by fences
}

}  // namespace

void evict_from_caches(std::span<const std::byte> bytes) {
  if (cpu_features().clflushopt && !bytes.empty())
    flush_lines(bytes.data(), bytes.data() + bytes.size());
}

}  // namespace zinf
