// Where and how OffloadAdamW and friends keep the optimizer state: a
// chainable builder in LibTorch's style, or the keys of a DeepSpeed config.
//
//   zinf::OffloadOptions().device("nvme").nvme_path("/mnt/nvme")
//   zinf::OffloadOptions::from_json_file("ds_config.json")
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>

#include "zinf/common/config.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf {

struct OffloadOptions {
  // "cpu": states in host memory; "nvme": states on NVMe through SwapStore.
  TORCH_ARG(std::string, device) = "cpu";
  TORCH_ARG(std::string, nvme_path) = "";
  // offload_optimizer.buffer_count, with DeepSpeed's meaning and default:
  // fp32 buffers of the largest sub-group, one per state array and one for
  // the gradient (at least 4 for Adam/AdamW, 3 for Adagrad/Lion; fewer is an
  // error). zinf streams each sub-group through its pinned pool in pieces and
  // never takes more host memory than these buffers would.
  TORCH_ARG(std::uint32_t, buffer_count) = 4;
  // Elements per optimizer sub-group (zero_optimization.sub_group_size).
  TORCH_ARG(std::uint64_t, sub_group_size) = 1000000000;
  // mlock the host buffers; if RLIMIT_MEMLOCK forbids it, warn and go on.
  TORCH_ARG(bool, pin_memory) = true;
  // Global L2 norm clipping (gradient_clipping); 0 = off.
  TORCH_ARG(double, max_grad_norm) = 0.0;
  // CPU optimizer threads; 0 = every core.
  TORCH_ARG(int, threads) = 0;
  // The "aio" block and zinf's own I/O keys.
  TORCH_ARG(std::uint64_t, block_size) = 1048576;
  TORCH_ARG(std::uint32_t, queue_depth) = 8;
  TORCH_ARG(std::uint32_t, intra_op_parallelism) = 1;
  TORCH_ARG(bool, single_submit) = false;
  TORCH_ARG(bool, overlap_events) = true;
  TORCH_ARG(IoBackend, io_backend) = IoBackend::kAuto;
  TORCH_ARG(bool, checksum) = true;
  TORCH_ARG(bool, buffered_io_fallback) = false;
  // zinf.io_timeout: seconds before a request without a completion is
  // cancelled (and another timeout before it is given up as lost).
  TORCH_ARG(std::uint32_t, io_timeout) = 60;
  // Injected I/O faults (tests, chaos runs): every swap engine is wrapped.
  TORCH_ARG(std::optional<swap::FaultSpec>, fault) = std::nullopt;

 public:  // TORCH_ARG leaves the struct in a private section
  // zero_optimization.offload_optimizer, zero_optimization.sub_group_size,
  // aio, gradient_clipping and the zinf block. Throws zinf::Error naming the
  // file and key on a bad config; device "none" reads as "cpu".
  static OffloadOptions from_json_file(const std::string& path);
  static OffloadOptions from_config(const Config& config);
};

}  // namespace zinf
