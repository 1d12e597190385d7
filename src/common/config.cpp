#include "zinf/common/config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "zinf/common/logging.hpp"

namespace zinf {
namespace {

using json = nlohmann::json;

// Top-level DeepSpeed keys zinf does not act on yet: a DeepSpeed config keeps
// working, and Config::ignored lists them.
const std::set<std::string, std::less<>> kTopLevelIgnored = {"wall_clock_breakdown",
                                                             "memory_breakdown",
                                                             "flops_profiler",
                                                             "tensorboard",
                                                             "wandb",
                                                             "csv_monitor",
                                                             "comet",
                                                             "comms_logger",
                                                             "prescale_gradients",
                                                             "gradient_predivide_factor",
                                                             "seq_parallel_comm_data_type",
                                                             "zero_allow_untested_optimizer",
                                                             "zero_force_ds_cpu_optimizer",
                                                             "amp",
                                                             "data_types",
                                                             "dump_state",
                                                             "sparse_gradients",
                                                             "sparse_attention",
                                                             "elasticity",
                                                             "autotuning",
                                                             "checkpoint",
                                                             "data_efficiency",
                                                             "compression_training",
                                                             "pipeline",
                                                             "timers",
                                                             "disable_allgather",
                                                             "curriculum_learning",
                                                             "eigenvalue",
                                                             "progressive_layer_drop",
                                                             "quantize_training",
                                                             "dataloader_drop_last",
                                                             "nebula",
                                                             "compile",
                                                             "weight_quantization",
                                                             "hybrid_engine",
                                                             "aio_config",
                                                             "graph_harvesting",
                                                             "use_data_before_expert_parallelism"};

// zero_optimization keys zinf does not act on yet. Most concern collectives
// between ranks, which one process does not have (issue "many ranks").
const std::set<std::string, std::less<>> kZeroIgnored = {
    "contiguous_gradients",
    "reduce_scatter",
    "use_multi_rank_bucket_allreduce",
    "allgather_partitions",
    "allgather_bucket_size",
    "load_from_fp32_weights",
    "elastic_checkpoint",
    "module_granularity_threshold",
    "stage3_module_granularity_threshold",
    "use_all_reduce_for_fetch_params",
    "stage3_use_all_reduce_for_fetch_params",
    "gather_16bit_weights_on_model_save",
    "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
    "ignore_unused_parameters",
    "legacy_stage1",
    "round_robin_gradients",
    "zero_hpz_partition_size",
    "zero_quantized_weights",
    "zero_quantized_nontrainable_weights",
    "zero_quantized_gradients",
    "zeropp_loco_param",
    "mics_shard_size",
    "mics_hierarchical_params_gather",
    "memory_efficient_linear",
    "pipeline_loading_checkpoint",
    "override_module_apply",
    "log_trace_cache_warnings",
    "cpu_offload_use_pin_memory"};

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// What every reader of one parse shares.
struct ParseContext {
  std::string source;
  std::vector<std::string>* ignored;
};

// Reads one JSON object, remembering which keys were read so that what is left
// is reported as unknown. The first error wins; later reads become no-ops.
// In DeepSpeed's blocks (not zinf's own), a value of "auto" is an error.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string path, ParseContext& context, bool deepspeed = true)
      : object_(object), path_(std::move(path)), context_(context), deepspeed_(deepspeed) {
    if (!object_.is_object()) fail_at("", "expected an object, got " + describe(object_));
  }

  bool has(std::string_view key) const { return ok() && object_.contains(key); }

  void read(std::string_view key, bool& out) {
    const json* v = take(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) return fail_at(key, "expected true or false, got " + describe(*v));
    out = v->get<bool>();
  }

  void read(std::string_view key, std::string& out) {
    const json* v = take(key);
    if (v == nullptr) return;
    if (!v->is_string()) return fail_at(key, "expected a string, got " + describe(*v));
    out = v->get<std::string>();
  }

  void read(std::string_view key, double& out,
            double min = -std::numeric_limits<double>::infinity(),
            double max = std::numeric_limits<double>::infinity()) {
    const json* v = take(key);
    if (v == nullptr) return;
    if (!v->is_number()) return fail_at(key, "expected a number, got " + describe(*v));
    double d = v->get<double>();
    if (!std::isfinite(d) || d < min || d > max) {
      std::ostringstream msg;
      msg << "expected a number in [" << min << ", " << max << "], got " << describe(*v);
      return fail_at(key, msg.str());
    }
    out = d;
  }

  template <typename Number>
  void read(std::string_view key, std::optional<Number>& out, double min) {
    if (!has(key)) return;
    Number value{};
    read(key, value, min);
    out = value;
  }

