// zinf-plan: before a run, what a GPT (train_gpt's model flags) trained with
// a DeepSpeed config will hold in each tier and how long its steps will
// take, as DeepSpeed's estimate_zero3_model_states_mem_needs does for
// memory, with time as well:
//
//   zinf-plan --config FILE --layers L --hidden H --heads A --seq S --batch B
//             [--vocab V] [--world-size N] [--swapbench FILE] [--json]
//
// Bytes come from the engine's own sizing (src/offload/plan.hpp): they are
// what the engine's memory report and step report will say, exactly.
// Times come from rates: NVMe from swapbench --json output (the row at the
// config's aio block size and queue depth, else the fastest), the CPU
// optimizer kernel and host copies measured here, and the device's compute
// measured here for the emulated device (one block's forward and backward at
// the run's shape, on zinf.compute_threads) or given for a GPU
// (--device-tflops, --pcie-gbps). Each micro-step's stages overlap, as the
// engine overlaps them, so its time is its busiest stage's; the update is
// the larger of the CPU kernel and the optimizer's NVMe traffic. Across
// ranks the collectives' bytes are the engine's, exactly; their time is in
// the model when --comm-gbps gives the rate at which a rank's collectives
// move them (ranks-bench's comm_bytes over comm_s measures it), as a stage
// of the micro-step (gathers and reductions overlap compute) and of the
// update (the norm, stage 1's reductions, resident shards).
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gpt/flags.hpp"
#include "gpt/model.hpp"
#include "memory_json.hpp"
#include "offload/plan.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/cpu_adam/cpu_adam.hpp"
#include "zinf/zinf.hpp"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

template <typename Fn>
double median_seconds(int runs, Fn&& fn) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// NVMe rates in bytes per second (0: not given).
struct NvmeRates {
  double read = 0, write = 0, mixed = 0;
  std::string source;
};

// The rows of every file, pooled (swapbench --op both, then --op mixed, say).
NvmeRates read_swapbench(const std::vector<std::string>& paths, const zinf::Config& cfg) {
  NvmeRates r;
  json rows = json::array();
  for (const std::string& path : paths) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("--swapbench " + path + ": cannot open it");
    json doc;
    try {
      doc = json::parse(in);
    } catch (const json::exception& e) {
      throw std::runtime_error("--swapbench " + path + ": not JSON (" + e.what() + ")");
    }
    if (!doc.contains("results") || !doc["results"].is_array())
      throw std::runtime_error("--swapbench " + path + ": no results[] (is it swapbench --json?)");
    for (const json& row : doc["results"]) rows.push_back(row);
    r.source += (r.source.empty() ? "" : ", ") + path;
  }
  auto pick = [&](const char* op) {
    double best = 0, matching = 0;
    for (const json& row : rows) {
      if (row.value("op", "") != op) continue;
      const double bps = row.value("gbps", 0.0) * 1e9;
      best = std::max(best, bps);
      if (row.value("block_size", 0ull) == cfg.aio.block_size &&
          row.value("queue_depth", 0ull) == cfg.aio.queue_depth)
        matching = std::max(matching, bps);
    }
    return matching > 0 ? matching : best;
  };
  r.read = pick("read");
  r.write = pick("write");
  r.mixed = pick("mixed");
  if (r.read == 0 || (r.write == 0 && r.mixed == 0))
    throw std::runtime_error("--swapbench " + r.source + ": needs read and write (or mixed) rows");
  return r;
}

// Host memory copy, bytes per second: the emulated device's "PCIe".
double measure_copy() {
  constexpr std::size_t kBytes = 64 << 20;
  auto a = zinf::AlignedBuffer::allocate(kBytes), b = zinf::AlignedBuffer::allocate(kBytes);
  zinf::throw_if_error(a.status());
  zinf::throw_if_error(b.status());
  std::memset(a->data(), 1, kBytes);
  std::memset(b->data(), 2, kBytes);
  return kBytes / median_seconds(5, [&] { std::memcpy(b->data(), a->data(), kBytes); });
}

