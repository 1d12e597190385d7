// The stage-3 engine (deepspeed.initialize for a LibTorch program): trains a
// model whose parameters need not fit on the device.
//
//   auto cfg = zinf::Config::from_file("ds_config.json");   // a DeepSpeed config
//   GPT model = zinf::partitioned(*cfg, [&] { return GPT(opts); });
//   zinf::Engine<GPT> engine(model, *cfg);
//   for (...) {
//     auto loss = torch::cross_entropy_loss(engine(x.to(engine.device())), y);
//     engine.backward(loss);
//     engine.step();
//   }
//
// Where things live (zero_optimization):
//   - each unit's parameters (see zinf/offload/unit.hpp; everything outside
//     every unit is the root unit) are one flat partition in their home:
//     the device (offload_param.device "none"), pinned host memory ("cpu") or
//     NVMe ("nvme"). Parameters of at most stage3_param_persistence_threshold
//     elements stay on the device. The parameter coordinator gathers a unit
//     onto the device before it runs and releases it after, prefetching along
//     the recorded order (stage3_prefetch_bucket_size,
//     stage3_max_live_parameters, stage3_max_reuse_distance);
//   - gradients go to host memory (fp32, accumulated over
//     gradient_accumulation_steps) as backward produces them;
//   - the optimizer's fp32 master weights and moments live in
//     offload_optimizer's tier ("cpu" or "nvme"); step() runs the CPU
//     optimizer over them in pieces and writes the updated parameters, in
//     their own dtype, to their home.
//
// The device is `zinf.device` ("auto", "cpu" = host-emulated, "cuda") with a
// budget `zinf.device_budget` in bytes (EngineOptions override both). On the
// emulated device every LibTorch allocation made during the engine's forward
// and backward counts against the budget too (activations, gradients).
//
// Errors are zinf::Error naming the unit, config key or file. A failure in
// forward, backward or step leaves parameters and optimizer state as before
// the step (a failed backward drops the gradients accumulated in the current
// accumulation window).
//
// Several ranks (a job started by zinf-launch, torchrun or mpirun: RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT): each rank feeds its own
// micro-batches, and the ranks train one model, as DeepSpeed's data
// parallelism does. Gradients are averaged over the ranks; each rank holds
// 1/N of the optimizer state (stage 1), of the gradients (stage 2) and of
// the parameters (stage 3: in offload_param's tier, or on the device when
// it is "none"), and gathers the rest when it is used. Every rank must
// call the engine in the same order (forward, backward, step,
// save_checkpoint, consolidated_parameters); a rank that stops makes the
// others fail after zinf.comm_timeout seconds.
//
// Thread safety: one thread drives an engine (as a LibTorch model and
// optimizer). The model is owned by the engine while it lives; its
// parameters hold values only while gathered (read them with
// consolidated_parameters()).
#pragma once

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "zinf/common/config.hpp"
#include "zinf/offload/unit.hpp"
#include "zinf/swap/file.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf {

struct EngineOptions {
  std::optional<std::string> device;               // overrides zinf.device
  std::optional<std::uint64_t> device_budget;      // overrides zinf.device_budget (bytes)
  std::optional<swap::FaultSpec> param_fault;      // injected on the parameter swap store
  std::optional<swap::FaultSpec> optimizer_fault;  // and on the optimizer's
  // And on the state-file I/O of the next save_checkpoint or load_checkpoint
  // (that one only; a load's check and its read each count from the first).
  std::optional<swap::FaultSpec> checkpoint_fault;
};

