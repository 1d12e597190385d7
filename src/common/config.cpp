#include "zinf/common/config.hpp"

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

// Top-level DeepSpeed keys zinf accepts but does not act on yet: a DeepSpeed
// config keeps working, and the user is told what is ignored.
const std::set<std::string, std::less<>> kDeepSpeedKeysNotImplemented = {
    "activation_checkpointing",
    "wall_clock_breakdown",
    "memory_breakdown",
    "flops_profiler",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "comms_logger",
    "prescale_gradients",
    "gradient_predivide_factor",
    "communication_data_type",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "amp",
    "data_types",
    "dump_state",
    "sparse_gradients",
    "elasticity",
    "autotuning",
    "checkpoint",
    "data_efficiency",
    "compression_training",
    "pipeline",
    "seq_parallel_communication_data_type",
    "timers",
    "disable_allgather",
    "curriculum_learning"};

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// Reads one JSON object, remembering which keys were read so that what is left
// is reported as unknown. The first error wins; later reads become no-ops.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string path, const std::string& source)
      : object_(object), path_(std::move(path)), source_(source) {
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
  void read_object(std::string_view key, Fn&& parse) {
    const json* v = take(key);
    if (v == nullptr) return;
    ObjectReader child(*v, join(key), source_);
    if (child.ok()) parse(child);
    if (child.ok()) child.check_unknown();
    if (!child.ok() && status_.is_ok()) status_ = child.status_;
  }

  // A key that must be consumed without being read (handled elsewhere).
  const json* take(std::string_view key) {
    if (!ok()) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end()) return nullptr;
    seen_.insert(std::string(key));
    return &*it;
  }

  void fail_at(std::string_view key, const std::string& message) {
    if (!ok()) return;
    std::string where =
        key.empty() ? (path_.empty() ? std::string("top level") : path_) : join(key);
    status_ = Status::invalid_argument(source_ + ": " + where + ": " + message);
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
  std::string where(std::string_view key) const { return source_ + ": " + join(key); }

 private:
  std::string join(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  const json& object_;
  std::string path_;
  const std::string& source_;
  std::set<std::string, std::less<>> seen_;
  Status status_;
};

void parse_aio(ObjectReader& r, AioConfig& aio) {
  r.read_int("block_size", aio.block_size, 4096, std::uint64_t{1} << 30);
  r.read_int("queue_depth", aio.queue_depth, 1, 65536);
  if (r.has("thread_count")) {
    ZINF_LOG(kWarn) << r.where("thread_count") << " is deprecated: use intra_op_parallelism";
    r.read_int("thread_count", aio.intra_op_parallelism, 1, 256);
  }
  r.read_int("intra_op_parallelism", aio.intra_op_parallelism, 1, 256);
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
  r.read_int("compute_threads", e.compute_threads, 0, 4096);
}

void parse_offload_optimizer(ObjectReader& r, OffloadOptimizerConfig& o) {
  r.read_device("device", o.device);
  r.read("nvme_path", o.nvme_path);
  r.read_int("buffer_count", o.buffer_count, 1);
  r.read("pin_memory", o.pin_memory);
  r.read("pipeline_read", o.pipeline_read);
  r.read("pipeline_write", o.pipeline_write);
  r.read("fast_init", o.fast_init);
  r.read("ratio", o.ratio, 0.0, 1.0);
  if (r.ok() && o.device == OffloadDevice::kNvme && o.nvme_path.empty()) {
    r.fail_at("nvme_path", "is required when device is \"nvme\"");
  }
}

void parse_offload_param(ObjectReader& r, OffloadParamConfig& o) {
  r.read_device("device", o.device);
  r.read("nvme_path", o.nvme_path);
  r.read_int("buffer_count", o.buffer_count, 1, 1024);
  r.read_int("buffer_size", o.buffer_size, 1);
  r.read_int("max_in_cpu", o.max_in_cpu, 0);
  r.read("pin_memory", o.pin_memory);
  if (r.ok() && o.device == OffloadDevice::kNvme && o.nvme_path.empty()) {
    r.fail_at("nvme_path", "is required when device is \"nvme\"");
  }
}

void parse_zero(ObjectReader& r, ZeroConfig& z) {
  r.read_int("stage", z.stage, 0, 3);
  if (r.has("overlap_comm")) {
    bool v = false;
    r.read("overlap_comm", v);
    z.overlap_comm = v;
  }
  r.read("contiguous_gradients", z.contiguous_gradients);
  r.read_int("reduce_bucket_size", z.reduce_bucket_size, 1);
  r.read_int("allgather_bucket_size", z.allgather_bucket_size, 1);
  r.read_int("sub_group_size", z.sub_group_size, 1);
  r.read_int("stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size, 0);
  r.read_int("stage3_param_persistence_threshold", z.stage3_param_persistence_threshold, 0);
  r.read_int("stage3_model_persistence_threshold", z.stage3_model_persistence_threshold, 0);
  r.read_int("stage3_max_live_parameters", z.stage3_max_live_parameters, 0);
  r.read_int("stage3_max_reuse_distance", z.stage3_max_reuse_distance, 0);
  r.read("stage3_gather_16bit_weights_on_model_save", z.stage3_gather_16bit_weights_on_model_save);
  // DeepSpeed's older spelling of the same switch.
  r.read("stage3_gather_fp16_weights_on_model_save", z.stage3_gather_16bit_weights_on_model_save);
  // Accepted by DeepSpeed, no effect in zinf (there is nothing to tune).
  for (const char* key :
       {"round_robin_gradients", "reduce_scatter", "allgather_partitions", "load_from_fp32_weights",
        "elastic_checkpoint", "ignore_unused_parameters", "memory_efficient_linear",
        "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_gradients",
        "mics_shard_size", "use_multi_rank_bucket_allreduce"}) {
    if (r.take(key) != nullptr) ZINF_LOG(kWarn) << r.where(key) << " has no effect in zinf";
  }
  r.read_object("offload_param", [&](ObjectReader& c) { parse_offload_param(c, z.offload_param); });
  r.read_object("offload_optimizer",
                [&](ObjectReader& c) { parse_offload_optimizer(c, z.offload_optimizer); });
  if (r.ok() && z.offload_param.device != OffloadDevice::kNone && z.stage != 3) {
    r.fail_at("offload_param", "parameter offload needs stage 3 (zero_optimization.stage is " +
                                   std::to_string(z.stage) + ")");
  }
}

void parse_optimizer(ObjectReader& r, OptimizerConfig& o) {
  r.read("type", o.type);
  static const std::set<std::string, std::less<>> kTypes = {"Adam", "AdamW", "Adagrad", "Lion"};
  if (r.ok() && kTypes.count(o.type) == 0) {
    // DeepSpeed's type names are case-insensitive.
    std::string lower;
    for (char c : o.type) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const auto& t : kTypes) {
      std::string tl;
      for (char c : t) tl += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (tl == lower) o.type = t;
    }
    if (kTypes.count(o.type) == 0) {
      return r.fail_at("type",
                       "unsupported optimizer \"" + o.type + "\" (Adam, AdamW, Adagrad, Lion)");
    }
  }
  r.read_object("params", [&](ObjectReader& p) {
    p.read("lr", o.lr, 0.0);
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
    p.read("eps", o.eps, 0.0);
    p.read("weight_decay", o.weight_decay, 0.0);
    p.read("adam_w_mode", o.adam_w_mode);
    p.read("bias_correction", o.bias_correction);
    p.read("torch_adam", o.adam_w_mode);  // accepted for compatibility; the kernel is always zinf's
  });
  if (o.type == "AdamW") o.adam_w_mode = true;
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
      if (p.has("warmup_max_lr")) {
        double v = 0;
        p.read("warmup_max_lr", v, 0.0);
        c.warmup_max_lr = v;
      }
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
      for (auto [key, out] : {std::pair{"cycle_min_lr", &c.cycle_min_lr},
                              std::pair{"cycle_max_lr", &c.cycle_max_lr}}) {
        if (!p.has(key)) continue;
        double v = 0;
        p.read(key, v, 0.0);
        *out = v;
      }
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
  if (r.take("auto_cast") != nullptr)
    ZINF_LOG(kWarn) << r.where("auto_cast") << " has no effect in zinf (the model casts itself)";
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
  try {
    root = json::parse(text, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    return Status::invalid_argument(cfg.source + ": invalid JSON: " + e.what());
  }
  ObjectReader r(root, "", cfg.source);
  r.read_int("train_batch_size", cfg.train_batch_size, 1);
  r.read_int("train_micro_batch_size_per_gpu", cfg.train_micro_batch_size_per_gpu, 1);
  r.read_int("gradient_accumulation_steps", cfg.gradient_accumulation_steps, 1);
  r.read("gradient_clipping", cfg.gradient_clipping, 0.0);
  r.read_int("steps_per_print", cfg.steps_per_print, 1);
  if (r.has("optimizer")) {
    cfg.optimizer.emplace();
    r.read_object("optimizer", [&](ObjectReader& c) { parse_optimizer(c, *cfg.optimizer); });
  }
  if (r.has("scheduler")) {
    cfg.scheduler.emplace();
    r.read_object("scheduler", [&](ObjectReader& c) { parse_scheduler(c, *cfg.scheduler); });
  }
  r.read_object("fp16", [&](ObjectReader& c) { parse_fp16(c, cfg.fp16); });
  r.read_object("bf16", [&](ObjectReader& c) { c.read("enabled", cfg.bf16_enabled); });
  r.read_object("aio", [&](ObjectReader& c) { parse_aio(c, cfg.aio); });
  r.read_object("zero_optimization",
                [&](ObjectReader& c) { parse_zero(c, cfg.zero_optimization); });
  r.read_object("zinf", [&](ObjectReader& c) { parse_engine(c, cfg.zinf); });
  if (r.ok() && root.is_object()) {
    for (const auto& [key, value] : root.items()) {
      if (kDeepSpeedKeysNotImplemented.count(key) != 0 && r.take(key) != nullptr) {
        ZINF_LOG(kWarn) << cfg.source << ": \"" << key
                        << "\" is not implemented by zinf yet; ignored";
      }
    }
  }
  r.check_unknown();
  if (r.ok() && cfg.fp16.enabled && cfg.bf16_enabled) {
    r.fail_at("bf16", "fp16.enabled and bf16.enabled cannot both be true");
  }
  if (!r.ok()) return r.status();
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
  json out = {
      {"gradient_clipping", c.gradient_clipping},
      {"steps_per_print", c.steps_per_print},
      {"fp16",
       {{"enabled", c.fp16.enabled},
        {"loss_scale", c.fp16.loss_scale},
        {"initial_scale_power", c.fp16.initial_scale_power},
        {"loss_scale_window", c.fp16.loss_scale_window},
        {"hysteresis", c.fp16.hysteresis},
        {"consecutive_hysteresis", c.fp16.consecutive_hysteresis},
        {"min_loss_scale", c.fp16.min_loss_scale}}},
      {"bf16", {{"enabled", c.bf16_enabled}}},
      {"aio", aio_json(c.aio)},
      {"zero_optimization",
       {{"stage", z.stage},
        {"overlap_comm", z.overlap_comm_enabled()},
        {"contiguous_gradients", z.contiguous_gradients},
        {"reduce_bucket_size", z.reduce_bucket_size},
        {"allgather_bucket_size", z.allgather_bucket_size},
        {"sub_group_size", z.sub_group_size},
        {"stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size},
        {"stage3_param_persistence_threshold", z.stage3_param_persistence_threshold},
        {"stage3_model_persistence_threshold", z.stage3_model_persistence_threshold},
        {"stage3_max_live_parameters", z.stage3_max_live_parameters},
        {"stage3_max_reuse_distance", z.stage3_max_reuse_distance},
        {"stage3_gather_16bit_weights_on_model_save", z.stage3_gather_16bit_weights_on_model_save},
        {"offload_param",
         {{"device", to_string(op.device)},
          {"nvme_path", op.nvme_path},
          {"buffer_count", op.buffer_count},
          {"buffer_size", op.buffer_size},
          {"max_in_cpu", op.max_in_cpu},
          {"pin_memory", op.pin_memory}}},
        {"offload_optimizer",
         {{"device", to_string(oo.device)},
          {"nvme_path", oo.nvme_path},
          {"pin_memory", oo.pin_memory},
          {"pipeline_read", oo.pipeline_read},
          {"pipeline_write", oo.pipeline_write},
          {"fast_init", oo.fast_init},
          {"ratio", oo.ratio}}}}},
      {"zinf",
       {{"io_backend", to_string(c.zinf.io_backend)},
        {"nvme_paths", c.zinf.nvme_paths},
        {"buffered_io_fallback", c.zinf.buffered_io_fallback},
        {"sqpoll", c.zinf.sqpoll},
        {"checksum", c.zinf.checksum},
        {"threads", c.zinf.threads},
        {"device", c.zinf.device},
        {"device_budget", c.zinf.device_budget},
        {"compute_threads", c.zinf.compute_threads}}}};
  put_if_set(out, "train_batch_size", c.train_batch_size);
  put_if_set(out, "train_micro_batch_size_per_gpu", c.train_micro_batch_size_per_gpu);
  put_if_set(out, "gradient_accumulation_steps", c.gradient_accumulation_steps);
  put_if_set(out["zero_optimization"]["offload_optimizer"], "buffer_count", oo.buffer_count);
  if (c.scheduler) out["scheduler"] = scheduler_json(*c.scheduler);
  if (c.optimizer) {
    const OptimizerConfig& o = *c.optimizer;
    out["optimizer"] = {{"type", o.type},
                        {"params",
                         {{"lr", o.lr},
                          {"betas", {o.beta1, o.beta2}},
                          {"eps", o.eps},
                          {"weight_decay", o.weight_decay},
                          {"adam_w_mode", o.adam_w_mode},
                          {"bias_correction", o.bias_correction}}}};
  }
  return out.dump(indent);
}

}  // namespace zinf
