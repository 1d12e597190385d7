// swapbench's command line. parse_options() validates everything it can
// without touching the disk; check_paths() then checks the paths and the
// free space, still before anything is written.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"

namespace zinf::swapbench {

// kMixed: reads and writes at once, alternating extents (half the data each
// way), as the optimizer's NVMe step reads one piece while writing another.
// kCopy: the same, but reading the first half of the extents in order while
// writing as many in order to another file on their own queue (half the
// queue depth each way), as a checkpoint save reads the swap and writes the
// checkpoint.
enum class Op { kWrite, kRead, kMixed, kCopy };

struct Options {
  std::vector<std::filesystem::path> paths;  // empty: a temporary directory under the current one
  std::uint64_t size = 256ull << 20;         // bytes per op and loop
  std::uint64_t block_size = 1ull << 20;
  std::uint32_t queue_depth = 32;
  std::uint32_t threads = 1;
  std::vector<IoBackend> backends;  // empty: every backend available here
  std::vector<Op> ops = {Op::kWrite, Op::kRead};
  std::uint32_t loops = 1;
  bool checksum = false;
  bool sqpoll = false;
  bool verify = false;
  bool json = false;
  bool sweep = false;
  bool tune = false;
  std::string emit_config;
  std::string csv = "swapbench-sweep.csv";
  std::string svg = "swapbench-sweep.svg";
  std::vector<std::uint64_t> sweep_block_sizes = {128ull << 10, 256ull << 10, 1ull << 20,
                                                  4ull << 20};
  std::vector<std::uint32_t> sweep_queue_depths = {1, 4, 8, 16, 32, 64};
  bool help = false;
};

// "4096", "128K", "1M", "2G" (powers of 1024).
Result<std::uint64_t> parse_size(std::string_view text);

// Errors name the flag ("--queue-depth: expected a positive integer, got 'x'").
Result<Options> parse_options(int argc, const char* const* argv);

// Each path exists, is a writable directory, and together they have room for
// `bytes` (plus the store's working margin). Errors name the path.
Status check_paths(const std::vector<std::filesystem::path>& paths, std::uint64_t bytes);

std::string usage();

}  // namespace zinf::swapbench
