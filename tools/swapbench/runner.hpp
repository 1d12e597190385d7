// One measured configuration: write `size` bytes as extents of one block each
// through a SwapStore, then read them back, keeping queue_depth x threads
// extents in flight (what fio's iodepth x numjobs does).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "options.hpp"

namespace zinf::swapbench {

struct RunConfig {
  std::vector<std::filesystem::path> paths;
  IoBackend backend = IoBackend::kIoUring;
  std::uint64_t size = 0;
  std::uint64_t block_size = 0;
  std::uint32_t queue_depth = 0;
  std::uint32_t threads = 1;
  std::vector<Op> ops;
  std::uint32_t loops = 1;
  bool checksum = false;
  bool sqpoll = false;
  bool verify = false;
};

struct RunResult {
  Op op = Op::kWrite;
  std::string backend;
  std::uint64_t block_size = 0;
  std::uint32_t queue_depth = 0;
  std::uint32_t threads = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  double gbps = 0;  // 1e9 bytes per second
  double iops = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_s_per_gb = 0;  // user + system CPU time of the process per 1e9 bytes
  bool checksum = false;
  bool sqpoll = false;  // requested; a kernel that refuses it gets a plain ring, with a warning
};

// Runs the configuration (each op `loops` times, results summed per op).
Result<std::vector<RunResult>> run(const RunConfig& config);

std::string_view to_string(Op op);

}  // namespace zinf::swapbench