// One optimizer step: its micro-steps' forwards and backwards, then the
// update. Times are seconds; a stage's time is the union of its busy
// intervals, so stages that overlap are not added up.
struct StepReport {
  std::uint64_t step = 0;  // global steps after this one
  std::uint64_t micro_steps = 0;
  bool skipped = false;  // a gradient was inf or nan: nothing was updated
  double grad_norm = 0;
  double lr = 0;          // the learning rate this step ran with (the schedule's, if any)
  double loss_scale = 1;  // fp16: the scale of this step's backward (1 without fp16)
  double wall_s = 0;
  // forward + backward of every micro-step, and the stages inside it
  double fwd_bwd_s = 0;
  double compute_s = 0;     // the compute stream working (wall minus stalls)
  double param_read_s = 0;  // NVMe reads of parameters
  double h2d_s = 0;
  double d2h_s = 0;
  double stall_s = 0;  // compute waiting: for parameters, for reductions
  // Reductions the backward waited for: to make room in reduce_bucket_size,
  // or each one without overlap_comm (stages 2-3 across ranks).
  std::uint64_t reduce_waits = 0;
  // the update
  double step_s = 0;
  double cpu_adam_s = 0;
  double optim_io_s = 0;  // the optimizer's NVMe reads and writes, with parameter write-back
  std::uint64_t nvme_read_bytes = 0;    // param_read_bytes + optim_read_bytes
  std::uint64_t nvme_write_bytes = 0;   // param_write_bytes + optim_write_bytes
  std::uint64_t param_read_bytes = 0;   // parameters read in forward and backward
  std::uint64_t param_write_bytes = 0;  // updated parameters written back in the step
  std::uint64_t optim_read_bytes = 0;   // the optimizer's state read in the step
  std::uint64_t optim_write_bytes = 0;
  std::uint64_t h2d_bytes = 0;
  std::uint64_t d2h_bytes = 0;
  // collectives between ranks (none in a world of one): the time any was in
  // flight, in forward, backward and the update, and the bytes handed to them
  double comm_s = 0;
  std::uint64_t comm_bytes = 0;
};

// The parameter coordinator's counters, since the engine was built.
struct CoordinatorStats {
  std::uint64_t fetches = 0;        // on demand: not on the device when needed
  std::uint64_t prefetches = 0;     // fetched ahead of use
  std::uint64_t prefetch_hits = 0;  // uses that found their unit fetched ahead
  std::uint64_t reuse_hits = 0;     // uses that found their unit kept from before
  std::uint64_t releases = 0;
  std::uint64_t evictions = 0;  // releases forced by stage3_max_live_parameters or a full device
  std::uint64_t staged = 0;     // NVMe reads started beyond the device window
  std::uint64_t trace_invalidations = 0;
  std::uint64_t gathers_ahead = 0;  // stage 3 on several ranks: all-gathers issued before the use
  std::uint64_t live_elements = 0;
  std::uint64_t peak_live_elements = 0;
};

// Memory per tier, in bytes.
struct MemoryReport {
  std::string device;  // Device::describe()
  std::uint64_t device_budget = 0;
  std::uint64_t device_live = 0;
  std::uint64_t device_peak = 0;  // since the engine was built or the last reset_peak_memory()
  std::uint64_t host_params = 0;  // offload_param cpu: the partitions
  std::uint64_t host_param_buffers = 0;  // pinned buffers for NVMe reads and write-back
  std::uint64_t host_grads = 0;          // the fp32 gradient accumulator
  std::uint64_t host_grad_buffers = 0;   // pinned buffers for gradients leaving the device
  std::uint64_t host_optimizer = 0;      // optimizer state (cpu) or its swap buffers (nvme)
  std::uint64_t nvme_params = 0;
  std::uint64_t nvme_optimizer = 0;
  bool pinned = false;         // every host buffer above is page-locked
  bool fixed_buffers = false;  // every NVMe store moves its buffers as io_uring fixed buffers
  // Where the NVMe bytes above live: each swap path the engine uses, with
  // what it is on (file system, block device, virtual or not, RAM-backed,
  // and RLIMIT_MEMLOCK), as swapbench reports it.
  struct NvmePath {
    std::string role;  // "offload_param" or "offload_optimizer"
    std::string path;
    swap::StorageInfo storage;
  };
  std::vector<NvmePath> nvme_paths;
};

// Sets LibTorch's CPU compute threads: its intra-op threads and, where
// LibTorch's BLAS is OpenBLAS, OpenBLAS's (which otherwise spin on every
// core). threads = 0: one fewer than the cores this process may use, at
// least one. Returns the number set. An Engine on the emulated device calls
// it with zinf.compute_threads; a LibTorch program compared with one (as
// train_gpt --reference torch) calls it with the same number.
int set_host_compute_threads(int threads = 0);

