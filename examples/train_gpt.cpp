// The reference training program: a GPT (examples/gpt/model.hpp) trained on
// a text file with zinf's stage-3 engine, its parameters and optimizer state
// wherever the DeepSpeed config puts them, on a CUDA GPU or on the
// host-emulated device with a memory budget (so a model larger than device
// memory trains on a machine without a GPU).
//
//   train_gpt                         the main job: a model 4x the emulated
//                                     device, everything offloaded to NVMe
//                                     under ./zinf-nvme
//   train_gpt --reference torch       the same model, init and data with
//                                     plain LibTorch and torch::optim::AdamW
//   zinf-launch -n 2 train_gpt ...    two ranks (ZeRO data parallelism):
//                                     --batch is each rank's micro-batch,
//                                     each rank reads its rows of the job's
//                                     batch, rank 0 prints and writes --json
//   train_gpt --help                  every flag
//
// It prints each step's loss and where its time went, a summary at the end,
// and with --json FILE one object with the model, the memory peaks, the
// effective config and every step's stage times and bytes.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <sstream>
#include <zinf/common/logging.hpp>
#include <zinf/zinf.hpp>

#include "gpt/flags.hpp"
#include "gpt/model.hpp"
#include "memory_json.hpp"
#include "progress.hpp"
#include "storage_json.hpp"

namespace {

using json = nlohmann::json;

struct Args {
  gpt::Options model;
  int batch = 0;  // 0: the config's micro-batch, else 2
  std::string config = ZINF_CONFIGS_DIR "/zero3_nvme.json";
  std::string device = "auto";
  std::string device_budget = "auto";
  int steps = 20;
  std::uint64_t seed = 1;
  std::string reference;
  std::string json_path;
  std::string data = ZINF_EXAMPLE_DATA;
  std::string nvme_path;
  int print_every = 1;
  bool checkpoint_units = false;
  std::string trace_path;
  std::string checkpoint_dir;
  int checkpoint_every = 0;  // 0: no checkpoints
  int checkpoint_keep = 0;   // 0: keep every checkpoint
  bool resume = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --data " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::uint64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) << 10;
  }
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The busiest stage of a phase, for the one-line breakdowns.
std::pair<const char*, double> busiest(const zinf::StepReport& r) {
  std::pair<const char*, double> best{"compute", r.compute_s};
  for (const auto& [name, s] : {std::pair<const char*, double>{"param_read", r.param_read_s},
                                {"h2d", r.h2d_s},
                                {"d2h", r.d2h_s},
                                {"cpu_adam", r.cpu_adam_s},
                                {"optim_io", r.optim_io_s}}) {
    if (s > best.second) best = {name, s};
  }
  return best;
}

json step_json(const zinf::StepReport& r, double loss) {
  return {{"step", r.step},
          {"loss", loss},
          {"skipped", r.skipped},
          {"grad_norm", r.grad_norm},
          {"lr", r.lr},
          {"loss_scale", r.loss_scale},
          {"wall_s", r.wall_s},
          {"fwd_bwd_s", r.fwd_bwd_s},
          {"step_s", r.step_s},
          {"compute_s", r.compute_s},
          {"param_read_s", r.param_read_s},
          {"h2d_s", r.h2d_s},
          {"d2h_s", r.d2h_s},
          {"stall_s", r.stall_s},
          {"reduce_waits", r.reduce_waits},
          {"cpu_adam_s", r.cpu_adam_s},
          {"optim_io_s", r.optim_io_s},
          {"nvme_read_bytes", r.nvme_read_bytes},
          {"nvme_write_bytes", r.nvme_write_bytes},
          {"param_read_bytes", r.param_read_bytes},
          {"param_write_bytes", r.param_write_bytes},
          {"optim_read_bytes", r.optim_read_bytes},
          {"optim_write_bytes", r.optim_write_bytes},
          {"h2d_bytes", r.h2d_bytes},
          {"d2h_bytes", r.d2h_bytes},
          {"comm_s", r.comm_s},
          {"comm_bytes", r.comm_bytes}};
}

// The loss curve as a few lines of text, at most 100 columns (each the mean
// of its steps).
void print_curve(const std::vector<double>& losses) {
  if (losses.size() < 2) return;
  constexpr std::size_t kColumns = 100;
  std::vector<double> columns;
  const std::size_t per = (losses.size() + kColumns - 1) / kColumns;
  for (std::size_t i = 0; i < losses.size(); i += per) {
    const std::size_t end = std::min(losses.size(), i + per);
    columns.push_back(std::accumulate(losses.begin() + static_cast<std::ptrdiff_t>(i),
                                      losses.begin() + static_cast<std::ptrdiff_t>(end), 0.0) /
                      static_cast<double>(end - i));
  }
  const auto [lo_it, hi_it] = std::minmax_element(columns.begin(), columns.end());
  const double lo = *lo_it, hi = *hi_it, span = hi - lo > 0 ? hi - lo : 1;
  constexpr int kRows = 8;
  std::printf("loss curve (%.4f .. %.4f over %zu steps%s)\n", lo, hi, losses.size(),
              per > 1 ? (", " + std::to_string(per) + " a column").c_str() : "");
  for (int row = kRows - 1; row >= 0; --row) {
    std::string line;
    for (double l : columns) line += (l - lo) / span * (kRows - 1) >= row - 0.5 ? '#' : ' ';
    std::printf("  %8.4f |%s\n", lo + span * row / (kRows - 1), line.c_str());
  }
}

// Each swap path the engine uses, what it is on, and for what.
json nvme_paths_json(const zinf::MemoryReport& m) {
  json out = json::array();
  for (const auto& p : m.nvme_paths) {
    json entry = zinf::tools::storage_json(p.path, p.storage);
    entry["role"] = p.role;
    out.push_back(std::move(entry));
  }
  return out;
}

// What a run recorded. Every step's numbers go into running means (over the
// steps after the first, which records the trace); the steps themselves are
// kept only for --json, so a long run's memory does not grow with its steps
// (but for the losses, 8 bytes a step, for the curve).
struct Run {
  explicit Run(bool keep) : keep_steps(keep) {}