  template <typename Int>
  void read_int(std::string_view key, Int& out, std::uint64_t min = 0,
                std::uint64_t max = std::numeric_limits<Int>::max()) {
    const json* v = take(key);
    if (v == nullptr) return;
    std::uint64_t value = 0;
    bool integral = false;
    if (v->is_number_unsigned()) {
      value = v->get<std::uint64_t>();
      integral = true;
    } else if (v->is_number_integer()) {
      integral = v->get<std::int64_t>() >= 0;
      value = integral ? static_cast<std::uint64_t>(v->get<std::int64_t>()) : 0;
    } else if (v->is_number_float()) {
      double d = v->get<double>();
      integral = std::isfinite(d) && d >= 0 && d <= 1.8e19 && std::floor(d) == d;
      value = integral ? static_cast<std::uint64_t>(d) : 0;
    }
    if (!integral || value < min || value > max) {
      std::string range = max == std::numeric_limits<Int>::max()
                              ? " >= " + std::to_string(min)
                              : " in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
      return fail_at(key, "expected an integer" + range + ", got " + describe(*v));
    }
    out = static_cast<Int>(value);
  }

  template <typename Int>
  void read_int(std::string_view key, std::optional<Int>& out, std::uint64_t min = 0) {
    if (!has(key)) return;
    Int value{};
    read_int(key, value, min);
    out = value;
  }

  void read_device(std::string_view key, OffloadDevice& out) {
    std::string name(to_string(out));
    read(key, name);
    if (!ok() || !object_.contains(key)) return;
    auto parsed = parse_offload_device(name);
    if (!parsed.is_ok()) return fail_at(key, parsed.status().message());
    out = *parsed;
  }

  // A nested object: `parse` is called with a reader for it.
  template <typename Fn>
  void read_object(std::string_view key, Fn&& parse, bool deepspeed = true) {
    const json* v = take(key);
    if (v == nullptr) return;
    ObjectReader child(*v, join(key), context_, deepspeed && deepspeed_);
    if (child.ok()) parse(child);
    if (child.ok()) child.check_unknown();
    if (!child.ok() && status_.is_ok()) status_ = child.status_;
  }

  // The spelling of a key that has an alias (DeepSpeed's pydantic aliases,
  // a deprecated name): whichever the file uses; both is an error.
  std::string spelling(std::string_view name, std::string_view alias) {
    if (has(name) && has(alias)) {
      fail_at(alias, "is the same setting as " + join(name) + "; give one of them");
    }
    return std::string(has(alias) ? alias : name);
  }

  // A DeepSpeed key zinf accepts without acting on it: listed in Config::ignored.
  void ignore(std::string_view key, std::string_view why) {
    if (take(key) == nullptr) return;
    list_ignored(key, why);
  }
  // The same for a key already read (and checked).
  void list_ignored(std::string_view key, std::string_view why) {
    if (has(key)) context_.ignored->push_back(join(key) + " (" + std::string(why) + ")");
  }

  // A key that must be consumed without being read (handled elsewhere).
  const json* take(std::string_view key) {
    if (!ok()) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end()) return nullptr;
    seen_.insert(std::string(key));
    if (deepspeed_ && it->is_string() && it->get<std::string>() == "auto") {
      fail_at(key,
              "\"auto\" is resolved by the HF Trainer before DeepSpeed reads the config; "
              "put a value (or leave the key out for DeepSpeed's default)");
      return nullptr;
    }
    return &*it;
  }

  void fail_at(std::string_view key, const std::string& message) {
    if (!ok()) return;
    std::string where =
        key.empty() ? (path_.empty() ? std::string("top level") : path_) : join(key);
    status_ = Status::invalid_argument(context_.source + ": " + where + ": " + message);
  }

  void check_unknown() {
    if (!ok()) return;
    for (const auto& [key, value] : object_.items()) {
      if (seen_.count(key) == 0) return fail_at(key, "unknown key");
    }
  }

  bool ok() const { return status_.is_ok(); }
  const Status& status() const { return status_; }

  // "file.json: aio.thread_count", for warnings.
  std::string where(std::string_view key) const { return context_.source + ": " + join(key); }

