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
#include <benchmark/benchmark.h>
#include <stdlib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "offload/trace.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/swap/swap_store.hpp"
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

// Seconds for the store (same settings as the optimizer's) to stream a
// step's bytes: every sub-group's 3 fp32 arrays written with the queue kept
// full, then read back. The same access pattern as swapbench: the disk's
// bandwidth for these bytes, the bound the step is held to.
double store_seconds(zinf::swap::SwapStore& store, std::uint64_t groups, std::uint64_t sub_group,
                     zinf::AlignedBuffer& buf) {
  const std::uint64_t bytes = sub_group * 4;
  return seconds([&] {
    for (bool write : {true, false}) {
      std::vector<zinf::swap::SwapTicket> t;
      for (std::uint64_t g = 0; g < groups; ++g) {
        for (int s = 0; s < 3; ++s) {
          std::span<std::byte> b{buf.data() + s * bytes, bytes};
          const std::string key = std::to_string(g) + "/" + std::to_string(s);
          t.push_back(write ? *store.write(key, b) : *store.read(key, b));
        }
      }
      for (auto x : t) (void)store.wait(x);
    }
  });
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void BM_NvmeMode(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const auto sub_group = static_cast<std::uint64_t>(state.range(1));
  Scratch dir;
  // Reference 1: the CPU kernel alone (cpu mode, same step).
  auto cpu_params = make_params(n);
  zinf::OffloadAdamW cpu_opt(cpu_params, torch::optim::AdamWOptions(1e-3),
                             zinf::OffloadOptions().threads(2));
  std::vector<double> kernel;
  for (int i = 0; i < 3; ++i) {
    cpu_opt.step();
    kernel.push_back(cpu_opt.last_step_stats().wall_s);
  }
  // Reference 2: the store moving a step's bytes, measured right before each
  // step, because this disk's throughput drifts between runs.
  zinf::swap::SwapStoreOptions so;
  so.paths = {dir.path};
  so.aio.queue_depth = 32;
  auto store = zinf::swap::SwapStore::open(so);
  if (!store.is_ok()) return state.SkipWithError(store.status().to_string().c_str());
  auto buf = zinf::AlignedBuffer::allocate(sub_group * 4 * 3);
  std::memset(buf->data(), 1, buf->size());
  const std::uint64_t groups = (static_cast<std::uint64_t>(n) + sub_group - 1) / sub_group;
  auto params = make_params(n);
  zinf::OffloadAdamW opt(params, torch::optim::AdamWOptions(1e-3),
                         nvme_options(dir.path, sub_group));
  opt.step();
  std::vector<double> io, walls;
  for (auto _ : state) {
    io.push_back(store_seconds(**store, groups, sub_group, *buf));
    opt.step();
    walls.push_back(opt.last_step_stats().wall_s);
    state.SetIterationTime(walls.back());
  }
  const double wall = median(walls), io_s = median(io), kernel_s = median(kernel);
  const auto& s = opt.last_step_stats();
  state.counters["io_s"] = io_s;
  state.counters["kernel_s"] = kernel_s;
  state.counters["wall_s"] = wall;
  state.counters["bound_ratio"] = wall / std::max(io_s, kernel_s);
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

}  // namespace

BENCHMARK(BM_TraceSpans)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CpuMode)->Arg(64 << 20)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_NvmeMode)
    ->Args({16 << 20, 2 << 20})
    ->Args({32 << 20, 4 << 20})
    ->Iterations(5)
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