  void add(json step) {
    if (recorded++ == 0) {
      first = step;
    } else {
      for (const auto& [key, value] : step.items()) {
        if (value.is_number()) sums[key] = sums.value(key, 0.0) + value.get<double>();
      }
    }
    if (keep_steps) steps.push_back(std::move(step));
  }
  double mean(const char* key) const {
    return recorded > 1 ? sums.value(key, 0.0) / static_cast<double>(recorded - 1)
                        : first.value(key, 0.0);
  }

  bool keep_steps;
  std::vector<json> steps;  // with keep_steps
  std::size_t recorded = 0;
  json first;
  json sums = json::object();
  std::vector<double> losses;
  double tokens_per_s = 0;  // of the whole job
  int world_size = 1;
  json memory;
  double load_checkpoint_s = -1;  // with --resume
};

// Keeps the `keep` newest global_step<N> checkpoints in `dir` (the HF
// Trainer's save_total_limit); `latest` names the newest, which stays.
void remove_old_checkpoints(const std::filesystem::path& dir, int keep) {
  std::vector<std::pair<long, std::filesystem::path>> tags;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const std::string prefix = "global_step";
    if (!e.is_directory() || name.rfind(prefix, 0) != 0 || name.size() == prefix.size() ||
        name.find_first_not_of("0123456789", prefix.size()) != std::string::npos)
      continue;
    tags.emplace_back(std::stol(name.substr(prefix.size())), e.path());
  }
  std::sort(tags.begin(), tags.end());
  for (std::size_t i = 0; i + static_cast<std::size_t>(keep) < tags.size(); ++i)
    std::filesystem::remove_all(tags[i].second);
}

