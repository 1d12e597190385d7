// The NVMe tier: each engine through IoQueue, and SwapStore with and without
// checksums, on an O_DIRECT file in the current directory (a real disk).
// swapbench and scripts/fio-compare.sh are the whole-system measurements.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "zinf/common/aligned.hpp"
#include "zinf/swap/file.hpp"
#include "zinf/swap/swap_store.hpp"

namespace {

using namespace zinf;
using namespace zinf::swap;

constexpr std::uint64_t kBytes = 256ull << 20;

struct Scratch {
  Scratch() {
    std::string pattern = (std::filesystem::current_path() / "swap-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path = pattern;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path path;
};

void BM_Engine(benchmark::State& state, IoBackend backend, IoOp op) {
  const auto block = static_cast<std::uint32_t>(state.range(0));
  const auto depth = static_cast<std::uint32_t>(state.range(1));
  Scratch dir;
  auto file = open_direct(dir.path / "f", O_RDWR | O_CREAT | O_EXCL, 0600, false);
  if (!file.is_ok()) return state.SkipWithError(file.status().to_string().c_str());
  if (::fallocate(file->fd.get(), 0, 0, kBytes) != 0) return state.SkipWithError("fallocate");
  IoEngineOptions eo;
  eo.queue_depth = depth;
  auto engine = make_io_engine(backend, eo);
  if (!engine.is_ok()) return state.SkipWithError(engine.status().to_string().c_str());
  const int index = *(*engine)->add_file(file->fd.get(), (dir.path / "f").string());
  auto pool = AlignedBuffer::allocate(std::uint64_t{block} * depth);
  std::span<std::byte> regions[] = {pool->bytes()};
  (void)(*engine)->register_buffers(regions);
  IoQueue q(std::move(*engine));
  std::vector<IoResult> done(depth);
  const std::uint64_t blocks = kBytes / block;
  if (op == IoOp::kRead) {  // something to read
    std::vector<IoRequest> w;
    for (std::uint64_t b = 0; b < blocks; ++b)
      w.push_back({IoOp::kWrite, index, b * block, pool->data(), block, b});
    for (std::size_t s = 0; s < w.size();) {
      s += *q.submit(std::span(w).subspan(s));
      (void)q.wait(done, 1);
    }
    while (q.pending() > 0) (void)q.wait(done, q.pending());
  }
  for (auto _ : state) {
    std::uint64_t next = 0, finished = 0;
    while (finished < blocks) {
      while (next < blocks && q.free_slots() > 0) {
        IoRequest r{op, index, next * block, pool->data() + (next % depth) * block, block, next};
        if (*q.submit({&r, 1}) == 0) break;
        ++next;
      }
      auto n = q.wait(done, 1);
      if (!n.is_ok()) return state.SkipWithError(n.status().to_string().c_str());
      for (std::size_t k = 0; k < *n; ++k) {
        if (!done[k].status.is_ok()) return state.SkipWithError(done[k].status.to_string().c_str());
      }
      finished += *n;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBytes));
}

void BM_Store(benchmark::State& state, bool checksum) {
  Scratch dir;
  SwapStoreOptions o;
  o.paths = {dir.path};
  o.aio.queue_depth = 32;
  o.checksum = checksum;
  auto store = SwapStore::open(o);
  if (!store.is_ok()) return state.SkipWithError(store.status().to_string().c_str());
  constexpr std::uint64_t kExtent = 1 << 20, kWindow = 32;
  auto pool = AlignedBuffer::allocate(kExtent * kWindow);
  std::memset(pool->data(), 7, pool->size());
  for (auto _ : state) {
    for (bool write : {true, false}) {
      std::vector<SwapTicket> tickets;
      for (std::uint64_t e = 0; e < kBytes / kExtent; ++e) {
        if (tickets.size() == kWindow) {
          Status s = (*store)->wait(tickets.front());
          if (!s.is_ok()) return state.SkipWithError(s.to_string().c_str());
          tickets.erase(tickets.begin());
        }
        std::span<std::byte> b{pool->data() + (e % kWindow) * kExtent, kExtent};
        const std::string key = std::to_string(e);
        auto t = write ? (*store)->write(key, b) : (*store)->read(key, b);
        if (!t.is_ok()) return state.SkipWithError(t.status().to_string().c_str());
        tickets.push_back(*t);
      }
      for (auto t : tickets) {
        Status s = (*store)->wait(t);
        if (!s.is_ok()) return state.SkipWithError(s.to_string().c_str());
      }
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBytes * 2));
}

void register_all() {
  for (IoBackend b : {IoBackend::kIoUring, IoBackend::kLibAio, IoBackend::kPsync}) {
    for (IoOp op : {IoOp::kWrite, IoOp::kRead}) {
      const std::string name = std::string("BM_Engine/") + std::string(to_string(b)) +
                               (op == IoOp::kWrite ? "/write" : "/read");
      benchmark::RegisterBenchmark(name.c_str(), BM_Engine, b, op)
          ->Args({1 << 20, 32})
          ->Args({128 << 10, 8})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::RegisterBenchmark("BM_Store/write_read/crc_off", BM_Store, false)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("BM_Store/write_read/crc_on", BM_Store, true)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

// Registered before main runs, as BENCHMARK() would.
[[maybe_unused]] const bool kRegistered = (register_all(), true);

}  // namespace

BENCHMARK_MAIN();