// This process's place in the job its launcher started (RANK and
// WORLD_SIZE, or mpirun's OMPI_COMM_WORLD_*): {0, 1} without a launcher.
// For what a program does before its Engine exists (its share of the data,
// the batch keys). Throws zinf::Error naming a malformed variable.
struct JobPlace {
  int rank = 0;
  int world_size = 1;
};
JobPlace job_place();

namespace offload {
class EngineImpl;
}

class EngineBase {
 public:
  EngineBase(std::shared_ptr<torch::nn::Module> model, const Config& config, EngineOptions options);
  virtual ~EngineBase();
  EngineBase(const EngineBase&) = delete;
  EngineBase& operator=(const EngineBase&) = delete;

  // loss.backward() with the engine's hooks; the loss is divided by
  // gradient_accumulation_steps (DeepSpeed's default) and, with fp16,
  // multiplied by the current loss scale (see zinf/common/loss_scaler.hpp;
  // an overflowing step is skipped, and an overflow at min_loss_scale throws).
  void backward(const torch::Tensor& loss);
  // On the last micro-step of an accumulation window: clips, updates, writes
  // the parameters back, and steps the config's "scheduler" (after an
  // applied update only, as DeepSpeed). On the others it only counts the
  // micro-step.
  void step();
  bool is_gradient_accumulation_boundary() const;

  // DeepSpeed's save_checkpoint(dir, tag): at an accumulation boundary,
  // writes dir/tag/ (tag "" is "global_step<N>") and then dir/latest, so
  // that a crash at any instant leaves the previous checkpoint or this one
  // whole. The fp32 optimizer state (parameters are their masters rounded),
  // the step counters, the scheduler's position, the loss scaler and the
  // random generators' states; each file with its CRC32C. NVMe-resident
  // state streams through the tier's buffers.
  void save_checkpoint(const std::filesystem::path& dir, const std::string& tag = "");
  // Loads dir/tag (tag "": the one dir/latest names) into this engine, built
  // from the same model and config: world size, optimizer, every
  // parameter's name, shape and dtype, sizes and checksums are checked first,
  // and any mismatch is an error saying what differs, with nothing changed.
  // Training on from it equals never having stopped, bit for bit.
  void load_checkpoint(const std::filesystem::path& dir, const std::string& tag = "");

  // Where inputs go: the device's torch::Device.
  torch::Device device() const;
  // This process's place in the job (RANK and WORLD_SIZE; 0 and 1 alone).
  int rank() const;
  int world_size() const;
  // The mean of `value` over the ranks (a loss to report); every rank calls it.
  double mean_over_ranks(double value);
  const Config& config() const;
  std::uint64_t global_steps() const;
  std::uint64_t skipped_steps() const;
  const StepReport& last_step_report() const;
  CoordinatorStats coordinator_stats() const;
  MemoryReport memory_report() const;
  void reset_peak_memory();
  // Every parameter's current value, on the CPU in its dtype, by name
  // (read from the home tiers; nothing is gathered onto the device).
  torch::OrderedDict<std::string, torch::Tensor> consolidated_parameters() const;

 protected:
  // One forward through the model: begin_forward() before model->forward,
  // end_forward(outputs) after; fail_forward() when it threw.
  void begin_forward();
  std::vector<torch::Tensor> end_forward(std::vector<torch::Tensor> outputs);
  [[noreturn]] void fail_forward(const std::exception& error);

 private:
  std::unique_ptr<offload::EngineImpl> impl_;
};

template <typename Model>
class Engine : public EngineBase {
 public:
  Engine(Model model, const Config& config, EngineOptions options = {})
      : EngineBase(model.ptr(), config, std::move(options)), model_(std::move(model)) {}

  // The model's forward, with the root unit gathered. Returns what forward
  // returns (a Tensor, std::vector<Tensor> or a tuple of Tensors).
  template <typename... Args>
  auto operator()(Args&&... args) {
    begin_forward();
    try {
      return finish(model_->forward(std::forward<Args>(args)...));
    } catch (const std::exception& e) {
      fail_forward(e);  // rethrows as zinf::Error, naming the released units
    }
  }

  Model& module() { return model_; }

 private:
  template <typename Out>
  Out finish(Out out) {
    using O = detail::Outputs<Out>;
    return O::unflatten(end_forward(O::flatten(std::move(out))));
  }

  Model model_;
};

}  // namespace zinf
