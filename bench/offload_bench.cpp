// The drop-in optimizer, whole step, against references measured in the same
// benchmark:
//   BM_CpuMode     OffloadAdamW (state in host memory) vs LibTorch's AdamW on
//                  the same parameters: counter speedup_vs_torch.
//   BM_NvmeMode    OffloadAdamW with the state on NVMe (a directory under the
//                  current one). Before each step the same SwapStore settings
//                  move the step's bytes (write + read), and the CPU kernel
//                  runs the step in cpu mode; counter bound_ratio = median
//                  step wall / max(median I/O time, kernel time). The
//                  pipeline's bar is <= 1.15.
//   BM_NvmeRss     resident memory of a fresh process holding N fp32
//                  parameters and gradients and an NVMe OffloadAdamW
//                  (sub_group_size 1M), minus the 8 bytes per parameter the
//                  model itself holds.
//   BM_TraceSpans  the engine's step timeline (zinf.trace_path): the cost of
//                  one span written to a trace file in the current
//                  directory (counter ns_per_span), to set against the spans
//                  a step writes and its wall time.
//   BM_TraceOps    what recording LibTorch's operators (a trace's ops tracks)
//                  adds to each operator: a tiny add run N times recorded
//                  and N times not, in each iteration (ns_per_op_recorded,
//                  the difference per operator), and the cost of writing one
//                  operator's span (ns_per_op_written).
#include <benchmark/benchmark.h>
#include <stdlib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "offload/state_tier.hpp"
#include "offload/trace.hpp"
#include "zinf/zinf.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Scratch {
  Scratch() {
    std::string pattern = (std::filesystem::current_path() / "offload-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path = pattern;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path path;
};

std::vector<torch::Tensor> make_params(std::int64_t n) {
  auto p = torch::ones({n}).requires_grad_();
  p.mutable_grad() = torch::full({n}, 0.01f);
  return {p};
}

double seconds(const std::function<void()>& fn) {
  const auto t = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t).count();
}

zinf::OffloadOptions nvme_options(const std::filesystem::path& dir, std::uint64_t sub_group) {
  return zinf::OffloadOptions()
      .device("nvme")
      .nvme_path(dir.string())
      .sub_group_size(sub_group)
      .threads(2)
      .queue_depth(32)
      .block_size(1 << 20)
      .checksum(true);
}