// Seconds per element of the update on zinf.threads threads, as the engine
// runs it: the gradient norm's read pass, then the CPU optimizer's step with
// the fused write of each parameter to its home in its dtype.
double measure_update(const zinf::Config& cfg, torch::ScalarType param_dtype) {
  namespace ca = zinf::cpu_adam;
  constexpr std::size_t kCount = 4 << 20;
  auto executor = ca::Executor::create(static_cast<int>(cfg.zinf.threads));
  zinf::throw_if_error(executor.status());
  std::vector<float> p(kCount, 1.0f), g(kCount, 0.01f), m(kCount, 0.0f), v(kCount, 0.0f);
  std::vector<float> out(kCount);
  ca::Buffers b;
  b.params = p.data();
  b.grads = g.data();
  b.exp_avg = m.data();
  b.exp_avg_sq = v.data();
  b.copy_out = out.data();
  b.copy_dtype = param_dtype == torch::kHalf       ? ca::Dtype::kF16
                 : param_dtype == torch::kBFloat16 ? ca::Dtype::kBF16
                                                   : ca::Dtype::kF32;
  b.count = kCount;
  std::int64_t step = 0;
  return median_seconds(5,
                        [&] {
                          zinf::throw_if_error(
                              (*executor)->grad_stats(g.data(), ca::Dtype::kF32, kCount).status());
                          zinf::throw_if_error((*executor)->step(ca::Hyper{}, ++step, b));
                        }) /
         kCount;
}

// One micro-step's forward and backward on the emulated device: the model
// with one block, plus one block more for each further layer, each timed
// at the run's shape with plain LibTorch on zinf.compute_threads.
double measure_compute(const gpt::Options& model, int batch, const zinf::Config& cfg,
                       torch::ScalarType dtype) {
  zinf::set_host_compute_threads(static_cast<int>(cfg.zinf.compute_threads));
  torch::manual_seed(1);
  gpt::Options one = model;
  one.layers = 1;
  gpt::GPT gpt(one);
  gpt->to(dtype);
  auto idx = torch::randint(model.vocab, {batch, model.seq}, torch::kLong);
  auto whole = [&] {
    gpt->zero_grad();
    gpt::loss(gpt(idx), idx).backward();
  };
  gpt::Block block(model);
  block->to(dtype);
  auto x = torch::randn({batch, model.seq, model.hidden}, torch::dtype(dtype)).requires_grad_();
  auto one_block = [&] {
    block->zero_grad();
    block(x).sum().backward();
  };
  whole();
  one_block();
  return median_seconds(5, whole) + (model.layers - 1) * median_seconds(5, one_block);
}

// What a micro-step holds on the device besides the parameters, at its
// peak, in bytes: per block, the tensors its forward saves for the backward
// (the inputs of the two norms, of qkv, proj, fc, gelu and out, the
// contiguous q, k and v of the attention's matrix products: 16 values per
// token and hidden unit; the attention probabilities: heads x seq per
// token), the final norm and the logits with their log-softmax and the
// logits' gradient; and two of the largest parameter gradients (one on its
// way off the device while the next is produced).
std::uint64_t activation_bytes(const gpt::Options& m, int batch, std::size_t elem,
                               std::uint64_t largest_gradient) {
  const std::uint64_t tokens = static_cast<std::uint64_t>(batch) * m.seq;
  const auto h = static_cast<std::uint64_t>(m.hidden), v = static_cast<std::uint64_t>(m.vocab);
  const std::uint64_t block = tokens * (16 * h + static_cast<std::uint64_t>(m.heads) * m.seq);
  const std::uint64_t top = tokens * (3 * h + 3 * v);
  return (static_cast<std::uint64_t>(m.layers) * block + top) * elem + 2 * largest_gradient;
}

struct Stage {
  const char* name;
  double seconds;  // per optimizer step
};

}  // namespace