// The main job: zinf's engine.
Run train_engine(const Args& a, zinf::Config cfg, const std::string& text) {
  zinf::EngineOptions eo;
  eo.device = a.device;
  const std::uint64_t param_bytes = static_cast<std::uint64_t>(a.model.parameters()) * 4;
  const bool on_cuda = a.device == "cuda" || (a.device == "auto" && torch::cuda::is_available());
  eo.device_budget = gpt::device_budget(a.device_budget, a.model, on_cuda);
  if (cfg.fp16.enabled && !on_cuda) {
    throw std::runtime_error(cfg.source +
                             ": fp16.enabled needs a CUDA device: this LibTorch has "
                             "no fp16 matrix multiply on the CPU (use bf16.enabled there)");
  }
  torch::manual_seed(a.seed);
  gpt::GPT model = zinf::partitioned(cfg, [&] { return gpt::GPT(a.model); });
  zinf::Engine<gpt::GPT> engine(model, cfg, eo);
  const zinf::MemoryReport m0 = engine.memory_report();
  std::printf("train_gpt: %lld parameters (%s fp32) on %s",
              static_cast<long long>(a.model.parameters()), zinf::format_bytes(param_bytes).c_str(),
              m0.device.c_str());
  if (m0.device_budget != UINT64_MAX && m0.device_budget > 0)
    std::printf(": the parameters are %.1fx the device",
                static_cast<double>(param_bytes) / m0.device_budget);
  std::printf(
      "\n  params %s, optimizer %s; host: params %s, buffers %s, grads %s, optimizer %s; "
      "pinned %s, io_uring fixed buffers %s\n",
      std::string(zinf::to_string(cfg.zero_optimization.offload_param.device)).c_str(),
      std::string(zinf::to_string(cfg.zero_optimization.offload_optimizer.device)).c_str(),
      zinf::format_bytes(m0.host_params).c_str(),
      zinf::format_bytes(m0.host_param_buffers + m0.host_grad_buffers).c_str(),
      zinf::format_bytes(m0.host_grads).c_str(), zinf::format_bytes(m0.host_optimizer).c_str(),
      m0.pinned ? "yes" : "no", m0.fixed_buffers ? "yes" : "no");
  for (const auto& p : m0.nvme_paths) {
    std::printf("  %s.nvme_path %s: %s%s\n", p.role.c_str(), p.path.c_str(),
                p.storage.describe().c_str(),
                p.storage.ram_backed ? " (warning: memory, not NVMe)" : "");
  }
  engine.reset_peak_memory();

  const int gas = static_cast<int>(engine.config().gradient_accumulation_steps.value_or(1));
  // Each rank reads its rows of the job's batch: together, the samples one
  // rank with world_size x the micro-batch reads.
  const int world = engine.world_size();
  gpt::Batches data(text, a.batch * world, a.model.seq, a.seed);
  const std::int64_t first_row = static_cast<std::int64_t>(engine.rank()) * a.batch;
  // --steps counts from the start of training, so a resumed run ends where
  // an uninterrupted one does, and reads the data from where it stopped.
  int start = 0;
  Run run(!a.json_path.empty());
  if (a.resume) {
    const auto t0 = std::chrono::steady_clock::now();
    engine.load_checkpoint(a.checkpoint_dir);
    run.load_checkpoint_s = seconds_since(t0);
    start = static_cast<int>(engine.global_steps());
    std::printf("train_gpt: resumed from %s at step %d\n", a.checkpoint_dir.c_str(), start);
  }
  const int ran = std::max(a.steps - start, 0);
  double total = 0;
  const double tokens_per_step = static_cast<double>(gas) * a.batch * world * a.model.seq;
  zinf::tools::ProgressLine progress;  // on a terminal, rank 0's
  const bool show_progress = progress.tty() && engine.rank() == 0;
  for (int s = start; s < a.steps; ++s) {
    double loss_sum = 0;
    for (int micro = 0; micro < gas; ++micro) {
      auto [x, y] = data.get(static_cast<std::uint64_t>(s * gas + micro));
      x = x.narrow(0, first_row, a.batch);
      y = y.narrow(0, first_row, a.batch);
      auto loss = gpt::loss(engine(x.to(engine.device())), y.to(engine.device()));
      engine.backward(loss);
      engine.step();
      loss_sum += loss.item<double>();
    }
    const zinf::StepReport& r = engine.last_step_report();
    const double loss = engine.mean_over_ranks(loss_sum / gas);
    run.losses.push_back(loss);
    json step = step_json(r, loss);
    if (s > start || ran == 1) total += r.wall_s;  // the first step records the trace
    if (a.checkpoint_every > 0 && (s + 1) % a.checkpoint_every == 0) {
      const auto t0 = std::chrono::steady_clock::now();
      engine.save_checkpoint(a.checkpoint_dir);
      if (a.checkpoint_keep > 0 && engine.rank() == 0)  // one rank tidies the shared folder
        remove_old_checkpoints(a.checkpoint_dir, a.checkpoint_keep);
      step["checkpoint_s"] = seconds_since(t0);  // what the checkpoint added to this step
    }
    run.add(std::move(step));
    if ((s + 1) % a.print_every == 0 || s + 1 == a.steps) {
      const auto [stage, busy] = busiest(r);
      progress.clear();
      std::printf(
          "step %4llu  loss %.4f  %.0f tokens/s  wall %.3f s = fwd+bwd %.3f + step %.3f | "
          "busiest %s %.3f s | stall %.3f s%s\n",
          static_cast<unsigned long long>(r.step), loss, tokens_per_step / r.wall_s, r.wall_s,
          r.fwd_bwd_s, r.step_s, stage, busy, r.stall_s, r.skipped ? " | skipped (inf/nan)" : "");
      std::fflush(stdout);
    }
    if (show_progress) {
      const double mean_wall = run.mean("wall_s");
      const auto eta = static_cast<long>(mean_wall * (a.steps - s - 1));
      char what[96];
      std::snprintf(what, sizeof what, "loss %.4f, %.0f tokens/s, ETA %ldm%02lds", loss,
                    mean_wall > 0 ? tokens_per_step / mean_wall : 0.0, eta / 60, eta % 60);
      progress.show(static_cast<std::size_t>(s + 1), static_cast<std::size_t>(a.steps), what);
    }
  }
  progress.clear();
  const int timed = ran > 1 ? ran - 1 : 1;
  run.tokens_per_s = total > 0 ? timed * tokens_per_step / total : 0.0;
  run.world_size = world;
  const zinf::MemoryReport m = engine.memory_report();
  run.memory = {{"device_budget_bytes", m.device_budget == UINT64_MAX ? 0 : m.device_budget},
                {"peak_device_bytes", m.device_peak},
                {"host", zinf::tools::host_json(m)},
                {"nvme", zinf::tools::nvme_json(m)},
                {"pinned", m.pinned},
                {"fixed_buffers", m.fixed_buffers},
                {"nvme_paths", nvme_paths_json(m)},
                // The least that crosses to the device per step: every gathered
                // unit once in forward and once in backward.
                {"h2d_ideal_bytes", 2 * (m.nvme_params + m.host_params) * gas},
                {"config", json::parse(zinf::to_json(engine.config()))}};
  return run;
}

