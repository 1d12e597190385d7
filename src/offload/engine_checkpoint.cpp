// Engine checkpoints (EngineBase::save_checkpoint / load_checkpoint).
//
// A checkpoint is DeepSpeed's layout of folders: DIR/TAG/ and DIR/latest
// (the tag, no newline). TAG/ holds manifest.json (what was saved: world
// size, stage, optimizer, every parameter's name, shape, dtype and step,
// the partitions, the counters, the scheduler's position, the loss scaler,
// every rank's generator states, and each state file's size and CRC32C) and
// one rank<R>.state per rank: R's fp32 optimizer state, its shard of every
// partition (checkpoint_file.hpp has the layout), in a layout that does not
// depend on sub-groups or pieces. Parameters are not saved: each is its
// master rounded to its dtype, so loading rewrites them from the masters.
//
// Crash safety: rank 0 makes TAG/ as a fresh folder next to it, named with
// its pid; every rank writes and fsyncs its file there; rank 0 writes the
// manifest (every rank's checksums gathered to it), fsyncs the folder,
// renames it over TAG (exchanged atomically when TAG exists), fsyncs the
// parent, then writes `latest` the same way. A crash of any rank at any
// instant leaves the old checkpoint or the new one. The state streams
// piece by piece from the tier into the file (state_file.hpp: O_DIRECT,
// reads and writes overlapped, no copy of the whole state in host memory).
// The ranks agree after each stage: a failure on one is an error on all,
// and the folder is removed.
//
// Loading checks everything (format, world size, optimizer, parameters,
// partitions, sizes, checksums) before anything changes: on every rank
// before any rank changes anything, and on one rank while it streams the
// file into the tier all or nothing (the NVMe tier's commit, or a second
// copy of a host tier's state where the host has room), whose commit a
// mismatch prevents. The state goes in through the tier (StateTier::replace,
// or overwrite after a separate check), the parameters from their new
// masters in the same pass.
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/progress_log.hpp"
#include "offload/checkpoint_file.hpp"
#include "offload/engine_impl.hpp"
#include "offload/state_file.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::offload {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

[[noreturn]] void fail(Status status) { throw Error(std::move(status)); }

