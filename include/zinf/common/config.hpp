// The DeepSpeed JSON config, parsed into typed structs whose defaults are
// DeepSpeed's runtime defaults (see docs/ARCHITECTURE.md, "Config").
//
// Every key is one of three kinds. Acted on: parsed into the structs below,
// with DeepSpeed's accepted spellings (its stage3_ aliases, the deprecated
// cpu_offload, cpu_offload_param and "zero_optimization": true/false, "bfloat16"),
// where a wrong type, an out-of-range value or a spelling together with its
// alias is an error naming the file and the key path ("ds.json:
// aio.queue_depth: expected an integer >= 1, got \"8\""). Ignored: DeepSpeed
// keys zinf does not act on yet, accepted so that a DeepSpeed config runs as
// it is, collected in Config::ignored and logged once by the parse.
// Unknown to DeepSpeed too: an error. A DeepSpeed value of "auto" (which the
// HF Trainer replaces before DeepSpeed sees it) is an error saying so.
// Integer keys accept JSON numbers with an integral value (DeepSpeed configs
// write sizes as 5e8).
//
// zinf's own settings live in a top-level "zinf" block, so the DeepSpeed blocks
// keep exactly DeepSpeed's keys.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "zinf/common/status.hpp"

namespace zinf {

enum class IoBackend { kAuto, kIoUring, kLibAio, kPsync };
std::string_view to_string(IoBackend backend);
Result<IoBackend> parse_io_backend(std::string_view name);  // "auto", "io_uring", "libaio", "psync"

enum class OffloadDevice { kNone, kCpu, kNvme };
std::string_view to_string(OffloadDevice device);
Result<OffloadDevice> parse_offload_device(std::string_view name);  // "none", "cpu", "nvme"

// The DeepSpeed "aio" block.
struct AioConfig {
  std::uint64_t block_size = 1048576;  // bytes per I/O request
  std::uint32_t queue_depth = 8;       // requests in flight per ring/thread
  std::uint32_t intra_op_parallelism =
      1;                       // rings/threads per store ("thread_count" is a deprecated alias)
  bool single_submit = false;  // submit requests one at a time instead of in batches
  bool overlap_events = true;  // reap completions while submitting
  bool use_gds = false;        // GPUDirect Storage: not supported, must stay false
};

// zinf's own block: "zinf": {...}.
struct EngineConfig {
  IoBackend io_backend = IoBackend::kAuto;
  std::vector<std::string> nvme_paths;  // extra swap paths to stripe over (added to nvme_path)
  bool buffered_io_fallback =
      false;                        // allow buffered I/O (with a warning) where O_DIRECT is refused
  bool sqpoll = false;              // io_uring kernel submission polling
  bool checksum = true;             // CRC32C on every swapped extent
  std::uint32_t threads = 0;        // CPU optimizer threads (0 = all cores)
  std::string device = "auto";      // the engine's device: "auto", "cpu" (host-emulated), "cuda"
  std::uint64_t device_budget = 0;  // bytes the device may hold; 0: cpu unlimited, cuda all free
  // Activation checkpointing of every unit: its forward runs without saving
  // activations, and its backward gathers the unit again, recomputes the
  // forward and back-propagates through it (DeepSpeed's checkpoint(), which a
  // C++ model cannot call on a Python function). activation_checkpointing
  // configures it.
  bool checkpoint_units = false;
  // LibTorch's compute threads on the emulated device (intra-op and BLAS);
  // 0: one core fewer than the process may use (at least one), so that the
  // I/O, copy and optimizer threads keep a core, as a GPU leaves them.
  std::uint32_t compute_threads = 0;
  // Seconds a rank waits for the others (the rendezvous, a collective)
  // before it fails with an error naming what it waited for; torch's
  // default process-group timeout.
  std::uint32_t comm_timeout = 1800;
  // Seconds a swap I/O request may go without a completion before it is
  // cancelled; one still without a completion a timeout later is lost (its
  // operation fails, its buffer is retired until the kernel returns it).
  std::uint32_t io_timeout = 60;
  // A Chrome trace (Perfetto's JSON) of every step: each stage's busy
  // periods on a track of its own, counters per step. With several ranks,
  // rank R writes <stem>.rank<R><extension>. Empty: no trace.
  std::string trace_path;
};

struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  // DeepSpeed's meaning: the swap pool may hold this many fp32 buffers of the
  // largest sub-group, and one sub-group's update takes one per state plus
  // one for its gradient (4 for Adam), so fewer is an error. zinf streams
  // sub-groups through the pool in smaller pieces and takes at most that
  // much host memory (see make_nvme_tier).
  std::uint32_t buffer_count = 4;
  bool pin_memory = true;
};

struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::string nvme_path;
  std::uint32_t buffer_count = 5;
  std::uint64_t buffer_size = 100000000;  // elements
  bool pin_memory = true;
};

// zero_optimization, under the names zinf acts on (DeepSpeed's stage3_
// spellings; the short names are accepted as the same keys).
struct ZeroConfig {
  int stage = 0;
  std::uint64_t sub_group_size = 1000000000;
  std::uint64_t stage3_prefetch_bucket_size = 50000000;
  std::uint64_t stage3_param_persistence_threshold = 100000;
  std::uint64_t stage3_model_persistence_threshold = UINT64_MAX;
  std::uint64_t stage3_max_live_parameters = 1000000000;
  std::uint64_t stage3_max_reuse_distance = 1000000000;
  // Stages 2-3 across ranks: at most this many gradient elements wait on the
  // device for their reduction (a partition larger than it alone).
  std::uint64_t reduce_bucket_size = 500000000;
  // Stages 2-3 across ranks: a unit's gradients are reduced while the rest of
  // the backward runs (true), or the backward waits for each reduction
  // (false). Absent or null: DeepSpeed's default, true at stage 3 only.
  bool overlap_comm = false;
  OffloadParamConfig offload_param;
  OffloadOptimizerConfig offload_optimizer;
};

