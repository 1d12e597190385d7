// The engine's implementation (private to zinf::offload). See
// include/zinf/offload/engine.hpp for the contract and engine.cpp for how
// a step flows.
#pragma once

#include <torch/torch.h>

#include <deque>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "offload/coordinator.hpp"
#include "offload/job.hpp"
#include "offload/plan.hpp"
#include "offload/state_tier.hpp"
#include "offload/torch_glue.hpp"
#include "offload/trace.hpp"
#include "offload/units.hpp"
#include "zinf/common/busy_time.hpp"
#include "zinf/common/loss_scaler.hpp"
#include "zinf/common/lr_schedule.hpp"
#include "zinf/common/worker.hpp"
#include "zinf/cpu_adam/cpu_adam.hpp"
#include "zinf/gpu/device.hpp"
#include "zinf/gpu/pinned_pool.hpp"
#include "zinf/offload/engine.hpp"

namespace zinf::offload {

class EngineImpl;
struct Checkpoint;
struct StateIo;

// Where a partition lives between uses. kDevice: whole on the device, bound
// for good (offload_param none in stages 1-2, and persistent parameters);
// kDeviceShard: this rank's shard on the device, gathered from the ranks'
// shards on use (offload_param none in stage 3 across ranks); kHost, kNvme:
// offload_param's tier (this rank's shard in stage 3 across ranks).
enum class Home : std::uint8_t { kDevice, kDeviceShard, kHost, kNvme };

// One checkpointed unit call, from its forward to its backward.
struct RecomputeState : torch::CustomClassHolder {
  EngineImpl* engine = nullptr;
  std::size_t unit = 0;
  detail::FlatForward forward;
  std::vector<torch::Tensor> saved;  // the inputs, detached (in host memory with cpu_checkpointing)
  std::vector<bool> requires_grad;
  torch::Tensor cpu_rng, device_rng;  // the generators' states the forward ran with
};

class EngineImpl final : public Coordinator::Actions {
 public:
  EngineImpl(std::shared_ptr<torch::nn::Module> model, const Config& config, EngineOptions options);
  ~EngineImpl() override;

