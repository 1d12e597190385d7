// The backends this build has no library for: each answers with what to
// install.
#include "gpu/comm_backends.hpp"

namespace zinf::gpu {

#ifndef ZINF_HAVE_C10D
Result<std::shared_ptr<World>> join_store_world(const Launch& launch, std::chrono::seconds,
                                                const std::string&) {
  return Status::unavailable("WORLD_SIZE=" + std::to_string(launch.world_size) +
                             ": this zinf was built without LibTorch, whose c10d store and Gloo "
                             "run jobs of more than one rank (apt-get install libtorch-dev "
                             "libgloo-dev, and rebuild)");
}
#endif

#ifndef ZINF_HAVE_NCCL
Result<std::unique_ptr<Communicator>> make_nccl_communicator(const std::string& name,
                                                             const Exchange&, const Launch&, int,
                                                             std::chrono::seconds) {
  return Status::unavailable("communicator '" + name +
                             "': this zinf was built without NCCL (it is found with the CUDA "
                             "toolkit)");
}
#endif

}  // namespace zinf::gpu