// The "optimizer" block. Each type takes only the params its DeepSpeed CPU
// optimizer takes, with that optimizer's defaults (Adagrad: lr 1e-2, eps 1e-10).
struct OptimizerConfig {
  std::string type = "AdamW";  // Adam, AdamW, Adagrad, Lion (case-insensitive in the file)
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Decoupled weight decay: type AdamW, or type Adam with adam_w_mode (true
  // by default, as in DeepSpeed; false is Adam's L2 penalty).
  bool adam_w_mode = true;
  bool bias_correction = true;
  // DeepSpeed's switch to torch.optim's Adam/AdamW; the same update, so zinf
  // keeps its own kernel and says so.
  bool torch_adam = false;
};

// The DeepSpeed "scheduler" block: a type and its params, with DeepSpeed's
// names and defaults (see zinf/common/lr_schedule.hpp for the formulas).
// Each type takes only its own params.
struct SchedulerConfig {
  std::string type;  // WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest
  // WarmupLR, WarmupDecayLR (warmup_*), WarmupCosineLR (warmup_num_steps, warmup_type)
  double warmup_min_lr = 0.0;
  std::optional<double> warmup_max_lr;  // unset: the optimizer's lr
  std::uint64_t warmup_num_steps = 1000;
  std::string warmup_type = "log";  // "log" or "linear"; DeepSpeed takes anything else as log
  std::optional<std::uint64_t> total_num_steps;  // WarmupDecayLR, WarmupCosineLR: required
  double warmup_min_ratio = 0.0;                 // WarmupCosineLR
  double cos_min_ratio = 0.0001;
  // OneCycle
  std::optional<double> cycle_min_lr, cycle_max_lr;  // required
  double decay_lr_rate = 0.0;
  std::uint64_t cycle_first_step_size = 2000;
  std::optional<std::uint64_t> cycle_second_step_size;  // unset: the first
  std::uint64_t cycle_first_stair_count = 0;
  std::optional<std::uint64_t> cycle_second_stair_count;  // unset: the first
  std::uint64_t decay_step_size = 0;
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8, cycle_max_mom = 0.9, decay_mom_rate = 0.0;
  // LRRangeTest
  double lr_range_test_min_lr = 1e-3;
  std::uint64_t lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;
};

struct Fp16Config {
  bool enabled = false;
  double loss_scale = 0.0;  // 0 = dynamic
  int initial_scale_power = 16;
  int loss_scale_window = 1000;
  int hysteresis = 2;
  bool consecutive_hysteresis = false;  // a clean step refills the hysteresis
  double min_loss_scale = 1.0;
};

// The DeepSpeed "activation_checkpointing" block, for checkpointed units
// (zinf.checkpoint_units).
struct ActivationCheckpointingConfig {
  bool cpu_checkpointing = false;                // saved unit inputs wait in host memory
  bool synchronize_checkpoint_boundary = false;  // device sync around each recompute
};

struct Config {
  std::string source = "<defaults>";  // the file (or "<string>") it was read from
  std::optional<std::uint64_t> train_batch_size;
  std::optional<std::uint64_t> train_micro_batch_size_per_gpu;
  std::optional<std::uint64_t> gradient_accumulation_steps;
  double gradient_clipping = 1.0;  // global L2 norm; 0 = off (DeepSpeed's default is 1.0)
  std::optional<std::uint64_t> steps_per_print;  // unset: no progress line (DeepSpeed's None)
  // The dtype gradients are reduced in across ranks (stages 2 and 3): "fp32",
  // "fp16" or "bf16"; empty (DeepSpeed's None): the gradients' own.
  std::string communication_data_type;
  std::optional<OptimizerConfig> optimizer;
  std::optional<SchedulerConfig> scheduler;
  Fp16Config fp16;
  bool bf16_enabled = false;
  ActivationCheckpointingConfig activation_checkpointing;
  AioConfig aio;
  ZeroConfig zero_optimization;
  EngineConfig zinf;
  // The DeepSpeed keys in the file that zinf does not act on, each as
  // "key.path (why)".
  std::vector<std::string> ignored;

  static Result<Config> from_file(const std::filesystem::path& path);
  static Result<Config> from_string(std::string_view json, std::string_view source = "<string>");

  // Fills in the batch key left out (batch = micro x accumulation x world), or
  // checks the three agree. Errors name the keys and the numbers.
  Status resolve_batch(std::uint64_t world_size);

  // The swap paths: offload_optimizer.nvme_path / offload_param.nvme_path
  // first (whichever are set), then zinf.nvme_paths, without repeats.
  std::vector<std::string> swap_paths() const;
};

// The effective settings, every key zinf reads with its value after
// defaults, as a DeepSpeed JSON config (the "config" of train_gpt --json).
std::string to_json(const Config& config, int indent = 2);

// Renders the "aio" block as DeepSpeed JSON with the keys the runtime reads
// (what swapbench --tune emits).
std::string to_json(const AioConfig& aio, int indent = 2);

}  // namespace zinf
