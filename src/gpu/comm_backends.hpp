// The communicator backends behind World (private to src/gpu): each is
// compiled where its library was found, and answers "unavailable" where not.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "gpu/communicator.hpp"

namespace zinf::gpu {

// Rank 0's `value` under `key`, on every rank (rank 0 publishes it, the
// others wait for it): how the NCCL unique id travels.
using Exchange =
    std::function<Result<std::string>(const std::string& key, const std::string& value)>;

// The store-backed world of more than one rank (c10d TCPStore; needs LibTorch).
Result<std::shared_ptr<World>> join_store_world(const Launch& launch, std::chrono::seconds timeout,
                                                const std::string& fingerprint);

// An NCCL channel on CUDA device `device`; `exchange` is null in a world of one.
Result<std::unique_ptr<Communicator>> make_nccl_communicator(
    const std::string& name, const Exchange& exchange, const Launch& launch, int device,
    std::chrono::seconds timeout = std::chrono::seconds(1800));

}  // namespace zinf::gpu