std::string hex(const std::byte* bytes, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned>(bytes[i]);
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

Result<torch::Tensor> unhex(const std::string& text) {
  if (text.size() % 2 != 0) return Status::data_loss("odd length");
  auto out = torch::empty({static_cast<std::int64_t>(text.size() / 2)}, torch::kUInt8);
  auto* p = out.data_ptr<std::uint8_t>();
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < text.size(); i += 2) {
    const int hi = digit(text[i]), lo = digit(text[i + 1]);
    if (hi < 0 || lo < 0) return Status::data_loss("not hexadecimal");
    p[i / 2] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& shape, const std::string& dtype) {
  std::string dims;
  for (auto d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return dtype + "[" + dims + "]";
}

}  // namespace

void EngineImpl::save_checkpoint(const fs::path& dir, std::string tag) {
  const auto t0 = SteadyClock::now();
  if (phase_ != Phase::kIdle || micro_steps_ != 0) {
    fail(Status::failed_precondition(
        "save_checkpoint needs an accumulation boundary (after step(), before the next "
        "forward)"));
  }
  if (tag.empty()) tag = "global_step" + std::to_string(global_steps_);
  if (tag.find('/') != std::string::npos || tag == "." || tag == ".." || tag == "latest")
    fail(Status::invalid_argument("checkpoint tag \"" + tag + "\" is not a folder name"));
  auto context = [&](const Status& s) {
    return s.with_context("save_checkpoint " + (dir / tag).string());
  };
  // Rank 0 makes the folder every rank writes into, named with its pid;
  // the others learn the pid, and that they all save the same tag.
  std::uint64_t id[2] = {0, std::hash<std::string>{}(tag)};
  Status s;
  if (rank_ == 0) {
    id[0] = static_cast<std::uint64_t>(::getpid());
    s = make_checkpoint_staging(dir, checkpoint_staging(dir, tag, id[0]));
  }
  s = agree(std::move(s));
  if (s.is_ok()) s = broadcast_from_zero(id, sizeof id);
  if (!s.is_ok()) fail(context(s));
  const fs::path staging = checkpoint_staging(dir, tag, id[0]);
  auto abandon = [&](const Status& why) {
    std::error_code ec;
    if (rank_ == 0) fs::remove_all(staging, ec);
    fail(context(why));
  };
  if (id[1] != std::hash<std::string>{}(tag))
    s = Status::invalid_argument("rank 0 saves another tag than this rank's");
  std::vector<std::uint32_t> crcs(static_cast<std::size_t>(num_states_), 0);
  if (s.is_ok()) s = write_state(staging / checkpoint_state_file(rank_), crcs);
  s = agree(std::move(s));
  if (!s.is_ok()) abandon(s);

  // What rank 0 writes into the manifest: every rank's checksums and
  // generator states.
  const torch::Tensor cpu_rng = at::detail::getDefaultCPUGenerator().get_state();
  const torch::Tensor device_rng =
      torch_device_.is_cuda() ? at::globalContext().defaultGenerator(torch_device_).get_state()
                              : torch::Tensor();
  auto all_crcs = gather_bytes(crcs.data(), crcs.size() * sizeof(std::uint32_t));
  auto all_cpu_rng = gather_bytes(cpu_rng.data_ptr(), static_cast<std::size_t>(cpu_rng.numel()));
  auto all_device_rng =
      device_rng.defined()
          ? gather_bytes(device_rng.data_ptr(), static_cast<std::size_t>(device_rng.numel()))
          : Result<std::vector<std::byte>>(std::vector<std::byte>());
  for (const Status& g : {all_crcs.status(), all_cpu_rng.status(), all_device_rng.status()})
    if (!g.is_ok()) abandon(g.with_context("gathering the ranks' checksums and generators"));

  if (rank_ == 0) {
    std::vector<CheckpointPartition> layout;
    json partitions = json::array();
    for (const Partition& part : partitions_) {
      layout.push_back({part.flat, part.numel});
      partitions.push_back({part.flat, part.numel});
    }
    json params = json::array();
    for (const Param& p : params_) {
      params.push_back({{"name", p.name},
                        {"shape", p.storage.shape()},
                        {"dtype", c10::toString(p.dtype)},
                        {"flat", p.flat},
                        {"step", p.step}});
    }
    json files = json::object(), rng = json::array();
    const auto* crc = reinterpret_cast<const std::uint32_t*>(all_crcs->data());
    const std::size_t cpu_bytes = all_cpu_rng->size() / world_size_;
    const std::size_t device_bytes = all_device_rng->size() / world_size_;
    for (int r = 0; r < world_size_; ++r) {
      const auto n = static_cast<std::size_t>(num_states_);
      files[checkpoint_state_file(r)] = {
          {"bytes",
           StateLayout{shard_elements(layout, world_size_, r), num_states_, kCheckpointVersion}
               .file_bytes()},
          {"crc32c", std::vector<std::uint32_t>(crc + r * n, crc + (r + 1) * n)}};
      json g = {{"cpu", hex(all_cpu_rng->data() + r * cpu_bytes, cpu_bytes)}};
      if (device_bytes > 0)
        g["device"] = hex(all_device_rng->data() + r * device_bytes, device_bytes);
      rng.push_back(std::move(g));
    }
    const LossScaler::State scaler = scaler_.state();
    const json manifest = {{"format", kCheckpointFormat},
                           {"version", kCheckpointVersion},
                           {"tag", tag},
                           {"world_size", world_size_},
                           {"zero_stage", config_.zero_optimization.stage},
                           {"optimizer", config_.optimizer->type},
                           {"num_states", num_states_},
                           {"elements", elements_},
                           {"global_steps", global_steps_},
                           {"skipped_steps", skipped_steps_},
                           {"scheduler",
                            {{"type", config_.scheduler ? config_.scheduler->type : ""},
                             {"last_batch_iteration", schedule_t_}}},
                           {"loss_scaler",
                            {{"scale", scaler.scale},
                             {"hysteresis", scaler.hysteresis},
                             {"iteration", scaler.iteration},
                             {"last_overflow", scaler.last_overflow}}},
                           {"rng", rng},
                           {"params", params},
                           {"partitions", partitions},
                           {"files", files},
                           {"config", json::parse(to_json(config_))}};
    s = publish_checkpoint(dir, tag, staging, manifest.dump(1));
  }
  s = agree(std::move(s));
  if (!s.is_ok()) fail(context(s));
  const std::uint64_t bytes = num_states_ * elements_ * sizeof(float);
  const double s_taken = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  ZINF_LOG(kInfo) << "checkpoint " << (dir / tag).string() << ": step " << global_steps_ << ", "
                  << format_bytes(bytes) << " of optimizer state"
                  << (world_size_ > 1 ? " from " + std::to_string(world_size_) + " ranks" : "")
                  << " in " << s_taken << " s ("
                  << format_bytes(static_cast<std::uint64_t>(bytes / s_taken)) << "/s)";
}

Status EngineImpl::write_state(const fs::path& path, std::vector<std::uint32_t>& crcs) {
  const StateLayout layout{own_elements_, num_states_, kCheckpointVersion};
  ZINF_ASSIGN_OR_RETURN(auto file, StateFile::create(path, layout, checkpoint_io()));
  ProgressLog progress("save_checkpoint " + path.string(), layout.state_bytes());
  Status s = tier_->read([&](Piece& piece) -> Status {
    for (int k = 0; k < num_states_; ++k)
      ZINF_RETURN_IF_ERROR(file->write(k, piece.state[k], piece.count));
    progress.add(num_states_ * piece.count * sizeof(float));
    return Status::ok();
  });
  if (s.is_ok()) s = file->finish();
  if (!s.is_ok()) return s.with_context("writing the checkpoint's state");
  for (int k = 0; k < num_states_; ++k) crcs[static_cast<std::size_t>(k)] = file->crc32c(k);
  return Status::ok();
}

StateIo EngineImpl::checkpoint_io() {
  return {config_.zinf.io_backend, std::exchange(options_.checkpoint_fault, {})};
}

Status EngineImpl::check_checkpoint(const Checkpoint& c, torch::Tensor& cpu_rng,
                                    torch::Tensor& device_rng) const {
  auto bad = [](const std::string& why) { return Status::invalid_argument(why); };
  if (c.world_size != world_size_) {
    return bad("saved by " + std::to_string(c.world_size) + " ranks; this job runs " +
               std::to_string(world_size_) +
               " (`zinf-ckpt reshard` rewrites it for another number of ranks)");
  }
  if (c.optimizer != config_.optimizer->type || c.num_states != num_states_)
    return bad("saved with optimizer " + c.optimizer + ", this engine runs " +
               config_.optimizer->type);
  if (c.params.size() != params_.size()) {
    return bad("saved " + std::to_string(c.params.size()) + " parameters; the model has " +
               std::to_string(params_.size()));
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Param& p = params_[i];
    const CheckpointParam& q = c.params[i];
    const std::string dtype = c10::toString(p.dtype);
    if (q.name != p.name || q.shape != p.storage.shape() || q.dtype != dtype || q.flat != p.flat) {
      return bad("parameter " + std::to_string(i) + " is '" + q.name + "' " +
                 shape_text(q.shape, q.dtype) + " in the checkpoint, '" + p.name + "' " +
                 shape_text(p.storage.shape(), dtype) + " in the model");
    }
  }
  if (c.elements != elements_)
    return bad("saved " + std::to_string(c.elements) + " elements; the model has " +
               std::to_string(elements_));
  // A world of one's file is the flat state whatever the partitions; with
  // more ranks each file holds its shards of them.
  for (std::size_t i = 0; world_size_ > 1 && i < partitions_.size(); ++i) {
    const Partition& part = partitions_[i];
    if (i >= c.partitions.size() || c.partitions[i] != CheckpointPartition{part.flat, part.numel}) {
      return bad("partition " + std::to_string(i) + " (unit '" + units_[part.unit].name +
                 "') differs from the checkpoint's: another unit layout or "
                 "stage3_param_persistence_threshold");
    }
  }
  try {
    const auto& rng = c.manifest.at("rng").at(static_cast<std::size_t>(rank_));
    auto r = unhex(rng.at("cpu").get<std::string>());
    if (!r.is_ok()) return bad("manifest.json: rng.cpu: " + r.status().message());
    cpu_rng = *r;
    if (torch_device_.is_cuda() && rng.contains("device")) {
      auto d = unhex(rng["device"].get<std::string>());
      if (!d.is_ok()) return bad("manifest.json: rng.device: " + d.status().message());
      device_rng = *d;
    }
    (void)c.manifest.at("loss_scaler").at("scale").get<double>();
    (void)c.manifest.at("scheduler").at("last_batch_iteration").get<std::int64_t>();
    (void)c.manifest.at("skipped_steps").get<std::uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    return bad(std::string("manifest.json: ") + e.what());
  }
  return Status::ok();
}

void EngineImpl::load_checkpoint(const fs::path& dir, std::string tag) {
  const auto t0 = SteadyClock::now();
  if (phase_ != Phase::kIdle || micro_steps_ != 0) {
    fail(Status::failed_precondition(
        "load_checkpoint needs an accumulation boundary (not inside a forward, backward or "
        "accumulation window)"));
  }
  auto read = read_checkpoint(dir, std::move(tag));
  Status s = agree(read.status());
  if (!s.is_ok()) fail(s.with_context("load_checkpoint (nothing was changed)"));
  const Checkpoint& c = *read;
  torch::Tensor cpu_rng, device_rng;
  // Every byte of the state is checked before any state changes. One rank
  // checks its file as it loads it, all or nothing (StateTier::replace: the
  // NVMe tier's commit, or a second copy of a host tier's state), and the
  // last piece's check fails the load before the tier keeps anything.
  // Otherwise each rank reads its file twice, to check it, then to load it:
  // ranks must agree that every file is whole before any loads, and a host
  // without room for a second copy loads in place.
  bool check_while_loading = world_size_ == 1;
  const StateIo io = checkpoint_io();
  s = check_checkpoint(c, cpu_rng, device_rng);
  if (s.is_ok() && !check_while_loading) s = verify_checkpoint_file(c, rank_, io);
  s = agree(std::move(s));
  if (!s.is_ok()) {
    fail(Status(s.code(), "load_checkpoint " + c.folder.string() + ": " + s.message() +
                              "; nothing was changed"));
  }

  // Now the state goes in through the tier, the parameters from their new
  // masters in the same pass, then the resident ones gathered.
  auto load = [&](bool all_or_nothing, bool& filled) -> Status {
    filled = false;
    auto file = StateFile::open(c.state_file(rank_), c.layout(rank_), io);
    ZINF_RETURN_IF_ERROR(file.status());
    const std::size_t last = tier_->pieces() - 1;
    ProgressLog progress("load_checkpoint " + c.state_file(rank_).string(), c.state_bytes(rank_));
    // A file that changed since its verification fails too.
    return overwrite_state(
        [&](Piece& piece) -> Status {
          for (int k = 0; k < num_states_; ++k)
            ZINF_RETURN_IF_ERROR((*file)->read(k, piece.state[k], piece.count));
          progress.add(num_states_ * piece.count * sizeof(float));
          return piece.index == last ? check_state_crcs(c, rank_, **file) : Status::ok();
        },
        all_or_nothing, filled);
  };
  bool filled = false;
  s = load(check_while_loading, filled);
  if (check_while_loading && !s.is_ok() && !filled) {
    ZINF_LOG(kInfo) << "load_checkpoint: " << s.message()
                    << "; checking the file first, then loading it in place";
    check_while_loading = false;
    s = verify_checkpoint_file(c, rank_, io);
    if (!s.is_ok()) {
      fail(Status(s.code(), "load_checkpoint " + c.folder.string() + ": " + s.message() +
                                "; nothing was changed"));
    }
    s = load(false, filled);
  }
  s = agree(std::move(s));
  if (!s.is_ok()) {
    const char* what = broken_ ? ""
                       : !filled || check_while_loading || tier_->atomic()
                           ? "; nothing was changed"
                           : "; the optimizer state is partly loaded: load again";
    fail(Status(s.code(), "load_checkpoint " + c.folder.string() + ": " + s.message() + what));
  }
  s = agree(gather_resident());
  if (!s.is_ok()) {
    broken_ = true;
    fail(s.with_context("load_checkpoint " + c.folder.string() +
                        ": gathering the resident parameters failed"));
  }
  const auto& m = c.manifest;
  for (std::size_t i = 0; i < params_.size(); ++i) params_[i].step = c.params[i].step;
  global_steps_ = c.global_steps;
  skipped_steps_ = m["skipped_steps"];
  const auto& ls = m["loss_scaler"];
  scaler_.restore({ls["scale"], ls["hysteresis"], ls["iteration"], ls["last_overflow"]});
  if (schedule_) {
    schedule_t_ = m["scheduler"]["last_batch_iteration"];
    apply_schedule();
  }
  auto set_rng = [](at::Generator generator, const torch::Tensor& state) {
    std::lock_guard lock(generator.mutex());
    generator.set_state(state);
  };
  set_rng(at::detail::getDefaultCPUGenerator(), cpu_rng);
  if (device_rng.defined())
    set_rng(at::globalContext().defaultGenerator(torch_device_), device_rng);
  const double s_taken = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  ZINF_LOG(kInfo) << "checkpoint " << c.folder.string() << " loaded: step " << global_steps_ << ", "
                  << format_bytes(c.state_bytes(rank_)) << " verified and read in " << s_taken
                  << " s";
}

}  // namespace zinf::offload
