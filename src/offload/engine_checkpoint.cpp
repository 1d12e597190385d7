// Engine checkpoints (EngineBase::save_checkpoint / load_checkpoint).
//
// A checkpoint is DeepSpeed's layout of folders: DIR/TAG/ and DIR/latest
// (the tag, no newline). TAG/ holds manifest.json (what was saved: world
// size, stage, optimizer, every parameter's name, shape, dtype and step,
// the counters, the scheduler's position, the loss scaler, the generators'
// states, and each state file's size and CRC32C) and rank0.state: the fp32
// optimizer state in a layout that does not depend on sub-groups or
// pieces, state k (master weights first) over the whole flattened space at
// offset k x elements x 4. Parameters are not saved: each is its master
// rounded to its dtype, so loading rewrites them from the masters.
//
// Crash safety: TAG/ is written as a fresh folder next to it, every file
// and the folder fsync'ed, then renamed over TAG (exchanged atomically when
// TAG exists), and the parent fsync'ed; `latest` is written the same way,
// last. A crash at any instant leaves the old checkpoint or the new one.
// The state streams piece by piece through the tier (no copy of the whole
// state in host memory).
//
// Loading checks everything (format, world size, optimizer, parameters,
// sizes, checksums: a first read pass) before it changes anything; the state
// then goes in through the tier's update (atomic on NVMe).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "offload/checkpoint_file.hpp"
#include "offload/engine_impl.hpp"
#include "swap/crc32c.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::offload {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kStateFile = kCheckpointStateFile;

[[noreturn]] void fail(Status status) { throw Error(std::move(status)); }

Status sync_path(const fs::path& path, int flags) {
  swap::FileDescriptor fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (!fd.valid()) return Status::from_errno(errno, "cannot open " + path.string());
  if (::fsync(fd.get()) != 0) return Status::from_errno(errno, "cannot fsync " + path.string());
  return Status::ok();
}

// A new file, 0600, written and fsync'ed.
Status write_file(const fs::path& path, const std::string& text) {
  swap::FileDescriptor fd(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::from_errno(errno, "cannot create " + path.string());
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0) return Status::from_errno(errno, "cannot write " + path.string());
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Status::from_errno(errno, "cannot fsync " + path.string());
  return Status::ok();
}

// Renames `from` onto `to`, atomically replacing what `to` was.
Status replace(const fs::path& from, const fs::path& to, bool directory) {
  std::error_code ec;
  if (directory && fs::exists(to, ec)) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) != 0)
      return Status::from_errno(errno, "cannot replace " + to.string());
    fs::remove_all(from, ec);  // the old checkpoint, now under the temporary name
  } else if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status::from_errno(errno, "cannot rename " + from.string() + " to " + to.string());
  }
  return sync_path(to.parent_path(), O_RDONLY | O_DIRECTORY);
}

// Folders a killed save left behind (".TAG.saving-PID" of a process that is
// gone): never a checkpoint, since only a finished one is renamed to its tag.
void remove_abandoned_saves(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const auto mark = name.rfind(".saving-");
    if (name.empty() || name[0] != '.' || mark == std::string::npos) continue;
    const std::string pid = name.substr(mark + 8);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) == 0 || errno != ESRCH) continue;
    fs::remove_all(entry.path(), ec);
  }
}

