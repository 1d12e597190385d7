// swapbench: NVMe throughput and tuning through zinf's own I/O stack.
// Exit codes: 0 ok, 1 a run failed, 2 bad usage (nothing was written).
#include <stdlib.h>

#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "options.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/file.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf::swapbench {
namespace {

// The default scratch directory, removed with its contents on every exit path.
class TempDir {
 public:
  Status create() {
    std::string pattern = (std::filesystem::current_path() / "swapbench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::from_errno(errno, "cannot create a temporary directory in " +
                                           std::filesystem::current_path().string());
    }
    path_ = pattern;
    return Status::ok();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

int usage_error(const Status& s) {
  std::cerr << "swapbench: " << s.message() << "\n(see swapbench --help)\n";
  return 2;
}

int run_error(const Status& s) {
  std::cerr << "swapbench: " << s.to_string() << "\n";
  return 1;
}

Result<std::vector<IoBackend>> backends_to_run(const Options& o) {
  if (!o.backends.empty()) {
    Status s = swap::probe_backend(o.backends[0]);
    if (!s.is_ok())
      return Status::invalid_argument("--backend " + std::string(to_string(o.backends[0])) + ": " +
                                      s.message());
    return o.backends;
  }
  std::vector<IoBackend> out;
  for (IoBackend b : {IoBackend::kIoUring, IoBackend::kLibAio, IoBackend::kPsync}) {
    if (swap::probe_backend(b).is_ok()) out.push_back(b);
  }
  return out;
}

RunConfig base_config(const Options& o, const std::vector<std::filesystem::path>& paths) {
  RunConfig c;
  c.paths = paths;
  c.size = o.size;
  c.block_size = o.block_size;
  c.queue_depth = o.queue_depth;
  c.threads = o.threads;
  c.ops = o.ops;
  c.loops = o.loops;
  c.checksum = o.checksum;
  c.sqpoll = o.sqpoll;
  c.verify = o.verify;
  return c;
}

double harmonic(double a, double b) { return a > 0 && b > 0 ? 2 / (1 / a + 1 / b) : 0; }

int sweep(const Options& o, const std::vector<std::filesystem::path>& paths,
          const std::vector<IoBackend>& backends) {
  std::vector<RunResult> all;
  const std::size_t total =
      o.sweep_block_sizes.size() * o.sweep_queue_depths.size() * backends.size();
  std::size_t done = 0;
  tools::ProgressLine progress;
  for (IoBackend b : backends) {
    for (std::uint64_t bs : o.sweep_block_sizes) {
      for (std::uint32_t qd : o.sweep_queue_depths) {
        RunConfig c = base_config(o, paths);
        c.backend = b;
        c.block_size = bs;
        c.queue_depth = qd;
        c.size = std::max(o.size / bs * bs, bs);
        progress.show(done, total,
                      std::string(to_string(b)) + " block " + std::to_string(bs >> 10) + "K qd " +
                          std::to_string(qd));
        auto r = run(c);
        if (!r.is_ok()) {
          progress.clear();
          return run_error(r.status());
        }
        all.insert(all.end(), r->begin(), r->end());
        ++done;
      }
    }
  }
  progress.clear();
  std::ofstream(o.csv) << to_csv(all);
  std::ofstream(o.svg) << to_svg(all,
                                 "swapbench: GB/s against queue depth (" + paths[0].string() + ")");
  std::cerr << "swapbench: wrote " << o.csv << " and " << o.svg << "\n";
  print_table(std::cout, all);
  if (!o.tune) return 0;

  // Best read, best write, and one configuration for DeepSpeed's single aio
  // block: the highest harmonic mean of its read and write throughput.
  const RunResult* best[2] = {nullptr, nullptr};
  std::map<std::tuple<std::string, std::uint64_t, std::uint32_t>, std::pair<double, double>> both;
  for (const RunResult& r : all) {
    const int i = r.op == Op::kWrite ? 0 : 1;
    if (best[i] == nullptr || r.gbps > best[i]->gbps) best[i] = &r;
    auto& rw = both[{r.backend, r.block_size, r.queue_depth}];
    (r.op == Op::kWrite ? rw.first : rw.second) = r.gbps;
  }
  for (int i = 0; i < 2; ++i) {
    if (best[i] == nullptr) continue;
    std::cout << "best " << (i == 0 ? "write" : "read") << ": " << best[i]->gbps << " GB/s ("
              << best[i]->backend << ", block_size " << best[i]->block_size << ", queue_depth "
              << best[i]->queue_depth << ", threads " << best[i]->threads << ")\n";
  }
  auto chosen = std::max_element(both.begin(), both.end(), [&](const auto& a, const auto& b) {
    const auto score = [&](const auto& e) {
      return o.ops.size() == 2 ? harmonic(e.second.first, e.second.second)
                               : e.second.first + e.second.second;
    };
    return score(a) < score(b);
  });
  AioConfig aio;
  aio.block_size = std::get<1>(chosen->first);
  aio.queue_depth = std::get<2>(chosen->first);
  aio.intra_op_parallelism = o.threads;
  nlohmann::json block = nlohmann::json::parse(zinf::to_json(aio));
  block["zinf"] = {{"io_backend", std::get<0>(chosen->first)}};
  std::cout << "chosen for the config (highest harmonic mean of read and write GB/s):\n"
            << block.dump(2) << "\n";
  if (!o.emit_config.empty()) {
    std::ofstream out(o.emit_config);
    out << block.dump(2) << "\n";
    if (!out) return run_error(Status::from_errno(errno, "--emit-config " + o.emit_config));
    std::cerr << "swapbench: wrote " << o.emit_config << "\n";
  }
  return 0;
}

int main_impl(int argc, const char* const* argv) {
  auto parsed = parse_options(argc, argv);
  if (!parsed.is_ok()) return usage_error(parsed.status());
  const Options& o = *parsed;
  if (o.help) {
    std::cout << usage();
    return 0;
  }
  auto backends = backends_to_run(o);
  if (!backends.is_ok()) return usage_error(backends.status());
  TempDir temp;
  std::vector<std::filesystem::path> paths = o.paths;
  if (paths.empty()) {
    if (Status s = temp.create(); !s.is_ok()) return usage_error(s);
    paths = {temp.path()};
  }
  if (Status s = check_paths(paths, o.size); !s.is_ok()) return usage_error(s);
  for (const auto& p : paths) {
    const swap::StorageInfo storage = swap::describe_storage(p);
    if (storage.ram_backed) {
      std::cerr << "swapbench: warning: " << p.string() << " is on " << storage.filesystem
                << ": this measures memory, not NVMe\n";
    }
  }
  if (o.sweep || o.tune) return sweep(o, paths, *backends);

  std::vector<RunResult> results;
  for (IoBackend b : *backends) {
    RunConfig c = base_config(o, paths);
    c.backend = b;
    auto r = run(c);
    if (!r.is_ok()) return run_error(r.status());
    results.insert(results.end(), r->begin(), r->end());
  }
  if (o.json) {
    std::vector<std::string> names;
    for (const auto& p : paths) names.push_back(p.string());
    std::cout << to_json(results, names) << "\n";
  } else {
    const swap::StorageInfo storage = swap::describe_storage(paths[0]);
    std::cout << "swapbench: " << (o.size >> 20) << " MiB per op on " << paths[0].string()
              << (paths.size() > 1 ? " (striped)" : "") << (o.verify ? ", data verified" : "")
              << "\n  storage: " << storage.describe() << "; RLIMIT_MEMLOCK "
              << (storage.memlock_limit == UINT64_MAX ? std::string("unlimited")
                                                      : format_bytes(storage.memlock_limit))
              << "\n";
    print_table(std::cout, results);
  }
  return 0;
}

}  // namespace
}  // namespace zinf::swapbench

int main(int argc, char** argv) { return zinf::swapbench::main_impl(argc, argv); }
