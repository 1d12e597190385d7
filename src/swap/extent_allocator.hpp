// Allocates aligned extents inside one swap file. First fit over a free list
// ordered by offset; freed extents coalesce with their neighbours, so space
// is reused and the file does not grow while freed space can hold a request.
// When nothing fits, the file grows at its end by at least `grow_step`.
// Not thread safe: the store serialises calls.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace zinf::swap {

struct Extent {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

class ExtentAllocator {
 public:
  // `alignment`: every offset and length is a multiple of it.
  ExtentAllocator(std::uint64_t alignment, std::uint64_t grow_step);

  // An extent of `length` (rounded up to the alignment) from the free space,
  // or nullopt when the file must grow first (see growth_for).
  std::optional<Extent> allocate(std::uint64_t length);
  // How many bytes to add at the end of the file so `length` fits.
  std::uint64_t growth_for(std::uint64_t length) const;
  // The file grew by `bytes` at its end: the new space is free.
  void grow(std::uint64_t bytes);
  void free(Extent extent);

  std::uint64_t file_size() const { return file_size_; }
  std::uint64_t free_bytes() const { return free_bytes_; }
  std::size_t free_extents() const { return free_.size(); }

 private:
  std::uint64_t align(std::uint64_t v) const {
    return (v + alignment_ - 1) / alignment_ * alignment_;
  }

  const std::uint64_t alignment_;
  const std::uint64_t grow_step_;
  std::map<std::uint64_t, std::uint64_t> free_;  // offset -> length
  std::uint64_t file_size_ = 0;
  std::uint64_t free_bytes_ = 0;
};

}  // namespace zinf::swap
