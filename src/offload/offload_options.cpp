#include "zinf/offload/offload_options.hpp"

#include "zinf/common/status.hpp"

namespace zinf {

OffloadOptions OffloadOptions::from_config(const Config& config) {
  const auto& oo = config.zero_optimization.offload_optimizer;
  OffloadOptions o;
  o.device(oo.device == OffloadDevice::kNvme ? "nvme" : "cpu");
  o.nvme_path(oo.nvme_path);
  o.buffer_count(oo.buffer_count);
  o.sub_group_size(config.zero_optimization.sub_group_size);
  o.pin_memory(oo.pin_memory);
  o.max_grad_norm(config.gradient_clipping);
  o.threads(static_cast<int>(config.zinf.threads));
  o.block_size(config.aio.block_size);
  o.queue_depth(config.aio.queue_depth);
  o.intra_op_parallelism(config.aio.intra_op_parallelism);
  o.single_submit(config.aio.single_submit);
  o.overlap_events(config.aio.overlap_events);
  o.io_backend(config.zinf.io_backend);
  o.checksum(config.zinf.checksum);
  o.buffered_io_fallback(config.zinf.buffered_io_fallback);
  o.io_timeout(config.zinf.io_timeout);
  return o;
}

OffloadOptions OffloadOptions::from_json_file(const std::string& path) {
  auto config = Config::from_file(path);
  throw_if_error(config.status());
  return from_config(*config);
}

}  // namespace zinf