// --reference torch: the same model, init and data, plain LibTorch.
Run train_reference(const Args& a, const zinf::Config& cfg, const std::string& text) {
  const zinf::OptimizerConfig o = cfg.optimizer.value_or(zinf::OptimizerConfig{});
  if (o.type != "AdamW" && !(o.type == "Adam" && o.adam_w_mode)) {
    throw std::runtime_error(
        "--reference torch trains with torch::optim::AdamW; the config's "
        "optimizer is " +
        o.type);
  }
  const bool cuda = a.device == "cuda" || (a.device == "auto" && torch::cuda::is_available());
  const torch::Device device(cuda ? torch::kCUDA : torch::kCPU);
  // The CPU computes with the threads the engine's emulated device would use.
  if (!cuda) zinf::set_host_compute_threads(static_cast<int>(cfg.zinf.compute_threads));
  torch::manual_seed(a.seed);
  gpt::GPT model(a.model);
  model->to(device);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(o.lr)
                                                   .betas({o.beta1, o.beta2})
                                                   .eps(o.eps)
                                                   .weight_decay(o.weight_decay));
  // The config's schedule, as the engine runs it (DeepSpeed's formulas).
  std::optional<zinf::LrScheduler> schedule;
  if (cfg.scheduler) schedule.emplace(zinf::LrScheduler::from_config(opt, cfg));
  std::printf(
      "train_gpt --reference torch: %lld parameters on %s, torch::optim::AdamW, "
      "clip_grad_norm_ %g\n",
      static_cast<long long>(a.model.parameters()), cuda ? "cuda" : "cpu", cfg.gradient_clipping);
  const int gas = static_cast<int>(cfg.gradient_accumulation_steps.value_or(1));
  gpt::Batches data(text, a.batch, a.model.seq, a.seed);
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  Run run(!a.json_path.empty());
  double total = 0;
  for (int s = 0; s < a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    double loss_sum = 0;
    for (int micro = 0; micro < gas; ++micro) {
      auto [x, y] = data.get(static_cast<std::uint64_t>(s * gas + micro));
      auto loss = gpt::loss(model(x.to(device)), y.to(device));
      (gas > 1 ? loss / gas : loss).backward();
      loss_sum += loss.item<double>();
    }
    sync();
    const double fwd_bwd = seconds_since(t0);
    const auto t1 = std::chrono::steady_clock::now();
    const double lr = opt.param_groups().front().options().get_lr();
    if (cfg.gradient_clipping > 0)
      torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.gradient_clipping);
    opt.step();
    sync();
    if (schedule) schedule->step();
    zinf::StepReport r;
    r.lr = lr;
    r.step = static_cast<std::uint64_t>(s + 1);
    r.micro_steps = static_cast<std::uint64_t>(gas);
    r.fwd_bwd_s = fwd_bwd;
    r.compute_s = fwd_bwd;
    r.step_s = seconds_since(t1);
    r.cpu_adam_s = cuda ? 0 : r.step_s;
    r.wall_s = seconds_since(t0);
    const double loss = loss_sum / gas;
    run.losses.push_back(loss);
    run.add(step_json(r, loss));
    if (s > 0 || a.steps == 1) total += r.wall_s;
    if ((s + 1) % a.print_every == 0 || s + 1 == a.steps) {
      std::printf("step %4d  loss %.4f  wall %.3f s = fwd+bwd %.3f + step %.3f\n", s + 1, loss,
                  r.wall_s, r.fwd_bwd_s, r.step_s);
      std::fflush(stdout);
    }
  }
  const int timed = a.steps > 1 ? a.steps - 1 : 1;
  run.tokens_per_s = static_cast<double>(timed) * gas * a.batch * a.model.seq / total;
  run.memory = {{"device_budget_bytes", 0},
                {"peak_device_bytes", nullptr},
                {"config", json::parse(zinf::to_json(cfg))}};
  return run;
}