void BM_CpuMode(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  torch::set_num_threads(2);
  auto torch_params = make_params(n);
  torch::optim::AdamW torch_opt(torch_params, torch::optim::AdamWOptions(1e-3));
  torch_opt.step();
  const double torch_s = seconds([&] { torch_opt.step(); });
  auto params = make_params(n);
  zinf::OffloadAdamW opt(params, torch::optim::AdamWOptions(1e-3),
                         zinf::OffloadOptions().threads(2));
  std::vector<double> walls;
  for (auto _ : state) {
    opt.step();
    walls.push_back(opt.last_step_stats().wall_s);
  }
  std::sort(walls.begin(), walls.end());
  const double ours = walls[walls.size() / 2];
  state.counters["torch_step_s"] = torch_s;
  state.counters["speedup_vs_torch"] = torch_s / ours;
  state.SetItemsProcessed(state.iterations() * n);
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

// The step's own I/O with nothing to compute: an NVMe tier of the same shape
// and options (its own file beside the step's, so the same file state: both
// slots written, preallocated, steady state) updated with a piece function
// that does nothing. Reads of the next pieces and writes of the previous
// ones run concurrently at the step's queue depth, through the same
// pipeline and its dependencies, every Status checked: the step does all of
// this plus the kernel, so its wall cannot be below this time.
class IoOnly {
 public:
  static zinf::Result<IoOnly> open(const zinf::offload::TierShape& shape,
                                   const zinf::OffloadOptions& options) {
    auto none = [](zinf::offload::Piece&) { return zinf::Status::ok(); };
    ZINF_ASSIGN_OR_RETURN(auto tier, zinf::offload::make_nvme_tier(shape, options, "Adam", none));
    IoOnly io(std::move(tier));
    ZINF_RETURN_IF_ERROR(io.step().status());  // both slots written
    return io;
  }
  zinf::Result<double> step() {
    zinf::StepStats stats;
    const auto t = Clock::now();
    ZINF_RETURN_IF_ERROR(
        tier_->update([](zinf::offload::Piece&) { return zinf::Status::ok(); }, stats));
    (void)tier_->take_io();
    return std::chrono::duration<double>(Clock::now() - t).count();
  }

 private:
  explicit IoOnly(std::unique_ptr<zinf::offload::StateTier> tier) : tier_(std::move(tier)) {}
  std::unique_ptr<zinf::offload::StateTier> tier_;
};

void BM_NvmeMode(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const auto sub_group = static_cast<std::uint64_t>(state.range(1));
  Scratch step_dir, io_dir;
  // Reference 1: the CPU kernel alone (cpu mode, same step).
  auto cpu_params = make_params(n);
  zinf::OffloadAdamW cpu_opt(cpu_params, torch::optim::AdamWOptions(1e-3),
                             zinf::OffloadOptions().threads(2));
  std::vector<double> kernel;
  for (int i = 0; i < 3; ++i) {
    cpu_opt.step();
    kernel.push_back(cpu_opt.last_step_stats().wall_s);
  }
  // Reference 2: the step's I/O alone, measured right before each step,
  // because this disk's throughput drifts between runs.
  zinf::offload::TierShape shape;
  shape.groups = zinf::offload::TierShape::even_groups(static_cast<std::uint64_t>(n), sub_group);
  shape.num_states = 3;
  auto io = IoOnly::open(shape, nvme_options(io_dir.path, sub_group));
  if (!io.is_ok()) return state.SkipWithError(io.status().to_string().c_str());
  auto params = make_params(n);
  zinf::OffloadAdamW opt(params, torch::optim::AdamWOptions(1e-3),
                         nvme_options(step_dir.path, sub_group));
  opt.step();
  const double kernel_s = quantile(kernel, 0.5);
  std::vector<double> io_s, walls, ratios;
  for (auto _ : state) {
    auto t = io->step();
    if (!t.is_ok()) return state.SkipWithError(t.status().to_string().c_str());
    io_s.push_back(*t);
    opt.step();
    walls.push_back(opt.last_step_stats().wall_s);
    ratios.push_back(walls.back() / std::max(*t, kernel_s));
    state.SetIterationTime(walls.back());
  }
  const auto& s = opt.last_step_stats();
  state.counters["io_s"] = quantile(io_s, 0.5);
  state.counters["kernel_s"] = kernel_s;
  state.counters["wall_s"] = quantile(walls, 0.5);
  state.counters["bound_ratio"] = quantile(ratios, 0.5);
  state.counters["bound_ratio_p25"] = quantile(ratios, 0.25);
  state.counters["bound_ratio_p75"] = quantile(ratios, 0.75);
  state.counters["read_B_per_param"] = static_cast<double>(s.bytes_read) / static_cast<double>(n);
  state.counters["write_B_per_param"] =
      static_cast<double>(s.bytes_written) / static_cast<double>(n);
  state.counters["unhidden_io_s"] = s.read_s + s.write_s;
  state.SetItemsProcessed(state.iterations() * n);
}

std::uint64_t rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Runs in a fresh process (this binary, re-executed with --rss-child), so
// that nothing else this benchmark allocated counts in its RSS.
int rss_child(std::int64_t n) {
  Scratch dir;
  auto params = make_params(n);
  zinf::OffloadAdamW opt(params, torch::optim::AdamWOptions(1e-3), nvme_options(dir.path, 1 << 20));
  opt.step();
  opt.step();
  std::printf("%llu\n", static_cast<unsigned long long>(rss_bytes()));
  return 0;
}

void BM_NvmeRss(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  for (auto _ : state) {
    const std::string cmd =
        "/proc/" + std::to_string(::getpid()) + "/exe --rss-child " + std::to_string(n);
    FILE* pipe = ::popen(cmd.c_str(), "r");
    unsigned long long rss = 0;
    if (pipe == nullptr || std::fscanf(pipe, "%llu", &rss) != 1)
      return state.SkipWithError("rss child failed");
    ::pclose(pipe);
    state.counters["rss_MiB"] = static_cast<double>(rss) / (1 << 20);
    state.counters["rss_minus_model_MiB"] =
        (static_cast<double>(rss) - 8.0 * static_cast<double>(n)) / (1 << 20);
  }
}

void BM_TraceSpans(benchmark::State& state) {
  const std::filesystem::path path = "zinf-bench-trace.json";
  auto trace = zinf::offload::Trace::open(path, 0);
  if (!trace.is_ok()) return state.SkipWithError(trace.status().to_string().c_str());
  const auto spans = static_cast<std::size_t>(state.range(0));
  std::vector<zinf::Interval> periods(spans);
  const auto t0 = zinf::SteadyClock::now();
  for (std::size_t i = 0; i < spans; ++i)
    periods[i] = {t0 + std::chrono::microseconds(2 * i), t0 + std::chrono::microseconds(2 * i + 1)};
  std::uint64_t step = 0;
  const auto begin = std::chrono::steady_clock::now();
  for (auto _ : state) (*trace)->spans(zinf::offload::Trace::kH2d, periods, ++step);
  trace->reset();  // the last bytes flushed, inside the time
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - begin;
  state.counters["ns_per_span"] = took.count() / static_cast<double>(state.iterations() * spans);
  std::filesystem::remove(path);
}

void BM_TraceOps(benchmark::State& state) {
  const std::filesystem::path path = "zinf-bench-trace-ops.json";
  auto trace = zinf::offload::Trace::open(path, 0);
  if (!trace.is_ok()) return state.SkipWithError(trace.status().to_string().c_str());
  const auto n = state.range(0);
  const torch::Tensor a = torch::ones({1}), b = torch::ones({1});
  auto run = [&] {
    for (std::int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(torch::add(a, b));
  };
  zinf::SteadyClock::duration plain{}, recorded{}, written{};
  std::uint64_t ops = 0;
  for (auto _ : state) {
    const auto t0 = zinf::SteadyClock::now();
    run();
    const auto recorder = zinf::offload::OpRecorder::start();
    const auto t1 = zinf::SteadyClock::now();
    run();
    const auto t2 = zinf::SteadyClock::now();
    const auto spans = recorder->take();
    (*trace)->ops(spans, {t1, t2}, 1);
    const auto t3 = zinf::SteadyClock::now();
    plain += t1 - t0;
    recorded += t2 - t1;
    written += t3 - t2;
    ops += spans.size();
  }
  trace->reset();
  const double runs = static_cast<double>(state.iterations() * n);
  auto ns = [](zinf::SteadyClock::duration d) {
    return std::chrono::duration<double, std::nano>(d).count();
  };
  state.counters["ns_per_op_plain"] = ns(plain) / runs;
  state.counters["ns_per_op_recorded"] = (ns(recorded) - ns(plain)) / runs;
  state.counters["ns_per_op_written"] =
      ns(written) / static_cast<double>(std::max<std::uint64_t>(1, ops));
  state.counters["ops_per_add"] = static_cast<double>(ops) / runs;
  std::filesystem::remove(path);
}

}  // namespace

BENCHMARK(BM_TraceSpans)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TraceOps)->Arg(10000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CpuMode)->Arg(64 << 20)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NvmeMode)
    ->Args({16 << 20, 2 << 20})
    ->Args({32 << 20, 4 << 20})
    ->Iterations(12)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NvmeRss)
    ->Arg(10000000)
    ->Arg(100000000)
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--rss-child") return rss_child(std::atoll(argv[2]));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
