// Where OffloadOptimizer's fp32 state lives: host memory or NVMe. The
// optimizer sees sub-groups of sub_group_size elements, one at a time, each
// with `num_states` fp32 arrays (master weights first, then the moments).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

#include "zinf/offload/offload_optimizer.hpp"

namespace zinf::offload {

struct SubGroup {
  std::size_t index = 0;
  std::uint64_t begin = 0;  // first element, in the flattened parameters
  std::uint64_t count = 0;
  std::array<float*, 3> state{};  // [0] master, then the algorithm's moments
};

using SubGroupFn = std::function<Status(SubGroup&)>;

class StateTier {
 public:
  virtual ~StateTier() = default;
  // Visits every sub-group in order with its state loaded; what `fn` changes
  // is kept. All or nothing: if `fn` or any I/O fails, the stored state stays
  // exactly as before and the first error is returned.
  virtual Status update(const SubGroupFn& fn, StepStats& stats) = 0;
  // Visits every sub-group in order, read only.
  virtual Status read(const SubGroupFn& fn) = 0;
  virtual TierBytes bytes() const = 0;
};

struct TierShape {
  std::uint64_t elements = 0;
  std::uint64_t sub_group_size = 0;
  int num_states = 0;
  std::uint64_t sub_groups() const { return (elements + sub_group_size - 1) / sub_group_size; }
};

// `init` fills each sub-group's initial state (called once per sub-group).
Result<std::unique_ptr<StateTier>> make_host_tier(const TierShape& shape, bool pin,
                                                  const SubGroupFn& init);
Result<std::unique_ptr<StateTier>> make_nvme_tier(const TierShape& shape,
                                                  const OffloadOptions& options,
                                                  const char* algorithm, const SubGroupFn& init);

}  // namespace zinf::offload