std::string hex(const torch::Tensor& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  const auto* p = bytes.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < bytes.numel(); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
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

void EngineImpl::refuse_many_ranks(const char* what) const {
  if (world_size_ == 1) return;
  fail(Status::unimplemented(std::string(what) + ": checkpoints of a job of " +
                             std::to_string(world_size_) +
                             " ranks (one state file per rank) are not built yet; this engine "
                             "saves and loads jobs of one rank"));
}

void EngineImpl::save_checkpoint(const fs::path& dir, std::string tag) {
  const auto t0 = SteadyClock::now();
  refuse_many_ranks("save_checkpoint");
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
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(context(Status::from_errno(ec.value(), "cannot create " + dir.string())));
  remove_abandoned_saves(dir);
  const fs::path staging = dir / ("." + tag + ".saving-" + std::to_string(::getpid()));
  fs::remove_all(staging, ec);
  fs::create_directory(staging, ec);
  if (!ec) fs::permissions(staging, fs::perms::owner_all, ec);  // 0700, like the swap folders
  if (ec) fail(context(Status::from_errno(ec.value(), "cannot create " + staging.string())));
  auto abandon = [&](const Status& s) {
    fs::remove_all(staging, ec);
    fail(context(s));
  };

  // The state, piece by piece, at its place in the layout.
  const fs::path state_path = staging / kStateFile;
  swap::FileDescriptor fd(
      ::open(state_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) abandon(Status::from_errno(errno, "cannot create " + state_path.string()));
  std::vector<std::uint32_t> crcs(static_cast<std::size_t>(num_states_), 0);
  Status s = tier_->read([&](Piece& piece) -> Status {
    for (int k = 0; k < num_states_; ++k) {
      const std::size_t bytes = piece.count * sizeof(float);
      const auto offset = static_cast<off_t>((k * elements_ + piece.begin) * sizeof(float));
      const auto* data = reinterpret_cast<const std::byte*>(piece.state[k]);
      crcs[k] = swap::crc32c({data, bytes}, crcs[k]);
      for (std::size_t done = 0; done < bytes;) {
        const ssize_t n = ::pwrite(fd.get(), data + done, bytes - done, offset + done);
        if (n < 0) return Status::from_errno(errno, "cannot write " + state_path.string());
        done += static_cast<std::size_t>(n);
      }
    }
    return Status::ok();
  });
  if (s.is_ok() && ::fsync(fd.get()) != 0)
    s = Status::from_errno(errno, "cannot fsync " + state_path.string());
  fd.reset();
  if (!s.is_ok()) abandon(s);

  json params = json::array();
  for (const Param& p : params_) {
    params.push_back({{"name", p.name},
                      {"shape", p.storage.shape()},
                      {"dtype", c10::toString(p.dtype)},
                      {"flat", p.flat},
                      {"step", p.step}});
  }
  const LossScaler::State scaler = scaler_.state();
  json manifest = {
      {"format", kCheckpointFormat},
      {"version", kCheckpointVersion},
      {"tag", tag},
      {"world_size", 1},
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
      {"rng", {{"cpu", hex(at::detail::getDefaultCPUGenerator().get_state())}}},
      {"params", params},
      {"files",
       {{kStateFile,
         {{"bytes", static_cast<std::uint64_t>(num_states_) * elements_ * sizeof(float)},
          {"crc32c", crcs}}}}},
      {"config", json::parse(to_json(config_))}};
  if (torch_device_.is_cuda())
    manifest["rng"]["device"] =
        hex(at::globalContext().defaultGenerator(torch_device_).get_state());
  s = write_file(staging / "manifest.json", manifest.dump(1));
  if (s.is_ok()) s = sync_path(staging, O_RDONLY | O_DIRECTORY);
  if (s.is_ok()) s = replace(staging, dir / tag, /*directory=*/true);
  if (!s.is_ok()) abandon(s);
  const fs::path latest = dir / ".latest.saving";
  s = write_file(latest, tag);
  if (s.is_ok()) s = replace(latest, dir / "latest", /*directory=*/false);
  if (!s.is_ok()) fail(context(s));
  const auto bytes = manifest["files"][kStateFile]["bytes"].get<std::uint64_t>();
  const double s_taken = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  ZINF_LOG(kInfo) << "checkpoint " << (dir / tag).string() << ": step " << global_steps_ << ", "
                  << format_bytes(bytes) << " of optimizer state in " << s_taken << " s ("
                  << format_bytes(static_cast<std::uint64_t>(bytes / s_taken)) << "/s)";
}

void EngineImpl::load_checkpoint(const fs::path& dir, std::string tag) {
  const auto t0 = SteadyClock::now();
  refuse_many_ranks("load_checkpoint");
  if (phase_ != Phase::kIdle || micro_steps_ != 0) {
    fail(Status::failed_precondition(
        "load_checkpoint needs an accumulation boundary (not inside a forward, backward or "
        "accumulation window)"));
  }
  auto read = read_checkpoint(dir, std::move(tag));
  if (!read.is_ok()) fail(read.status().with_context("load_checkpoint (nothing was changed)"));
  const Checkpoint& c = *read;
  auto bad = [&](const std::string& why) {
    fail(Status::invalid_argument("load_checkpoint " + c.folder.string() + ": " + why +
                                  "; nothing was changed"));
  };
  if (c.world_size != 1)
    bad("saved by " + std::to_string(c.world_size) + " ranks; this engine runs 1");
  if (c.optimizer != config_.optimizer->type || c.num_states != num_states_)
    bad("saved with optimizer " + c.optimizer + ", this engine runs " + config_.optimizer->type);
  if (c.params.size() != params_.size()) {
    bad("saved " + std::to_string(c.params.size()) + " parameters; the model has " +
        std::to_string(params_.size()));
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Param& p = params_[i];
    const CheckpointParam& q = c.params[i];
    const std::string dtype = c10::toString(p.dtype);
    if (q.name != p.name || q.shape != p.storage.shape() || q.dtype != dtype || q.flat != p.flat) {
      bad("parameter " + std::to_string(i) + " is '" + q.name + "' " +
          shape_text(q.shape, q.dtype) + " in the checkpoint, '" + p.name + "' " +
          shape_text(p.storage.shape(), dtype) + " in the model");
    }
  }
  if (c.elements != elements_)
    bad("saved " + std::to_string(c.elements) + " elements; the model has " +
        std::to_string(elements_));
  // Every byte checked before any state changes.
  if (Status v = verify_checkpoint(c); !v.is_ok()) bad(v.message());
  torch::Tensor cpu_rng, device_rng;
  try {
    const auto& rng = c.manifest.at("rng");
    auto r = unhex(rng.at("cpu").get<std::string>());
    if (!r.is_ok()) bad("manifest.json: rng.cpu: " + r.status().message());
    cpu_rng = *r;
    if (torch_device_.is_cuda() && rng.contains("device")) {
      auto d = unhex(rng["device"].get<std::string>());
      if (!d.is_ok()) bad("manifest.json: rng.device: " + d.status().message());
      device_rng = *d;
    }
    (void)c.manifest.at("loss_scaler").at("scale").get<double>();
    (void)c.manifest.at("scheduler").at("last_batch_iteration").get<std::int64_t>();
    (void)c.manifest.at("skipped_steps").get<std::uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("manifest.json: ") + e.what());
  }

  // Now the state goes in: through the tier's update (on NVMe, all or
  // nothing), then every parameter from its master.
  StepStats stats;
  Status s = tier_->update(
      [&](Piece& piece) -> Status {
        for (int k = 0; k < num_states_; ++k)
          ZINF_RETURN_IF_ERROR(
              read_checkpoint_state(c, k, piece.begin, piece.state[k], piece.count));
        return Status::ok();
      },
      stats);
  if (!s.is_ok()) {
    fail(s.with_context("load_checkpoint " + c.folder.string() +
                        (tier_->atomic() ? " (nothing was changed)"
                                         : " (the optimizer state is partly loaded: load again)")));
  }
  s = restore_homes();
  if (!s.is_ok()) {
    broken_ = true;
    fail(s.with_context("load_checkpoint " + c.folder.string() +
                        ": writing the parameters from the loaded state failed"));
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
                  << format_bytes(c.state_bytes()) << " verified and read in " << s_taken << " s";
}

}  // namespace zinf::offload
