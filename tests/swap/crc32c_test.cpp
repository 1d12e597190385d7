#include "swap/crc32c.hpp"

#include <gtest/gtest.h>

#include <string_view>

namespace zinf::swap {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(Crc32cTest, StandardCheckValues) {
  EXPECT_EQ(crc32c(bytes("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(bytes("")), 0u);
  // RFC 3720 B.4: 32 bytes of zeros.
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(bytes(zeros)), 0x8A9136AAu);
}

TEST(Crc32cTest, ContinuesARunningChecksum) {
  EXPECT_EQ(crc32c(bytes("6789"), crc32c(bytes("12345"))), crc32c(bytes("123456789")));
}

}  // namespace
}  // namespace zinf::swap