  std::string join(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

 private:
  const json& object_;
  std::string path_;
  ParseContext& context_;
  bool deepspeed_;
  std::set<std::string, std::less<>> seen_;
  Status status_;
};

void parse_aio(ObjectReader& r, AioConfig& aio) {
  r.read_int("block_size", aio.block_size, 4096, std::uint64_t{1} << 30);
  r.read_int("queue_depth", aio.queue_depth, 1, 65536);
  if (r.has("thread_count")) {
    ZINF_LOG(kWarn) << r.where("thread_count") << " is deprecated: use intra_op_parallelism";
  }
  r.read_int(r.spelling("intra_op_parallelism", "thread_count"), aio.intra_op_parallelism, 1, 256);
  r.read("single_submit", aio.single_submit);
  r.read("overlap_events", aio.overlap_events);
  r.read("use_gds", aio.use_gds);
  if (r.ok() && aio.block_size % 4096 != 0) {
    r.fail_at("block_size",
              "must be a multiple of 4096 (O_DIRECT), got " + std::to_string(aio.block_size));
  }
  if (r.ok() && aio.use_gds) {
    r.fail_at("use_gds", "GPUDirect Storage is not supported by zinf; set it to false");
  }
}

void parse_engine(ObjectReader& r, EngineConfig& e) {
  std::string backend(to_string(e.io_backend));
  r.read("io_backend", backend);
  if (r.ok()) {
    auto parsed = parse_io_backend(backend);
    if (!parsed.is_ok()) return r.fail_at("io_backend", parsed.status().message());
    e.io_backend = *parsed;
  }
  if (const json* paths = r.take("nvme_paths")) {
    if (!paths->is_array())
      return r.fail_at("nvme_paths", "expected an array of paths, got " + describe(*paths));
    for (const auto& p : *paths) {
      if (!p.is_string() || p.get<std::string>().empty()) {
        return r.fail_at("nvme_paths", "expected non-empty path strings, got " + describe(p));
      }
      e.nvme_paths.push_back(p.get<std::string>());
    }
  }
  r.read("buffered_io_fallback", e.buffered_io_fallback);
  r.read("sqpoll", e.sqpoll);
  r.read("checksum", e.checksum);
  r.read_int("threads", e.threads, 0, 4096);
  r.read("device", e.device);
  if (r.ok() && e.device != "auto" && e.device != "cpu" && e.device != "cuda") {
    r.fail_at("device",
              "expected \"auto\", \"cpu\" (host-emulated) or \"cuda\", got \"" + e.device + "\"");
  }
  r.read_int("device_budget", e.device_budget);
  r.read("checkpoint_units", e.checkpoint_units);
  r.read_int("compute_threads", e.compute_threads, 0, 4096);
  r.read_int("comm_timeout", e.comm_timeout, 1, 7 * 24 * 3600);
  r.read_int("io_timeout", e.io_timeout, 1, 7 * 24 * 3600);
  r.read("trace_path", e.trace_path);
}

void parse_activation_checkpointing(ObjectReader& r, ActivationCheckpointingConfig& a) {
  r.read("cpu_checkpointing", a.cpu_checkpointing);
  r.read("synchronize_checkpoint_boundary", a.synchronize_checkpoint_boundary);
  // Checked as DeepSpeed's configure() checks them, then not acted on.
  bool partition = false, contiguous = false;
  r.read("partition_activations", partition);
  r.read("contiguous_memory_optimization", contiguous);
  std::optional<std::uint64_t> number;
  if (r.has("number_checkpoints") && !r.take("number_checkpoints")->is_null())
    r.read_int("number_checkpoints", number, 1);
  if (r.ok() && contiguous && !partition) {
    return r.fail_at("contiguous_memory_optimization",
                     "needs partition_activations, as in DeepSpeed");
  }
  if (r.ok() && contiguous && !number) {
    return r.fail_at("contiguous_memory_optimization",
                     "needs number_checkpoints (the number of checkpointed layers), as in "
                     "DeepSpeed");
  }
  r.list_ignored("partition_activations", "one process has no model-parallel ranks to split over");
  r.list_ignored("contiguous_memory_optimization", "zinf's allocator needs no checkpoint buffers");
  r.list_ignored("number_checkpoints", "zinf's allocator needs no checkpoint buffers");
  r.ignore("profile", "not implemented by zinf yet");
}

void parse_offload_optimizer(ObjectReader& r, OffloadOptimizerConfig& o) {
  r.read_device("device", o.device);
  r.read("nvme_path", o.nvme_path);
  r.read_int("buffer_count", o.buffer_count, 1);
  r.read("pin_memory", o.pin_memory);
  r.ignore("pipeline_read", "zinf always overlaps the reads with the update");
  r.ignore("pipeline_write", "zinf always overlaps the writes with the update");
  r.ignore("fast_init", "zinf writes the initial state once, in I/O-sized pieces");
  double ratio = 1.0;
  r.read("ratio", ratio, 0.0, 1.0);
  if (r.ok() && ratio != 1.0) {
    r.fail_at("ratio", "partial optimizer offload is not implemented by zinf; leave it at 1.0");
  }
  if (r.ok() && o.device == OffloadDevice::kNvme && o.nvme_path.empty()) {
    r.fail_at("nvme_path", "is required when device is \"nvme\"");
  }
}

void parse_offload_param(ObjectReader& r, OffloadParamConfig& o) {
  r.read_device("device", o.device);
  r.read("nvme_path", o.nvme_path);
  r.read_int("buffer_count", o.buffer_count, 1, 1024);
  r.read_int("buffer_size", o.buffer_size, 1);
  r.ignore("max_in_cpu", "zinf keeps no NVMe parameters in host memory beyond its pinned pool");
  r.read("pin_memory", o.pin_memory);
  if (r.ok() && o.device == OffloadDevice::kNvme && o.nvme_path.empty()) {
    r.fail_at("nvme_path", "is required when device is \"nvme\"");
  }
}

// The deprecated boolean for an offload block: true means device "cpu".
// Together with the block it replaces, an error (as in DeepSpeed).
template <typename Block>
void read_deprecated_offload(ObjectReader& r, std::string_view key, std::string_view block,
                             Block& out) {
  if (!r.has(key)) return;
  if (r.has(block)) {
    return r.fail_at(
        key, "is the deprecated spelling of " + r.join(block) + "; give only " + r.join(block));
  }
  bool on = false;
  r.read(key, on);
  ZINF_LOG(kWarn) << r.where(key) << " is deprecated: use " << r.join(block)
                  << " {\"device\": \"cpu\"}";
  if (on) out.device = OffloadDevice::kCpu;
}

void parse_zero(ObjectReader& r, ZeroConfig& z) {
  r.read_int("stage", z.stage, 0, 3);
  r.read_int("sub_group_size", z.sub_group_size, 1);
  // DeepSpeed's field names are the short ones; the stage3_ spellings are
  // its aliases (and what its docs show).
  r.read_int(r.spelling("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
             z.stage3_prefetch_bucket_size);
  r.read_int(r.spelling("stage3_param_persistence_threshold", "param_persistence_threshold"),
             z.stage3_param_persistence_threshold);
  r.read_int(r.spelling("stage3_model_persistence_threshold", "model_persistence_threshold"),
             z.stage3_model_persistence_threshold);
  r.read_int(r.spelling("stage3_max_live_parameters", "max_live_parameters"),
             z.stage3_max_live_parameters);
  r.read_int(r.spelling("stage3_max_reuse_distance", "max_reuse_distance"),
             z.stage3_max_reuse_distance);
  r.read_int("reduce_bucket_size", z.reduce_bucket_size, 1);
  z.overlap_comm = z.stage == 3;  // DeepSpeed's default, for null too
  if (const json* v = r.take("overlap_comm"); v != nullptr && !v->is_null())
    r.read("overlap_comm", z.overlap_comm);
  read_deprecated_offload(r, "cpu_offload", "offload_optimizer", z.offload_optimizer);
  read_deprecated_offload(r, "cpu_offload_param", "offload_param", z.offload_param);
  r.read_object("offload_param", [&](ObjectReader& c) { parse_offload_param(c, z.offload_param); });
  r.read_object("offload_optimizer",
                [&](ObjectReader& c) { parse_offload_optimizer(c, z.offload_optimizer); });
  for (const auto& key : kZeroIgnored) {
    r.ignore(key, key == "cpu_offload_use_pin_memory" ? "deprecated, no effect in DeepSpeed either"
                                                      : "not implemented by zinf yet");
  }
  if (r.ok() && z.offload_param.device != OffloadDevice::kNone && z.stage != 3) {
    r.fail_at("offload_param", "parameter offload needs stage 3 (zero_optimization.stage is " +
                                   std::to_string(z.stage) + ")");
  }
}

std::string lowercase(std::string_view text) {
  std::string out;
  for (char c : text) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

void parse_optimizer(ObjectReader& r, OptimizerConfig& o) {
  r.read("type", o.type);
  if (!r.ok()) return;
  // DeepSpeed's type names are case-insensitive.
  const std::string type = lowercase(o.type);
  if (type == "adam" || type == "adamw") {
    o.type = type == "adam" ? "Adam" : "AdamW";
  } else if (type == "adagrad") {
    o.type = "Adagrad";
    o.lr = 1e-2;  // DeepSpeedCPUAdagrad's defaults
    o.eps = 1e-10;
  } else if (type == "lion") {
    o.type = "Lion";
  } else {
    return r.fail_at("type",
                     "unsupported optimizer \"" + o.type + "\" (Adam, AdamW, Adagrad, Lion)");
  }
  r.ignore("legacy_fusion", "no effect in zinf");
  const bool adam = o.type == "Adam" || o.type == "AdamW";
  r.read_object("params", [&](ObjectReader& p) {
    p.read("lr", o.lr, 0.0);
    if (p.has("max_grad_norm")) {
      return p.fail_at("max_grad_norm",
                       "is not an optimizer parameter (DeepSpeed refuses it too); use the "
                       "top-level gradient_clipping");
    }
    if (o.type != "Adagrad") {
      if (const json* betas = p.take("betas")) {
        if (!betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() ||
            !(*betas)[1].is_number()) {
          return p.fail_at("betas", "expected [beta1, beta2], got " + describe(*betas));
        }
        o.beta1 = (*betas)[0].get<double>();
        o.beta2 = (*betas)[1].get<double>();
        if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1)) {
          return p.fail_at("betas", "each beta must be in [0, 1), got " + describe(*betas));
        }
      }
    }
    if (o.type != "Lion") p.read("eps", o.eps, 0.0);
    p.read("weight_decay", o.weight_decay, 0.0);
    if (adam) {
      p.read("adam_w_mode", o.adam_w_mode);
      p.read("bias_correction", o.bias_correction);
      p.read("torch_adam", o.torch_adam);
    }
    if (o.type != "Lion") {
      bool amsgrad = false;
      p.read("amsgrad", amsgrad);
      if (p.ok() && amsgrad) p.fail_at("amsgrad", "AMSGrad is not implemented by zinf");
    }
    bool fp32_states = true;
    p.read("fp32_optimizer_states", fp32_states);
    if (p.ok() && !fp32_states) {
      p.fail_at("fp32_optimizer_states", "zinf keeps optimizer states in fp32; leave it true");
    }
  });
  if (o.type == "AdamW") o.adam_w_mode = true;
  if (r.ok() && o.torch_adam) {
    ZINF_LOG(kInfo) << r.where("params.torch_adam")
                    << ": zinf runs its own CPU kernel, which computes torch.optim's "
                    << (o.adam_w_mode ? "AdamW" : "Adam") << " update";
  }
}

void parse_scheduler(ObjectReader& r, SchedulerConfig& c) {
  r.read("type", c.type);
  static const std::set<std::string, std::less<>> kTypes = {
      "WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"};
  if (!r.ok()) return;
  if (kTypes.count(c.type) == 0) {
    // DeepSpeed then looks the name up in torch.optim.lr_scheduler, which a
    // C++ program does not have.
    return r.fail_at("type", "unsupported scheduler \"" + c.type +
                                 "\" (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, "
                                 "LRRangeTest; the names are case-sensitive, as in DeepSpeed)");
  }
  r.read_object("params", [&](ObjectReader& p) {
    const bool warmup = c.type == "WarmupLR" || c.type == "WarmupDecayLR";
    if (warmup) {
      p.read("warmup_min_lr", c.warmup_min_lr, 0.0);
      p.read("warmup_max_lr", c.warmup_max_lr, 0.0);
    }
    if (warmup || c.type == "WarmupCosineLR") {
      p.read_int("warmup_num_steps", c.warmup_num_steps);
      p.read("warmup_type", c.warmup_type);
      if (p.ok() && c.warmup_type != "log" && c.warmup_type != "linear") {
        ZINF_LOG(kWarn) << p.where("warmup_type") << " \"" << c.warmup_type
                        << "\" is neither \"log\" nor \"linear\"; using log, as DeepSpeed does";
        c.warmup_type = "log";
      }
    }
    if (c.type == "WarmupDecayLR" || c.type == "WarmupCosineLR")
      p.read_int("total_num_steps", c.total_num_steps, 1);
    if (c.type == "WarmupCosineLR") {
      p.read("warmup_min_ratio", c.warmup_min_ratio, 0.0, 1.0);
      p.read("cos_min_ratio", c.cos_min_ratio, 0.0, 1.0);
    }
    if (c.type == "OneCycle") {
      p.read("cycle_min_lr", c.cycle_min_lr, 0.0);
      p.read("cycle_max_lr", c.cycle_max_lr, 0.0);
      p.read("decay_lr_rate", c.decay_lr_rate, 0.0);
      p.read_int("cycle_first_step_size", c.cycle_first_step_size, 1);
      p.read_int("cycle_second_step_size", c.cycle_second_step_size, 1);
      p.read_int("cycle_first_stair_count", c.cycle_first_stair_count);
      p.read_int("cycle_second_stair_count", c.cycle_second_stair_count);
      p.read_int("decay_step_size", c.decay_step_size);
      p.read("cycle_momentum", c.cycle_momentum);
      p.read("cycle_min_mom", c.cycle_min_mom, 0.0, 1.0);
      p.read("cycle_max_mom", c.cycle_max_mom, 0.0, 1.0);
      p.read("decay_mom_rate", c.decay_mom_rate, 0.0);
    }
    if (c.type == "LRRangeTest") {
      p.read("lr_range_test_min_lr", c.lr_range_test_min_lr, 0.0);
      p.read_int("lr_range_test_step_size", c.lr_range_test_step_size, 1);
      p.read("lr_range_test_step_rate", c.lr_range_test_step_rate, 0.0);
      p.read("lr_range_test_staircase", c.lr_range_test_staircase);
    }
    // Resuming a schedule comes with engine checkpoints; a fresh start is -1.
    if (p.has("last_batch_iteration")) {
      double v = -1;
      p.read("last_batch_iteration", v);
      if (p.ok() && v != -1) {
        p.fail_at("last_batch_iteration",
                  "only -1 (a fresh start) is supported; a schedule resumes from an engine "
                  "checkpoint");
      }
    }
  });
  if (!r.ok()) return;
  auto required = [&](bool present, const char* key) {
    if (!present) r.fail_at("params", std::string(key) + " is required by " + c.type);
  };
  if (c.type == "WarmupDecayLR" || c.type == "WarmupCosineLR")
    required(c.total_num_steps.has_value(), "total_num_steps");
  if (c.type == "OneCycle") {
    required(c.cycle_min_lr.has_value(), "cycle_min_lr");
    required(c.cycle_max_lr.has_value(), "cycle_max_lr");
  }
}

void parse_fp16(ObjectReader& r, Fp16Config& f) {
  r.read("enabled", f.enabled);
  r.read("loss_scale", f.loss_scale, 0.0);
  r.read_int("initial_scale_power", f.initial_scale_power, 0, 64);
  r.read_int("loss_scale_window", f.loss_scale_window, 1);
  r.read_int("hysteresis", f.hysteresis, 1);
  r.read("min_loss_scale", f.min_loss_scale, 0.0);
  r.read("consecutive_hysteresis", f.consecutive_hysteresis);
  r.ignore("auto_cast", "the model casts itself");
  r.ignore("fp16_master_weights_and_grads", "zinf keeps fp32 masters");
}

void parse_bf16(ObjectReader& r, bool& enabled) {
  r.read("enabled", enabled);
  r.ignore("immediate_grad_update", "not implemented by zinf yet");
}

}  // namespace