  // The surface (EngineBase forwards here).
  void begin_forward();
  std::vector<torch::Tensor> end_forward(std::vector<torch::Tensor> outputs);
  [[noreturn]] void fail_forward(const std::exception& error);
  void backward(const torch::Tensor& loss);
  void step();
  void save_checkpoint(const std::filesystem::path& dir, std::string tag);
  void load_checkpoint(const std::filesystem::path& dir, std::string tag);
  bool boundary() const { return micro_steps_ >= gas_; }
  torch::Device torch_device() const { return torch_device_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  double mean_over_ranks(double value);
  const Config& config() const { return config_; }
  std::uint64_t global_steps() const { return global_steps_; }
  std::uint64_t skipped_steps() const { return skipped_steps_; }
  const StepReport& report() const { return report_; }
  CoordinatorStats coordinator_stats() const { return coordinator_->stats(); }
  MemoryReport memory_report() const;
  // Page-locked host bytes in use (the trace's counter); restarts the pools' peaks.
  std::uint64_t pinned_in_use();
  // The parameter store's transfers on the trace, named after their units.
  void trace_param_transfers(const std::vector<swap::SwapTransfer>& transfers, std::uint64_t step);
  // Each lane of a swap store ("parameters", "optimizer"): a reads and a writes track.
  void trace_lanes(const std::string& store, const std::vector<swap::LaneBusy>& lanes,
                   SteadyClock::time_point from, SteadyClock::time_point to, std::uint64_t step);
  void describe_nvme_paths();
  void reset_peak_memory() { device_->reset_peak(); }
  torch::OrderedDict<std::string, torch::Tensor> consolidated_parameters() const;

  // Unit calls (detail::UnitCall) and the autograd hooks.
  void unit_begin(std::size_t unit);
  std::vector<torch::Tensor> unit_end(std::size_t unit, std::vector<torch::Tensor> outputs);
  void unit_abort(std::size_t unit);
  void pre_backward(std::size_t unit);
  void on_grad(std::size_t param);

  // Activation checkpointing (zinf.checkpoint_units).
  bool checkpoints() const;
  std::vector<torch::Tensor> checkpoint(std::size_t unit, detail::FlatForward forward,
                                        std::vector<torch::Tensor> inputs);
  std::vector<torch::Tensor> checkpoint_forward(RecomputeState& state,
                                                std::vector<torch::Tensor> inputs);
  std::vector<torch::Tensor> checkpoint_backward(RecomputeState& state,
                                                 std::vector<torch::Tensor> grads);
  const std::string& unit_name(std::size_t unit) const { return units_[unit].name; }

  // Coordinator::Actions.
  Status fetch(std::size_t unit) override;
  void release(std::size_t unit) override;
  bool stage(std::size_t unit) override;
  void unstage(std::size_t unit) override;

 private:
  struct Param {
    std::string name;
    ParamStorage storage;
    torch::ScalarType dtype = torch::kFloat;
    std::uint64_t numel = 0;
    std::size_t unit = 0;
    std::size_t partition = 0;
    std::uint64_t offset = 0;  // elements into its partition
    std::uint64_t flat = 0;    // elements into the whole model's flat space
    // This rank's elements of it (all of them in a world of one): from
    // own_begin, own_count of them, at own_flat in the optimizer's space
    // and at grad_at in grads_.
    std::uint64_t own_begin = 0;
    std::uint64_t own_count = 0;
    std::uint64_t own_flat = 0;
    std::uint64_t grad_at = 0;
    bool requires_grad = true;
    bool has_grad = false;  // a gradient arrived in this accumulation window
    std::int64_t step = 0;  // updates applied (bias correction)
  };

  struct Partition {
    std::string key;
    std::size_t unit = 0;  // the unit whose parameters it holds
    Home home = Home::kDevice;
    torch::ScalarType dtype = torch::kFloat;
    cpu_adam::Dtype cdtype = cpu_adam::Dtype::kF32;
    std::uint64_t numel = 0;
    std::uint64_t bytes = 0;
    std::uint64_t flat = 0;
    gpu::ShardRange own;           // this rank's elements (all in a world of one)
    std::uint64_t home_begin = 0;  // the first element its home holds (own.begin when sharded)
    std::uint64_t home_bytes = 0;  // what its home holds
    std::uint64_t own_flat = 0;    // where `own` starts in the optimizer's space
    bool reduced = false;          // partitioned gradients: its shard was written this window
    std::vector<std::size_t> params;
    std::byte* host = nullptr;   // Home::kHost
    void* device = nullptr;      // kDevice: the resident copy; kDeviceShard: the shard
    std::size_t last_group = 0;  // the tier's last group of this partition
  };

  // A unit's partition on its way to, or on, the device.
  struct Gather {
    void* device = nullptr;
    gpu::EventPtr ready;                            // the copy onto the device
    std::future<Status> fetched;                    // nvme: the fetch worker's job
    std::future<Status> gathered;                   // sharded: this use's all-gather
    std::shared_ptr<gpu::PinnedPool::Lease> lease;  // nvme: the read's buffer
    std::optional<swap::SwapTicket> read;
    bool staged = false;  // read started ahead, no device memory yet
    bool bound = false;   // the parameters point at `device`
  };

  struct UnitRec {
    std::string name;
    std::shared_ptr<torch::nn::Module> module;
    detail::UnitEntry* entry = nullptr;
    std::optional<std::size_t> main;        // the gathered partition
    std::optional<std::size_t> persistent;  // resident on the device
    Gather gather;
    std::size_t expected_grads = 0;  // hooked in this micro-step's forward
    std::size_t received_grads = 0;
    bool reduced = false;  // partitioned gradients: reduced in this micro-step
  };

  enum class Phase : std::uint8_t { kIdle, kForward, kAfterForward, kBackward };

  // Construction.
  void check_config();
  void find_units(const std::shared_ptr<torch::nn::Module>& model);
  void add_unit(const std::string& name, const std::shared_ptr<torch::nn::Module>& module,
                detail::UnitEntry* entry, const detail::UnitPlan& plan, std::string key);
  std::size_t add_partition(std::size_t unit, const std::vector<detail::PlannedParam>& params,
                            Home home, torch::ScalarType dtype, std::string key);
  Home param_home() const;
  void place_partitions();
  void make_buffers();
  void make_optimizer();

  // Forward and backward.
  void use(std::size_t unit);
  Status wait_ready(std::size_t unit);
  void bind(std::size_t unit);
  Status start_read(std::size_t unit, gpu::PinnedPool::Lease lease);  // read_mutex_ held
  Status finish_nvme_fetch(std::size_t unit);
  void hook_grads(std::size_t unit);
  void end_micro_step(bool completed);
  void abort_micro_step(bool drop_window);
  Status drain_grads();
  void zero_window();

  // Across ranks (a world of one: nothing to do).
  void join_job();
  void make_channels();  // after the device: its collectives' backend
  Sharding sharding() const { return {rank_, world_size_, host_comm_.get()}; }
  // Sharded params: each use of a unit is an all-gather of the others' shards
  // into its copy, issued on the gather worker in the coordinator's order.
  void gather(std::size_t unit) override;
  Status wait_gathers() override;
  Status gather_unused(std::size_t unit) override;
  // Partitioned gradients: the partition's of this micro-step, on the device
  // (zeroed when it opens, after what waits in the bucket made room).
  torch::Tensor device_grad(std::size_t part);
  torch::ScalarType reduce_dtype(torch::ScalarType grad) const;
  // Until `room` more elements fit the reduce bucket (kAllQueued: until none waits).
  void wait_reductions(std::uint64_t room);
  static constexpr std::uint64_t kAllQueued = UINT64_MAX;
  void reduce_unit(std::size_t unit);  // queues its partitions' reductions on the grad worker
  Status reduce_partition(std::size_t part, const Result<gpu::EventPtr>& computed);
  Status take_shard(Partition& part, const std::byte* shard, torch::ScalarType dtype);
  Status reduce_for_step();  // stage 1: the window's gradients, at the boundary
  Status gather_resident();  // stages 1-2: every rank's updated shard onto every device
  std::vector<gpu::Communicator*> channels() const;
  std::vector<gpu::Stream*> copy_streams() const;  // h2d, d2h, compute (device to device)
  // Every rank calls these at the same point (a world of one: nothing to
  // exchange). agree: ok on every rank, or an error on every rank (a failing
  // rank's own; the others name the first rank that failed).
  Status agree(Status mine);
  Result<std::vector<std::byte>> gather_bytes(const void* mine, std::size_t bytes);  // rank order
  Status broadcast_from_zero(void* data, std::size_t bytes);

  // The step.
  void apply_schedule();  // hyper_'s lr (and betas) at schedule_t_
  Status update(float clip, StepStats& stats);
  // Every parameter from its master in the tier, as it is.
  Status restore_homes();
  // The optimizer state replaced by what `fill` writes into each piece (a
  // checkpoint's load), every parameter rewritten from its new master in the
  // same pass. With `all_or_nothing` (StateTier::replace), or on an atomic
  // tier, a failure keeps the old state, and the parameters are rewritten
  // from it (broken_ if that fails too); `filled` says whether `fill` ran at
  // all (a host tier without room for a second copy refuses before).
  Status overwrite_state(const PieceFn& fill, bool all_or_nothing, bool& filled);

  // Checkpoints (engine_checkpoint.cpp).
  Status write_state(const std::filesystem::path& path, std::vector<std::uint32_t>& crcs);
  // How checkpoint state files do I/O (the config's backend; a fault, once, for tests).
  StateIo checkpoint_io();
  // What does not fit this engine in `c` (and this rank's generator states).
  // The manifest against this engine (not the state file's bytes).
  Status check_checkpoint(const Checkpoint& c, torch::Tensor& cpu_rng,
                          torch::Tensor& device_rng) const;
  class HomeWriter;
  Status write_homes(HomeWriter& writer, const Piece& piece);  // the piece's parameters
  Status read_partition(const Partition& part, std::byte* out) const;
  std::vector<Segment> segments(const Piece& piece) const;
  // Elements into its partition's home of a segment of `p`.
  std::uint64_t home_offset(const Param& p, const Segment& seg) const;
  void take_busy(SteadyClock::time_point from, SteadyClock::time_point to);

  Config config_;
  EngineOptions options_;
  std::shared_ptr<torch::nn::Module> model_;
  std::unique_ptr<gpu::Device> device_;
  torch::Device torch_device_{torch::kCPU};
  std::unique_ptr<gpu::Stream> h2d_;
  std::unique_ptr<gpu::Stream> d2h_;
  // The pools before the stores that read and write them: a store, destroyed
  // first, waits for its requests in flight before the memory goes.
  std::unique_ptr<gpu::PinnedPool> param_pool_;     // NVMe reads, write-back
  std::unique_ptr<gpu::PinnedPool> grad_pool_;      // gradients leaving the device
  std::shared_ptr<detail::PartitionStore> store_;   // offload_param cpu/nvme homes
  std::vector<MemoryReport::NvmePath> nvme_paths_;  // what the swap paths are on
  std::vector<UnitRec> units_;
  std::vector<Param> params_;
  std::vector<Partition> partitions_;
  std::unique_ptr<Coordinator> coordinator_;
  AlignedBuffer grads_;  // fp32, the optimizer's layout
  std::unique_ptr<StateTier> tier_;
  std::unique_ptr<cpu_adam::Executor> executor_;       // the step
  std::unique_ptr<cpu_adam::Executor> grad_executor_;  // gradient accumulation
  cpu_adam::Hyper hyper_;
  LossScaler scaler_{Fp16Config{}};     // fp16: the loss scale
  std::optional<LrSchedule> schedule_;  // the config's scheduler block
  std::int64_t schedule_t_ = -1;        // its last_batch_iteration
  int num_states_ = 3;
  std::uint64_t gas_ = 1;
  std::uint64_t elements_ = 0;                // the model's
  std::uint64_t own_elements_ = 0;            // this rank's: the optimizer's space
  std::vector<std::size_t> group_partition_;  // the tier's groups' partitions
  std::size_t pieces_ = 0;
  bool host_pinned_ = true;  // offload_param cpu partitions are page-locked

  Phase phase_ = Phase::kIdle;
  std::optional<std::size_t> running_;    // the unit whose forward is running
  std::optional<DeviceCharges> charges_;  // the emulated device: LibTorch allocations count
  std::optional<ChargeScope> charge_;
  std::mutex read_mutex_;              // deferred_ and the units' nvme reads
  std::vector<std::size_t> deferred_;  // nvme fetches waiting for a buffer, in order
  std::vector<std::future<Status>> grad_jobs_;
  std::uint64_t micro_steps_ = 0;  // backwards in this accumulation window
  std::uint64_t global_steps_ = 0;
  std::uint64_t skipped_steps_ = 0;
  bool broken_ = false;  // homes could not be restored after a failed step

  // The job (see offload/job.hpp): one channel per thread that issues
  // collectives, so that each channel's order is the program's on every rank.
  std::shared_ptr<gpu::World> world_;
  int rank_ = 0;
  int world_size_ = 1;
  bool sharded_params_ = false;     // stage 3 on several ranks: homes hold this rank's shard
  bool partitioned_grads_ = false;  // stage 2-3 on several ranks: grads_ holds this rank's shard
  std::unique_ptr<gpu::Communicator> host_comm_;   // the driving thread, host buffers
  std::unique_ptr<gpu::Communicator> grad_comm_;   // the gradient worker, device buffers
  std::unique_ptr<gpu::Communicator> param_comm_;  // gathers into device memory
  // Partitioned gradients (stages 2-3 across ranks) collect on the device
  // by partition and are reduced there, in the order units complete; this
  // rank's shard then leaves for grads_. At most reduce_bucket_size elements
  // wait on the device (a partition larger than it alone).
  struct DeviceGrads {
    void* data = nullptr;
    std::size_t bytes = 0;
  };
  struct Reduction {
    std::future<Status> done;
    std::uint64_t elements = 0;
  };
  std::vector<DeviceGrads> device_grads_;    // by partition
  std::deque<Reduction> reductions_;         // queued on the grad worker, oldest first
  std::uint64_t waiting_grad_elements_ = 0;  // in device_grads_ and not yet waited for
  std::uint64_t comm_bytes_ = 0;             // the channels' bytes when the window opened

  // Measurement of the current accumulation window.
  struct Window {
    SteadyClock::time_point begin;
    SteadyClock::time_point micro_begin;
    bool open = false;
    std::uint64_t micro_steps = 0;
    double fwd_bwd_s = 0, compute_s = 0, param_read_s = 0, h2d_s = 0, d2h_s = 0, stall_s = 0;
    std::uint64_t nvme_read_bytes = 0, h2d_bytes = 0, d2h_bytes = 0, reduce_waits = 0;
    std::uint64_t store_read_bytes = 0;  // the parameter store's count at micro_begin
  };
  Window window_;
  BusyLog stall_;
  std::unique_ptr<Trace> trace_;                              // zinf.trace_path
  std::unique_ptr<OpRecorder> ops_;                           // with trace_: LibTorch's operators
  std::unordered_map<std::string, std::string> unit_of_key_;  // tracing: partition key to unit
  // Tracing: each unit's forward and backward a span on the compute stream
  // (timed as the device runs it), from its parameters in place (after its
  // stall) to the forward's return, or for backward to the next unit's or
  // backward()'s end.
  std::optional<std::size_t> in_backward_;  // the unit whose backward span is open
  void end_backward_span();
  StepReport report_;

  // Worker threads last: joined before what their jobs use goes away.
  Worker fetch_worker_;
  Worker grad_worker_;
  Worker gather_worker_;  // issues param_comm_'s gathers
};

}  // namespace zinf::offload
