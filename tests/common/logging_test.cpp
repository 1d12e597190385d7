#include "zinf/common/logging.hpp"

#include <gtest/gtest.h>

namespace zinf {
namespace {

TEST(FormatBytes, PicksTheUnit) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(4096), "4.0 KiB");
  EXPECT_EQ(format_bytes(12u << 20), "12.0 MiB");
  EXPECT_EQ(format_bytes(3ull << 29), "1.50 GiB");
}

TEST(ParseLogLevel, KnowsTheNames) {
  EXPECT_EQ(parse_log_level("warn"), LogLevel::kWarn);
  EXPECT_EQ(parse_log_level("nope"), std::nullopt);
}

}  // namespace
}  // namespace zinf