std::string_view to_string(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kIoUring:
      return "io_uring";
    case IoBackend::kLibAio:
      return "libaio";
    case IoBackend::kPsync:
      return "psync";
  }
  return "?";
}

Result<IoBackend> parse_io_backend(std::string_view name) {
  if (name == "auto") return IoBackend::kAuto;
  if (name == "io_uring") return IoBackend::kIoUring;
  if (name == "libaio") return IoBackend::kLibAio;
  if (name == "psync") return IoBackend::kPsync;
  return Status::invalid_argument("unknown io backend \"" + std::string(name) +
                                  "\" (auto, io_uring, libaio, psync)");
}

std::string_view to_string(OffloadDevice device) {
  switch (device) {
    case OffloadDevice::kNone:
      return "none";
    case OffloadDevice::kCpu:
      return "cpu";
    case OffloadDevice::kNvme:
      return "nvme";
  }
  return "?";
}

Result<OffloadDevice> parse_offload_device(std::string_view name) {
  if (name == "none") return OffloadDevice::kNone;
  if (name == "cpu") return OffloadDevice::kCpu;
  if (name == "nvme") return OffloadDevice::kNvme;
  return Status::invalid_argument("unknown offload device \"" + std::string(name) +
                                  "\" (none, cpu, nvme)");
}