// Means over the steps after the first (the first records the trace).
void print_summary(const Args& a, const Run& run) {
  json mean = json::object();
  for (const char* key : {"wall_s", "fwd_bwd_s", "step_s", "compute_s", "param_read_s", "h2d_s",
                          "d2h_s", "stall_s", "cpu_adam_s", "optim_io_s"})
    mean[key] = run.mean(key);
  print_curve(run.losses);
  const double fb = mean["fwd_bwd_s"], st = mean["step_s"];
  std::printf(
      "summary: %.0f tokens/s; per step %.3f s = fwd+bwd %.3f (compute %.3f, param reads "
      "%.3f, h2d %.3f, d2h %.3f, stall %.3f) + step %.3f (cpu adam %.3f, optimizer io "
      "%.3f); ",
      run.tokens_per_s, mean["wall_s"].get<double>(), fb, mean["compute_s"].get<double>(),
      mean["param_read_s"].get<double>(), mean["h2d_s"].get<double>(), mean["d2h_s"].get<double>(),
      mean["stall_s"].get<double>(), st, mean["cpu_adam_s"].get<double>(),
      mean["optim_io_s"].get<double>());
  if (a.reference.empty()) {
    const double fb_bound =
        std::max({mean["compute_s"].get<double>(), mean["param_read_s"].get<double>(),
                  mean["h2d_s"].get<double>(), mean["d2h_s"].get<double>()});
    const double st_bound =
        std::max(mean["cpu_adam_s"].get<double>(), mean["optim_io_s"].get<double>());
    std::printf("overlap: fwd+bwd %.2fx its busiest stage, step %.2fx its busiest stage\n",
                fb_bound > 0 ? fb / fb_bound : 0.0, st_bound > 0 ? st / st_bound : 0.0);
  } else {
    std::printf("LibTorch reference\n");
  }
  if (run.world_size > 1) {
    const double comm = run.mean("comm_s");
    std::printf("ranks: %d; collectives in flight %.3f s a step (%.0f%% of its wall), %s a step\n",
                run.world_size, comm, 100 * comm / mean["wall_s"].get<double>(),
                zinf::format_bytes(static_cast<std::uint64_t>(run.mean("comm_bytes"))).c_str());
  }
  const double flops = 6.0 * static_cast<double>(a.model.parameters()) * run.tokens_per_s;
  std::printf("throughput: %.1f tokens/s, %.3f TFLOPS (6 x parameters x tokens)", run.tokens_per_s,
              flops / 1e12);
  if (run.memory.contains("h2d_ideal_bytes") && run.memory["h2d_ideal_bytes"].get<double>() > 0) {
    const double h2d = run.mean("h2d_bytes");
    std::printf(
        "; to the device %s a step, %.2fx the ideal (each unit once forward, once backward)",
        zinf::format_bytes(static_cast<std::uint64_t>(h2d)).c_str(),
        h2d / run.memory["h2d_ideal_bytes"].get<double>());
  }
  std::printf("\n");
  const json& memory = run.memory;
  if (!memory["peak_device_bytes"].is_null()) {
    std::printf(
        "memory: device peak %s of a %s budget, host peak RSS %s\n",
        zinf::format_bytes(memory["peak_device_bytes"].get<std::uint64_t>()).c_str(),
        memory["device_budget_bytes"].get<std::uint64_t>() == 0
            ? "unlimited"
            : zinf::format_bytes(memory["device_budget_bytes"].get<std::uint64_t>()).c_str(),
        zinf::format_bytes(peak_rss_bytes()).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{
      "Trains a GPT with zinf's ZeRO-3 engine (or, with --reference torch, with plain "
      "LibTorch) on a text file, and reports where the time and memory went."};
  gpt::add_model_flags(app, a.model, a.batch);
  app.add_option("--config", a.config, "DeepSpeed JSON config")->capture_default_str();
  gpt::add_device_flags(app, a.device, a.device_budget);
  app.add_option("--steps", a.steps, "optimizer steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", a.seed, "initialisation and data seed")->capture_default_str();
  app.add_option("--reference", a.reference, "torch: train with plain LibTorch instead")
      ->check(CLI::IsMember({"torch"}));
  app.add_option("--json", a.json_path, "write the run as one JSON object to FILE");
  app.add_option("--data", a.data, "training text")->capture_default_str();
  app.add_option("--nvme-path", a.nvme_path,
                 "overrides offload_param and offload_optimizer nvme_path (created if missing)");
  app.add_option("--print-every", a.print_every, "print every N steps")->check(CLI::PositiveNumber);
  app.add_option("--checkpoint-dir", a.checkpoint_dir,
                 "engine checkpoints: DIR/global_step<N>/ and DIR/latest, as DeepSpeed");
  app.add_option("--checkpoint-every", a.checkpoint_every,
                 "save a checkpoint every N steps (needs --checkpoint-dir)")
      ->check(CLI::PositiveNumber);
  app.add_option("--checkpoint-keep", a.checkpoint_keep,
                 "keep only the N newest global_step checkpoints (0: all, as DeepSpeed)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", a.resume,
               "continue from DIR/latest (needs --checkpoint-dir): the step count, the data "
               "position, the optimizer, scheduler and loss scaler go on from there");
  app.add_option("--trace", a.trace_path,
                 "write a Chrome trace (Perfetto) of every step to FILE (zinf.trace_path)")
      ->type_name("FILE");
  app.add_flag("--checkpoint-units", a.checkpoint_units,
               "activation checkpointing: each block's backward recomputes its forward "
               "(zinf.checkpoint_units)");
  CLI11_PARSE(app, argc, argv);
  if ((a.resume || a.checkpoint_every > 0) && a.checkpoint_dir.empty()) {
    std::cerr << "train_gpt: --resume and --checkpoint-every need --checkpoint-dir\n";
    return 2;
  }
  if (!a.reference.empty() && !a.checkpoint_dir.empty()) {
    std::cerr
        << "train_gpt: --checkpoint-dir is the engine's; --reference torch does not take it\n";
    return 2;
  }
  if (a.model.hidden % a.model.heads != 0) {
    std::cerr << "train_gpt: --hidden " << a.model.hidden << " is not a multiple of --heads "
              << a.model.heads << "\n";
    return 2;
  }
  try {
    if (a.device_budget != "auto") (void)gpt::parse_bytes(a.device_budget);
  } catch (const std::exception& e) {
    std::cerr << "train_gpt: --device-budget " << a.device_budget << ": " << e.what() << "\n";
    return 2;
  }
  try {
    const std::string text = read_text(a.data);
    if (text.size() < static_cast<std::size_t>(a.model.seq) + 2)
      throw std::runtime_error("--data " + a.data + " is shorter than --seq");
    auto cfg = zinf::Config::from_file(a.config);
    zinf::throw_if_error(cfg.status());
    if (a.checkpoint_units) cfg->zinf.checkpoint_units = true;
    if (!a.trace_path.empty()) cfg->zinf.trace_path = a.trace_path;
    auto& zero = cfg->zero_optimization;
    if (!a.nvme_path.empty()) {
      zero.offload_param.nvme_path = a.nvme_path;
      zero.offload_optimizer.nvme_path = a.nvme_path;
    }
    for (const auto* tier : {&zero.offload_param.nvme_path, &zero.offload_optimizer.nvme_path}) {
      if (!tier->empty()) std::filesystem::create_directories(*tier);
    }
    // Under zinf-launch (or torchrun, mpirun) every rank trains; rank 0 reports.
    const zinf::JobPlace place = zinf::job_place();
    if (place.world_size > 1 && !a.reference.empty())
      throw std::runtime_error(
          "--reference torch trains in one process; run it without a launcher");
    if (place.rank != 0 && std::freopen("/dev/null", "w", stdout) == nullptr)
      throw std::runtime_error("cannot quiet the output of rank " + std::to_string(place.rank));
    const auto world = static_cast<std::uint64_t>(place.world_size);
    gpt::resolve_batch(*cfg, a.batch, world);

    const Run run =
        a.reference.empty() ? train_engine(a, *cfg, text) : train_reference(a, *cfg, text);
    print_summary(a, run);
    if (!a.json_path.empty() && place.rank == 0) {
      json out = {
          {"model_params", a.model.parameters()},
          {"model",
           {{"layers", a.model.layers},
            {"hidden", a.model.hidden},
            {"heads", a.model.heads},
            {"seq", a.model.seq},
            {"vocab", a.model.vocab},
            {"tied", a.model.tied}}},
          {"batch", a.batch},
          {"world_size", run.world_size},
          {"mode", a.reference.empty() ? "zinf" : "torch"},
          {"tokens_per_s", run.tokens_per_s},
          {"tflops", 6.0 * static_cast<double>(a.model.parameters()) * run.tokens_per_s / 1e12},
          {"host_peak_rss_bytes", peak_rss_bytes()},
          {"steps", run.steps}};
      for (const auto& [key, value] : run.memory.items()) out[key] = value;
      if (run.load_checkpoint_s >= 0) out["load_checkpoint_s"] = run.load_checkpoint_s;
      std::ofstream file(a.json_path);
      file << out.dump(2) << "\n";
      if (!file) throw std::runtime_error("cannot write --json " + a.json_path);
    }
  } catch (const std::exception& e) {
    std::cerr << "train_gpt: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
