// Units and their partitions before an engine owns them (private to
// zinf::offload): the process-wide registry of modules marked as units, and
// the store where a PartitionScope (or the engine) keeps unit partitions
// whose home is pinned host memory or NVMe.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "offload/job.hpp"
#include "offload/torch_glue.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/config.hpp"
#include "zinf/offload/unit.hpp"
#include "zinf/swap/swap_store.hpp"

namespace zinf::offload {
class EngineImpl;
}

namespace zinf::detail {

// Where offload_param "cpu" or "nvme" keeps unit partitions: one value per
// partition, keyed "u<n>".
struct PartitionStore {
  OffloadDevice device = OffloadDevice::kCpu;
  std::unique_ptr<swap::SwapStore> nvme;      // nvme
  std::map<std::string, AlignedBuffer> host;  // cpu
  std::size_t next_key = 0;

  static Result<std::shared_ptr<PartitionStore>> open(const Config& config,
                                                      std::optional<swap::FaultSpec> fault);
  // Stores `bytes` from `data` (kIoAlignment-aligned) under `key`, synchronously.
  Status put(const std::string& key, const std::byte* data, std::size_t bytes);
  // Reads `key` into `out` (kIoAlignment-aligned, `bytes` long), synchronously.
  Status get(const std::string& key, std::byte* out, std::size_t bytes);
  std::uint64_t host_bytes() const;
};

// A parameter as planned: its shape is recorded here because partitioning
// releases the tensor (it becomes an empty placeholder).
struct PlannedParam {
  std::string name;
  torch::Tensor tensor;
  std::vector<std::int64_t> shape;
  std::uint64_t numel = 0;
};

// How a unit's parameters split: the partition gathered on use (one dtype),
// and the persistent ones that stay on the device.
struct UnitPlan {
  std::vector<PlannedParam> partitioned;  // names are inside the unit until the engine renames them
  std::vector<PlannedParam> persistent;
  torch::ScalarType dtype = torch::kFloat;  // of the partition (bf16 when bf16.enabled)
  torch::ScalarType persistent_dtype = torch::kFloat;
  std::uint64_t numel = 0;  // of the partition
};
// A module's parameters, each once, with their names inside it.
std::vector<std::pair<std::string, torch::Tensor>> unit_parameters(torch::nn::Module& module);
// `persistent_budget` is what stage3_model_persistence_threshold has left;
// the plan takes its persistent parameters out of it.
Result<UnitPlan> plan_params(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                             const std::string& unit, const Config& config,
                             std::uint64_t& persistent_budget);

// Copies the plan's partitioned parameters, in order and in the plan's
// dtype, into one value of `store` under `key`, releasing each parameter
// (an empty placeholder of that dtype) once copied: about one unit of host
// memory at a time. In a job of several ranks, rank 0's values (broadcast
// through `sharding.init`), and of them only this rank's shard.
Status store_partition(PartitionStore& store, const std::string& key, const UnitPlan& plan,
                       const offload::Sharding& sharding);

// A unit partitioned by a PartitionScope, waiting for its engine.
struct StoredUnit {
  std::shared_ptr<PartitionStore> store;
  std::string key;
  UnitPlan plan;
};

struct UnitEntry {
  std::weak_ptr<torch::nn::Module> module;
  std::shared_ptr<StoredUnit> stored;     // set by a PartitionScope
  offload::EngineImpl* engine = nullptr;  // set while an engine owns the unit
  std::size_t index = 0;                  // the engine's unit index
};

// Modules marked as units. Entries of modules that died are dropped lazily.
class UnitRegistry {
 public:
  static UnitRegistry& instance();
  // Adds the module if it is new; returns its entry (stable while the module lives).
  UnitEntry& enroll(const std::shared_ptr<torch::nn::Module>& module);
  UnitEntry* find(const torch::nn::Module* module);
  std::mutex& mutex() { return mutex_; }

 private:
  std::mutex mutex_;
  std::map<const torch::nn::Module*, UnitEntry> entries_;
};

// The scope that enroll_unit() partitions into, on this thread (null: none).
struct PartitionScopeState {
  Config config;
  offload::Sharding sharding;
  std::unique_ptr<gpu::Communicator> init;  // sharding.init's owner
  std::shared_ptr<PartitionStore> store;
  std::uint64_t persistent_budget = 0;
  offload::MappedAllocations mapped;  // units' tensors leave no holes in the heap
};
PartitionScopeState* current_partition_scope();

}  // namespace zinf::detail