int main(int argc, char** argv) {
  gpt::Options model;
  int batch = 0;
  std::string config_path = ZINF_CONFIGS_DIR "/zero3_nvme.json";
  std::string device = "auto", budget_flag = "auto";
  std::vector<std::string> swapbench_paths;
  int world = 1;
  double device_tflops = 0, pcie_gbps = 0, comm_gbps = 0;
  bool as_json = false;
  CLI::App app{
      "Plans a GPT training run: bytes per rank and tier (exactly what the engine will "
      "hold), NVMe traffic per step, each stage's predicted time, the bottleneck, and "
      "whether it fits."};
  gpt::add_model_flags(app, model, batch);
  app.add_option("--config", config_path, "DeepSpeed JSON config")->capture_default_str();
  gpt::add_device_flags(app, device, budget_flag);
  app.add_option("--world-size", world, "ranks (data parallel)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--swapbench", swapbench_paths,
                 "swapbench --json output for the NVMe path, where the config uses NVMe (repeat "
                 "to pool several: --op both and --op mixed)");
  app.add_option("--device-tflops", device_tflops,
                 "cuda: the TFLOPS the GPU reaches on this model (not its peak)");
  app.add_option("--pcie-gbps", pcie_gbps, "cuda: host-device copy GB/s");
  app.add_option("--comm-gbps", comm_gbps,
                 "world > 1: GB/s a rank's collectives move (comm_bytes / comm_s of a run)");
  app.add_flag("--json", as_json, "one JSON object on stdout");
  CLI11_PARSE(app, argc, argv);
  try {
    auto parsed = zinf::Config::from_file(config_path);
    zinf::throw_if_error(parsed.status());
    zinf::Config cfg = *parsed;
    gpt::resolve_batch(cfg, batch, static_cast<std::uint64_t>(world));
    if (device != "auto") cfg.zinf.device = device;
    const bool cuda =
        cfg.zinf.device == "cuda" || (cfg.zinf.device == "auto" && torch::cuda::is_available());
    cfg.zinf.device = cuda ? "cuda" : "cpu";
    try {
      if (const auto b = gpt::device_budget(budget_flag, model, cuda)) cfg.zinf.device_budget = *b;
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error("--device-budget " + budget_flag + ": " + e.what());
    }
    const std::uint64_t gas = cfg.gradient_accumulation_steps.value_or(1);

    zinf::offload::ModelShape shape;
    const gpt::Options::Shapes gs = model.shapes();
    auto params = [](const std::vector<gpt::Options::Param>& in) {
      std::vector<zinf::offload::ModelParam> out;
      for (const auto& p : in) out.push_back({p.name, p.shape, torch::kFloat});
      return out;
    };
    shape.root = params(gs.root);
    for (const auto& u : gs.units) shape.units.push_back({u.name, params(u.params)});
    // Rank 0 holds the largest shard.
    auto plan = zinf::offload::plan_memory(shape, cfg, world, 0);
    zinf::throw_if_error(plan.status());
    const zinf::offload::MemoryPlan& m = *plan;

    const torch::ScalarType dtype = cfg.bf16_enabled   ? torch::kBFloat16
                                    : cfg.fp16.enabled ? torch::kHalf
                                                       : torch::kFloat;
    const std::size_t elem = c10::elementSize(dtype);
    const bool nvme = m.nvme() > 0;
    NvmeRates rates;
    if (!swapbench_paths.empty()) rates = read_swapbench(swapbench_paths, cfg);
    if (nvme && rates.read == 0) {
      throw std::runtime_error(cfg.source +
                               " puts state on NVMe: give its rates with --swapbench FILE "
                               "(swapbench --path DIR --json > FILE)");
    }
    if (cuda && (device_tflops <= 0 || pcie_gbps <= 0))
      throw std::runtime_error("a cuda plan needs --device-tflops and --pcie-gbps");
    const double copy = cuda ? pcie_gbps * 1e9 : measure_copy();
    const double update_rate = measure_update(cfg, dtype);
    const auto tokens = static_cast<double>(batch) * model.seq;
    const double flops = 6.0 * static_cast<double>(model.parameters()) * tokens +
                         12.0 * model.layers * model.hidden * tokens * model.seq;
    const double compute =
        cuda ? flops / (device_tflops * 1e12) : measure_compute(model, batch, cfg, dtype);

    const double g = static_cast<double>(gas);
    const double optim_bytes =
        static_cast<double>(m.optim_read_bytes + m.optim_write_bytes + m.param_write_bytes);
    const double optim_io =
        !nvme || optim_bytes == 0 ? 0
        : rates.mixed > 0
            ? optim_bytes / rates.mixed
            : static_cast<double>(m.optim_read_bytes) / rates.read +
                  static_cast<double>(m.optim_write_bytes + m.param_write_bytes) / rates.write;
    // Without overlap_comm the backward waits for each reduction: its time
    // joins the compute's.
    const double unoverlapped = cfg.zero_optimization.overlap_comm || comm_gbps <= 0
                                    ? 0
                                    : static_cast<double>(m.reduce_comm_bytes) / (comm_gbps * 1e9);
    const std::vector<Stage> micro = {
        {"compute", g * (compute + unoverlapped)},
        {"param reads",
         rates.read > 0 ? g * static_cast<double>(m.param_read_bytes) / rates.read : 0},
        {"h2d", g * static_cast<double>(m.h2d_bytes) / copy},
        {"d2h", g * static_cast<double>(m.d2h_bytes) / copy},
        {"collectives",
         comm_gbps > 0 ? g * static_cast<double>(m.comm_bytes) / (comm_gbps * 1e9) : 0}};
    const std::vector<Stage> update = {
        {"cpu adam", static_cast<double>(m.own_elements) * update_rate},
        {"optimizer io", optim_io},
        {"collectives",
         comm_gbps > 0 ? static_cast<double>(m.step_comm_bytes) / (comm_gbps * 1e9) : 0}};
    const std::uint64_t comm_per_step = gas * m.comm_bytes + m.step_comm_bytes;
    auto busiest = [](const std::vector<Stage>& s) {
      return *std::max_element(
          s.begin(), s.end(), [](const Stage& a, const Stage& b) { return a.seconds < b.seconds; });
    };
    const Stage fwd_bwd = busiest(micro), step = busiest(update);
    const double step_s = fwd_bwd.seconds + step.seconds;
    const Stage bottleneck = fwd_bwd.seconds >= step.seconds ? fwd_bwd : step;

    // The device: what stays, the live window of gathered parameters (the
    // coordinator's peak), the activations, across ranks the gradients
    // waiting for their reduction.
    const std::uint64_t live_params = std::min(m.gathered_bytes, m.peak_live_elements * elem);
    const std::uint64_t device_peak = m.device_resident + live_params +
                                      activation_bytes(model, batch, elem, m.largest_param_bytes) +
                                      m.grad_bucket_bytes;
    const std::uint64_t budget = cfg.zinf.device_budget;
    const bool fits = budget == 0 || device_peak <= budget;

    if (as_json) {
      json out = {{"tool", "zinf-plan"},
                  {"config", config_path},
                  {"model",
                   {{"layers", model.layers},
                    {"hidden", model.hidden},
                    {"heads", model.heads},
                    {"seq", model.seq},
                    {"vocab", model.vocab},
                    {"tied", model.tied},
                    {"parameters", model.parameters()}}},
                  {"batch", batch},
                  {"gradient_accumulation_steps", gas},
                  {"world_size", world},
                  {"device", cfg.zinf.device},
                  {"device_peak_bytes", device_peak},
                  {"device_resident_bytes", m.device_resident},
                  {"grad_bucket_bytes", m.grad_bucket_bytes},
                  {"device_budget_bytes", budget},
                  {"fits", fits},
                  {"host_bytes", m.host()},
                  {"host", zinf::tools::host_json(m)},
                  {"pinned_bytes", m.pinned},
                  {"nvme_bytes", m.nvme()},
                  {"nvme", zinf::tools::nvme_json(m)},
                  {"nvme_read_bytes_per_step", gas * m.param_read_bytes + m.optim_read_bytes},
                  {"nvme_write_bytes_per_step", m.optim_write_bytes + m.param_write_bytes},
                  {"h2d_bytes_per_step", gas * m.h2d_bytes},
                  {"d2h_bytes_per_step", gas * m.d2h_bytes},
                  {"comm_bytes_per_step", comm_per_step},
                  {"rates",
                   {{"nvme_read_gbps", rates.read / 1e9},
                    {"nvme_write_gbps", rates.write / 1e9},
                    {"nvme_mixed_gbps", rates.mixed / 1e9},
                    {"copy_gbps", copy / 1e9},
                    {"comm_gbps", comm_gbps},
                    {"update_ns_per_element", update_rate * 1e9},
                    {"compute_s_per_micro_step", compute}}},
                  {"backward_waits_s_per_micro_step", unoverlapped},
                  {"stages", json::object()},
                  {"fwd_bwd_s", fwd_bwd.seconds},
                  {"update_s", step.seconds},
                  {"step_s", step_s},
                  {"bottleneck", bottleneck.name}};
      for (const Stage& s : micro) out["stages"][s.name] = s.seconds;
      for (const Stage& s : update)
        out["stages"][std::string(s.name) == "collectives" ? "update collectives" : s.name] =
            s.seconds;
      std::cout << out.dump(2) << "\n";
      return 0;
    }
    auto b = [](std::uint64_t n) { return zinf::format_bytes(n); };
    std::printf(
        "zinf-plan: %lld parameters (%d layers x %d hidden), micro-batch %d x seq %d, "
        "%llu accumulation step(s), world %d, %s\n",
        static_cast<long long>(model.parameters()), model.layers, model.hidden, batch, model.seq,
        static_cast<unsigned long long>(gas), world, config_path.c_str());
    std::printf("per rank:\n");
    std::printf(
        "  device  %s peak (resident %s, gathered parameters %s, activations and gradients %s, "
        "gradients waiting for their reduction %s)%s\n",
        b(device_peak).c_str(), b(m.device_resident).c_str(), b(live_params).c_str(),
        b(activation_bytes(model, batch, elem, m.largest_param_bytes)).c_str(),
        b(m.grad_bucket_bytes).c_str(),
        budget == 0 ? ""
        : fits      ? (" of a " + b(budget) + " budget: fits").c_str()
                    : (" of a " + b(budget) + " budget: DOES NOT FIT").c_str());
    std::printf(
        "  host    %s: params %s, param buffers %s, grads %s, grad buffers %s, "
        "optimizer %s (pinned %s)\n",
        b(m.host()).c_str(), b(m.host_params).c_str(), b(m.host_param_buffers).c_str(),
        b(m.host_grads).c_str(), b(m.host_grad_buffers).c_str(), b(m.host_optimizer).c_str(),
        b(m.pinned).c_str());
    std::printf("  nvme    %s: params %s, optimizer %s\n", b(m.nvme()).c_str(),
                b(m.nvme_params).c_str(), b(m.nvme_optimizer).c_str());
    std::printf("per step: nvme reads %s, writes %s; to the device %s, from it %s%s\n",
                b(gas * m.param_read_bytes + m.optim_read_bytes).c_str(),
                b(m.optim_write_bytes + m.param_write_bytes).c_str(), b(gas * m.h2d_bytes).c_str(),
                b(gas * m.d2h_bytes).c_str(),
                world > 1 ? ("; collectives " + b(comm_per_step)).c_str() : "");
    std::printf("predicted step %.3f s = fwd+bwd %.3f (", step_s, fwd_bwd.seconds);
    for (const Stage& s : micro)
      std::printf("%s%s %.3f", &s == &micro.front() ? "" : ", ", s.name, s.seconds);
    std::printf(") + update %.3f (", step.seconds);
    for (const Stage& s : update)
      std::printf("%s%s %.3f", &s == &update.front() ? "" : ", ", s.name, s.seconds);
    std::printf("); bottleneck: %s\n", bottleneck.name);
    if (world > 1 && comm_gbps <= 0)
      std::printf(
          "(the collectives between the %d ranks are not in the time model: give "
          "--comm-gbps)\n",
          world);
    std::printf(
        "rates: %s; copies %.1f GB/s%s; update %.2f ns/element; compute %.3f s per "
        "micro-step%s\n",
        rates.source.empty() ? "no NVMe rates" : ("NVMe from " + rates.source).c_str(), copy / 1e9,
        cuda ? " (given)" : " (measured)", update_rate * 1e9, compute,
        cuda ? " (from --device-tflops)" : " (measured)");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "zinf-plan: error: " << e.what() << "\n";
    return 1;
  }
}