Result<Config> Config::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return Status::from_errno(errno, "cannot open config " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  return from_string(text.str(), path.string());
}

Result<Config> Config::from_string(std::string_view text, std::string_view source) {
  Config cfg;
  cfg.source = std::string(source);
  json root;
  // Nesting is bounded while parsing: describe() dumps a value, which
  // recurses once per level, and a file of a million '[' overflowed the
  // stack. DeepSpeed's configs nest a few levels (128 is serde_json's limit).
  constexpr int kMaxDepth = 128;
  struct TooDeep {};
  const auto bound_depth = [](int depth, json::parse_event_t, json&) {
    if (depth > kMaxDepth) throw TooDeep{};
    return true;
  };
  try {
    root = json::parse(text, bound_depth, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number no double holds (1e999).
    return Status::invalid_argument(cfg.source + ": invalid JSON: " + e.what());
  } catch (const TooDeep&) {
    return Status::invalid_argument(cfg.source + ": invalid JSON: nested deeper than " +
                                    std::to_string(kMaxDepth) + " levels");
  }
  ParseContext context{cfg.source, &cfg.ignored};
  ObjectReader r(root, "", context);
  r.read_int("train_batch_size", cfg.train_batch_size, 1);
  r.read_int("train_micro_batch_size_per_gpu", cfg.train_micro_batch_size_per_gpu, 1);
  r.read_int("gradient_accumulation_steps", cfg.gradient_accumulation_steps, 1);
  r.read("gradient_clipping", cfg.gradient_clipping, 0.0);
  r.read_int("steps_per_print", cfg.steps_per_print, 1);
  if (r.has("communication_data_type") && root["communication_data_type"].is_null()) {
    r.take("communication_data_type");  // DeepSpeed's None
  } else {
    r.read("communication_data_type", cfg.communication_data_type);
    std::string& t = cfg.communication_data_type;
    std::transform(t.begin(), t.end(), t.begin(),
                   [](unsigned char ch) { return std::tolower(ch); });
    if (r.ok() && !t.empty() && t != "fp32" && t != "fp16" && t != "bf16") {
      r.fail_at("communication_data_type",
                "expected \"fp32\", \"fp16\", \"bf16\" or null, got \"" + t + "\"");
    }
  }
  if (r.has("optimizer")) {
    cfg.optimizer.emplace();
    r.read_object("optimizer", [&](ObjectReader& c) { parse_optimizer(c, *cfg.optimizer); });
  }
  if (r.has("scheduler")) {
    cfg.scheduler.emplace();
    r.read_object("scheduler", [&](ObjectReader& c) { parse_scheduler(c, *cfg.scheduler); });
  }
  r.read_object("fp16", [&](ObjectReader& c) { parse_fp16(c, cfg.fp16); });
  r.read_object(r.spelling("bf16", "bfloat16"),
                [&](ObjectReader& c) { parse_bf16(c, cfg.bf16_enabled); });
  r.read_object("aio", [&](ObjectReader& c) { parse_aio(c, cfg.aio); });
  r.read_object("activation_checkpointing", [&](ObjectReader& c) {
    parse_activation_checkpointing(c, cfg.activation_checkpointing);
  });
  if (r.has("zero_optimization") && root["zero_optimization"].is_boolean()) {
    // DeepSpeed's oldest form: true is stage 1.
    bool on = false;
    r.read("zero_optimization", on);
    cfg.zero_optimization.stage = on ? 1 : 0;
    ZINF_LOG(kWarn) << r.where("zero_optimization")
                    << ": a boolean is deprecated; use {\"stage\": " << (on ? 1 : 0) << "}";
  } else {
    r.read_object("zero_optimization",
                  [&](ObjectReader& c) { parse_zero(c, cfg.zero_optimization); });
  }
  r.read_object(
      "zinf", [&](ObjectReader& c) { parse_engine(c, cfg.zinf); }, /*deepspeed=*/false);
  if (r.ok() && root.is_object()) {
    for (const auto& [key, value] : root.items()) {
      if (kTopLevelIgnored.count(key) != 0) r.ignore(key, "not implemented by zinf yet");
    }
  }
  r.check_unknown();
  if (r.ok() && cfg.fp16.enabled && cfg.bf16_enabled) {
    r.fail_at("bf16", "fp16.enabled and bf16.enabled cannot both be true");
  }
  if (!r.ok()) return r.status();
  if (!cfg.ignored.empty()) {
    std::string list;
    for (const auto& key : cfg.ignored) list += (list.empty() ? "" : ", ") + key;
    ZINF_LOG(kWarn) << cfg.source << ": ignored (DeepSpeed keys zinf does not act on): " << list;
  }
  return cfg;
}

Status Config::resolve_batch(std::uint64_t world_size) {
  if (world_size == 0) return Status::invalid_argument("world size must be >= 1");
  auto& batch = train_batch_size;
  auto& micro = train_micro_batch_size_per_gpu;
  auto& accum = gradient_accumulation_steps;
  auto mismatch = [&](std::string why) { return Status::invalid_argument(source + ": " + why); };
  if (batch && micro && accum) {
    if (*batch != *micro * *accum * world_size) {
      return mismatch("train_batch_size (" + std::to_string(*batch) +
                      ") != train_micro_batch_size_per_gpu (" + std::to_string(*micro) +
                      ") x gradient_accumulation_steps (" + std::to_string(*accum) +
                      ") x world size (" + std::to_string(world_size) + ")");
    }
  } else if (batch && micro) {
    if (*batch % (*micro * world_size) != 0) {
      return mismatch("train_batch_size (" + std::to_string(*batch) + ") is not divisible by " +
                      "train_micro_batch_size_per_gpu x world size (" +
                      std::to_string(*micro * world_size) + ")");
    }
    accum = *batch / (*micro * world_size);
  } else if (batch && accum) {
    if (*batch % (*accum * world_size) != 0) {
      return mismatch("train_batch_size (" + std::to_string(*batch) + ") is not divisible by " +
                      "gradient_accumulation_steps x world size (" +
                      std::to_string(*accum * world_size) + ")");
    }
    micro = *batch / (*accum * world_size);
  } else if (micro) {
    accum = accum.value_or(1);
    batch = *micro * *accum * world_size;
  } else if (batch) {
    accum = 1;
    if (*batch % world_size != 0) {
      return mismatch("train_batch_size (" + std::to_string(*batch) +
                      ") is not divisible by the world size (" + std::to_string(world_size) + ")");
    }
    micro = *batch / world_size;
  } else {
    return mismatch("set train_batch_size or train_micro_batch_size_per_gpu");
  }
  return Status::ok();
}

std::vector<std::string> Config::swap_paths() const {
  std::vector<std::string> out;
  auto add = [&out](const std::string& p) {
    if (!p.empty() && std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  };
  add(zero_optimization.offload_optimizer.nvme_path);
  add(zero_optimization.offload_param.nvme_path);
  for (const auto& p : zinf.nvme_paths) add(p);
  return out;
}

namespace {

json aio_json(const AioConfig& aio) {
  return {{"block_size", aio.block_size},
          {"queue_depth", aio.queue_depth},
          {"intra_op_parallelism", aio.intra_op_parallelism},
          {"single_submit", aio.single_submit},
          {"overlap_events", aio.overlap_events},
          {"use_gds", aio.use_gds}};
}

// Sets `key` when `value` is set: an unset key stays out, as in the file.
template <typename T>
void put_if_set(json& object, const char* key, const std::optional<T>& value) {
  if (value) object[key] = *value;
}

}  // namespace

json scheduler_json(const SchedulerConfig& c) {
  json p = json::object();
  const bool warmup = c.type == "WarmupLR" || c.type == "WarmupDecayLR";
  if (warmup) {
    p["warmup_min_lr"] = c.warmup_min_lr;
    put_if_set(p, "warmup_max_lr", c.warmup_max_lr);
  }
  if (warmup || c.type == "WarmupCosineLR") {
    p["warmup_num_steps"] = c.warmup_num_steps;
    p["warmup_type"] = c.warmup_type;
  }
  put_if_set(p, "total_num_steps", c.total_num_steps);
  if (c.type == "WarmupCosineLR") {
    p["warmup_min_ratio"] = c.warmup_min_ratio;
    p["cos_min_ratio"] = c.cos_min_ratio;
  }
  if (c.type == "OneCycle") {
    put_if_set(p, "cycle_min_lr", c.cycle_min_lr);
    put_if_set(p, "cycle_max_lr", c.cycle_max_lr);
    p["decay_lr_rate"] = c.decay_lr_rate;
    p["cycle_first_step_size"] = c.cycle_first_step_size;
    put_if_set(p, "cycle_second_step_size", c.cycle_second_step_size);
    p["cycle_first_stair_count"] = c.cycle_first_stair_count;
    put_if_set(p, "cycle_second_stair_count", c.cycle_second_stair_count);
    p["decay_step_size"] = c.decay_step_size;
    p["cycle_momentum"] = c.cycle_momentum;
    p["cycle_min_mom"] = c.cycle_min_mom;
    p["cycle_max_mom"] = c.cycle_max_mom;
    p["decay_mom_rate"] = c.decay_mom_rate;
  }
  if (c.type == "LRRangeTest") {
    p["lr_range_test_min_lr"] = c.lr_range_test_min_lr;
    p["lr_range_test_step_size"] = c.lr_range_test_step_size;
    p["lr_range_test_step_rate"] = c.lr_range_test_step_rate;
    p["lr_range_test_staircase"] = c.lr_range_test_staircase;
  }
  return {{"type", c.type}, {"params", p}};
}

std::string to_json(const AioConfig& aio, int indent) {
  return json{{"aio", aio_json(aio)}}.dump(indent);
}

std::string to_json(const Config& c, int indent) {
  const ZeroConfig& z = c.zero_optimization;
  const OffloadParamConfig& op = z.offload_param;
  const OffloadOptimizerConfig& oo = z.offload_optimizer;
  json out = {{"gradient_clipping", c.gradient_clipping},
              {"fp16",
               {{"enabled", c.fp16.enabled},
                {"loss_scale", c.fp16.loss_scale},
                {"initial_scale_power", c.fp16.initial_scale_power},
                {"loss_scale_window", c.fp16.loss_scale_window},
                {"hysteresis", c.fp16.hysteresis},
                {"consecutive_hysteresis", c.fp16.consecutive_hysteresis},
                {"min_loss_scale", c.fp16.min_loss_scale}}},
              {"bf16", {{"enabled", c.bf16_enabled}}},
              {"activation_checkpointing",
               {{"cpu_checkpointing", c.activation_checkpointing.cpu_checkpointing},
                {"synchronize_checkpoint_boundary",
                 c.activation_checkpointing.synchronize_checkpoint_boundary}}},
              {"aio", aio_json(c.aio)},
              {"zero_optimization",
               {{"stage", z.stage},
                {"sub_group_size", z.sub_group_size},
                {"stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size},
                {"stage3_param_persistence_threshold", z.stage3_param_persistence_threshold},
                {"stage3_model_persistence_threshold", z.stage3_model_persistence_threshold},
                {"stage3_max_live_parameters", z.stage3_max_live_parameters},
                {"stage3_max_reuse_distance", z.stage3_max_reuse_distance},
                {"reduce_bucket_size", z.reduce_bucket_size},
                {"overlap_comm", z.overlap_comm},
                {"offload_param",
                 {{"device", to_string(op.device)},
                  {"nvme_path", op.nvme_path},
                  {"buffer_count", op.buffer_count},
                  {"buffer_size", op.buffer_size},
                  {"pin_memory", op.pin_memory}}},
                {"offload_optimizer",
                 {{"device", to_string(oo.device)},
                  {"nvme_path", oo.nvme_path},
                  {"buffer_count", oo.buffer_count},
                  {"pin_memory", oo.pin_memory}}}}},
              {"zinf",
               {{"io_backend", to_string(c.zinf.io_backend)},
                {"nvme_paths", c.zinf.nvme_paths},
                {"buffered_io_fallback", c.zinf.buffered_io_fallback},
                {"sqpoll", c.zinf.sqpoll},
                {"checksum", c.zinf.checksum},
                {"threads", c.zinf.threads},
                {"device", c.zinf.device},
                {"device_budget", c.zinf.device_budget},
                {"checkpoint_units", c.zinf.checkpoint_units},
                {"compute_threads", c.zinf.compute_threads},
                {"comm_timeout", c.zinf.comm_timeout},
                {"io_timeout", c.zinf.io_timeout},
                {"trace_path", c.zinf.trace_path}}}};
  put_if_set(out, "train_batch_size", c.train_batch_size);
  put_if_set(out, "steps_per_print", c.steps_per_print);
  out["communication_data_type"] =
      c.communication_data_type.empty() ? json(nullptr) : json(c.communication_data_type);
  put_if_set(out, "train_micro_batch_size_per_gpu", c.train_micro_batch_size_per_gpu);
  put_if_set(out, "gradient_accumulation_steps", c.gradient_accumulation_steps);
  if (c.scheduler) out["scheduler"] = scheduler_json(*c.scheduler);
  if (c.optimizer) {
    // Each type's own params, so that the output parses again.
    const OptimizerConfig& o = *c.optimizer;
    json p = {{"lr", o.lr}, {"weight_decay", o.weight_decay}};
    if (o.type != "Adagrad") p["betas"] = {o.beta1, o.beta2};
    if (o.type != "Lion") p["eps"] = o.eps;
    if (o.type == "Adam" || o.type == "AdamW") {
      p["adam_w_mode"] = o.adam_w_mode;
      p["bias_correction"] = o.bias_correction;
      p["torch_adam"] = o.torch_adam;
    }
    out["optimizer"] = {{"type", o.type}, {"params", p}};
  }
  return out.dump(indent);
}

}  // namespace zinf
