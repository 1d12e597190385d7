#include "swap/extent_allocator.hpp"

#include <algorithm>
#include <iterator>

namespace zinf::swap {

ExtentAllocator::ExtentAllocator(std::uint64_t alignment, std::uint64_t grow_step)
    : alignment_(alignment), grow_step_((grow_step + alignment - 1) / alignment * alignment) {}

std::optional<Extent> ExtentAllocator::allocate(std::uint64_t length) {
  length = align(std::max<std::uint64_t>(length, 1));
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < length) continue;
    Extent out{it->first, length};
    const std::uint64_t rest = it->second - length;
    const std::uint64_t rest_offset = it->first + length;
    free_.erase(it);
    if (rest > 0) free_.emplace(rest_offset, rest);
    free_bytes_ -= length;
    return out;
  }
  return std::nullopt;
}

std::uint64_t ExtentAllocator::growth_for(std::uint64_t length) const {
  length = align(std::max<std::uint64_t>(length, 1));
  // A free extent touching the end of the file counts towards the request.
  std::uint64_t tail = 0;
  if (!free_.empty()) {
    auto last = std::prev(free_.end());
    if (last->first + last->second == file_size_) tail = last->second;
  }
  return std::max(grow_step_, align(length - std::min(length, tail)));
}

void ExtentAllocator::grow(std::uint64_t bytes) {
  free({file_size_, bytes});
  file_size_ += bytes;
}

void ExtentAllocator::free(Extent extent) {
  if (extent.length == 0) return;
  free_bytes_ += extent.length;
  auto next = free_.lower_bound(extent.offset);
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == extent.offset) {
      extent.offset = prev->first;
      extent.length += prev->second;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && extent.offset + extent.length == next->first) {
    extent.length += next->second;
    free_.erase(next);
  }
  free_.emplace(extent.offset, extent.length);
}

}  // namespace zinf::swap
