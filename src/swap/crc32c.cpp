#include "swap/crc32c.hpp"

#include <isa-l/crc.h>

#include <algorithm>

namespace zinf::swap {

std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t previous) {
  // ISA-L works on the raw register (no pre/post inversion) and takes an int
  // length: invert around it and feed it at most 1 GiB at a time.
  constexpr std::size_t kMaxChunk = std::size_t{1} << 30;
  std::uint32_t crc = ~previous;
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  for (std::size_t left = data.size(); left > 0;) {
    const std::size_t n = std::min(left, kMaxChunk);
    crc = crc32_iscsi(p, static_cast<int>(n), crc);
    p += n;
    left -= n;
  }
  return ~crc;
}

}  // namespace zinf::swap
