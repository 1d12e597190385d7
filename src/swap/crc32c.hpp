// CRC32C (Castagnoli, as iSCSI and ext4 use it) through ISA-L, which picks
// the fastest implementation for this CPU at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace zinf::swap {

// The standard CRC32C of `data` ("123456789" -> 0xE3069283). To continue a
// running checksum, pass the previous result as `previous`.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t previous = 0);

}  // namespace zinf::swap
