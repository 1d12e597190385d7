#include "zinf/gpu/pinned_pool.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <utility>

#include "zinf/common/logging.hpp"
#include "zinf/gpu/device.hpp"

namespace zinf::gpu {
namespace {

constexpr std::size_t kMaxRegion = std::size_t{1} << 30;  // io_uring's limit per fixed buffer

// "Say so once": the first pool that cannot be pinned warns; later ones log
// at debug level.
std::atomic<bool> g_warned{false};

}  // namespace

PinnedPool::Lease::~Lease() { give_back(); }

PinnedPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      index_(other.index_),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

PinnedPool::Lease& PinnedPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    give_back();
    pool_ = std::exchange(other.pool_, nullptr);
    index_ = other.index_;
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void PinnedPool::Lease::give_back() {
  if (pool_ != nullptr) pool_->give_back(index_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

Result<std::unique_ptr<PinnedPool>> PinnedPool::create(Device* device, Options options) {
  if (options.buffer_bytes == 0 || options.count == 0) {
    return Status::invalid_argument("pinned pool " + options.name + ": " +
                                    std::to_string(options.count) + " buffers of " +
                                    std::to_string(options.buffer_bytes) + " bytes");
  }
  std::unique_ptr<PinnedPool> pool(new PinnedPool());
  pool->name_ = std::move(options.name);
  pool->device_ = device;
  pool->buffer_bytes_ = align_up(options.buffer_bytes, kIoAlignment);
  pool->count_ = options.count;
  ZINF_ASSIGN_OR_RETURN(pool->memory_,
                        AlignedBuffer::allocate(pool->buffer_bytes_ * pool->count_, kIoAlignment));
  if (options.pin) {
    Status pinned = Status::ok();
    if (device != nullptr) {
      pinned = device->pin(pool->memory_.data(), pool->memory_.size());
    } else if (::mlock(pool->memory_.data(), pool->memory_.size()) != 0) {
      pinned = Status::from_errno(errno, "mlock (RLIMIT_MEMLOCK: raise it with `ulimit -l`)");
    }
    pool->pinned_ = pinned.is_ok();
    if (!pinned.is_ok()) {
      const std::string why = pool->name_ + ": " + format_bytes(pool->memory_.size()) +
                              " of host buffers are not pinned (" + pinned.message() +
                              "); copies to the device are not asynchronous and io_uring fixed "
                              "buffers are off";
      if (!g_warned.exchange(true)) {
        ZINF_LOG(kWarn) << why;
      } else {
        ZINF_LOG(kDebug) << why;
      }
    }
  }
  pool->free_.reserve(pool->count_);
  for (std::size_t i = pool->count_; i > 0; --i) pool->free_.push_back(i - 1);
  return pool;
}

PinnedPool::~PinnedPool() {
  if (!pinned_) return;
  if (device_ != nullptr) {
    device_->unpin(memory_.data(), memory_.size());
  } else {
    ::munlock(memory_.data(), memory_.size());
  }
}

PinnedPool::Lease PinnedPool::acquire() {
  std::unique_lock lock(mutex_);
  for (;;) {
    reinstate();
    if (!free_.empty()) return lend();
    if (retired_.empty()) {
      freed_.wait(lock);
    } else {  // a retired buffer comes back when its store reaps the request, not through give_back
      freed_.wait_for(lock, std::chrono::milliseconds(5));
    }
  }
}

std::optional<PinnedPool::Lease> PinnedPool::try_acquire() {
  std::lock_guard lock(mutex_);
  reinstate();
  if (free_.empty()) return std::nullopt;
  return lend();
}

PinnedPool::Lease PinnedPool::lend() {
  const std::size_t i = free_.back();
  free_.pop_back();
  peak_in_use_ = std::max(peak_in_use_, count_ - free_.size());
  return Lease(this, i, memory_.data() + i * buffer_bytes_, buffer_bytes_);
}

void PinnedPool::reinstate() {
  if (retired_.empty()) return;
  const auto back = std::stable_partition(retired_.begin(), retired_.end(),
                                          [&](std::size_t i) { return held_(buffer(i)); });
  for (auto it = back; it != retired_.end(); ++it) {
    ZINF_LOG(kInfo) << name_ << ": buffer " << *it << " is back in service (its lost request "
                    << "has returned)";
    free_.push_back(*it);
  }
  retired_.erase(back, retired_.end());
}

void PinnedPool::give_back(std::size_t index) {
  {
    std::lock_guard lock(mutex_);
    if (held_ && held_(buffer(index))) {
      retired_.push_back(index);
      ZINF_LOG(kWarn) << name_ << ": buffer " << index << " (" << format_bytes(buffer_bytes_)
                      << ") may still be used by a lost I/O request; it is retired until the "
                      << "kernel returns it, and " << count_ - retired_.size() << " of " << count_
                      << " buffers stay in service";
      return;
    }
    free_.push_back(index);
  }
  freed_.notify_one();
}

void PinnedPool::retire_while(std::function<bool(std::span<const std::byte>)> held) {
  std::lock_guard lock(mutex_);
  held_ = std::move(held);
}

std::size_t PinnedPool::retired() const {
  std::lock_guard lock(mutex_);
  return retired_.size();
}

std::size_t PinnedPool::in_use() const {
  std::lock_guard lock(mutex_);
  return count_ - free_.size();
}

std::size_t PinnedPool::take_peak_in_use() {
  std::lock_guard lock(mutex_);
  const std::size_t peak = peak_in_use_;
  peak_in_use_ = count_ - free_.size();
  return peak;
}

std::vector<std::span<std::byte>> PinnedPool::io_regions() const {
  // Whole buffers per region where a buffer fits in one; a larger buffer is
  // cut into 1 GiB pieces (requests are at most aio.block_size, which divides
  // 1 GiB, so none straddles a cut).
  std::vector<std::span<std::byte>> regions;
  std::byte* begin = memory_.data();
  std::size_t length = 0;
  for (std::size_t i = 0; i < count_; ++i) {
    std::byte* buffer = memory_.data() + i * buffer_bytes_;
    if (buffer_bytes_ > kMaxRegion) {
      for (std::size_t off = 0; off < buffer_bytes_; off += kMaxRegion)
        regions.push_back({buffer + off, std::min(kMaxRegion, buffer_bytes_ - off)});
      begin = buffer + buffer_bytes_;
      continue;
    }
    if (length + buffer_bytes_ > kMaxRegion) {
      regions.push_back({begin, length});
      begin = buffer;
      length = 0;
    }
    length += buffer_bytes_;
  }
  if (length > 0) regions.push_back({begin, length});
  return regions;
}

}  // namespace zinf::gpu
