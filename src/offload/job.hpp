// This process's place in a data-parallel job (private to zinf::offload):
// the World is joined once per process, by the first PartitionScope or
// Engine that needs it, and lives until the process ends (as torch's
// default process group does).
#pragma once

#include <memory>

#include "gpu/communicator.hpp"
#include "zinf/common/config.hpp"

namespace zinf::offload {

// The job the launcher's environment describes (a world of one without
// one), joined with `config`'s zinf.comm_timeout and fingerprint.
Result<std::shared_ptr<gpu::World>> join_job(const Config& config);

// How a flat partition of `count` elements is split over the job: this
// rank's shard (all of it in a world of one).
struct Sharding {
  int rank = 0;
  int world = 1;
  gpu::Communicator* init = nullptr;  // broadcasts rank 0's initial values (null: world of one)
  gpu::ShardRange own(std::uint64_t count) const { return gpu::shard(count, world, rank); }
};

// What the engine needs of any config: a ZeRO stage, the optimizer offloaded
// (it runs on the CPU) and an "optimizer" block.
Status check_engine_config(const Config& config);

}  // namespace zinf::offload
