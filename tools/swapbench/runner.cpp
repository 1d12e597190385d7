#include "runner.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>

#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/swap_store.hpp"

namespace zinf::swapbench {
namespace {

using Clock = std::chrono::steady_clock;

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto secs = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return secs(u.ru_utime) + secs(u.ru_stime);
}

// The content of extent `e` in loop `loop`: cheap to generate, different per
// extent, so --verify catches misplaced as well as corrupted blocks.
void fill(std::byte* data, std::uint64_t n, std::uint64_t e, std::uint32_t loop) {
  std::uint64_t x = (e + 1) * 0x9E3779B97F4A7C15ull ^ loop;
  for (std::uint64_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(data + i, &x, std::min<std::uint64_t>(8, n - i));
  }
}

std::string key(std::uint64_t e) { return "swapbench/" + std::to_string(e); }

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  auto nth = v.begin() + static_cast<std::ptrdiff_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), nth, v.end());
  return *nth;
}

}  // namespace

std::string_view to_string(Op op) {
  switch (op) {
    case Op::kWrite:
      return "write";
    case Op::kRead:
      return "read";
    case Op::kMixed:
      return "mixed";
  }
  return "?";
}

Result<std::vector<RunResult>> run(const RunConfig& c) {
  swap::SwapStoreOptions so;
  so.paths = c.paths;
  so.backend = c.backend;
  so.aio.block_size = c.block_size;
  so.aio.queue_depth = c.queue_depth;
  so.aio.intra_op_parallelism = c.threads;
  so.checksum = c.checksum;
  // Nothing here reads the data on the CPU (--verify compares it once, and
  // reads it from memory then): keep the checksum pass out of the caches.
  so.evict_verified_reads = true;
  so.sqpoll = c.sqpoll;
  // Each path's share of the data, preallocated before the clock starts (fio
  // lays its file out first too); a write pass then fills it exactly.
  const std::uint64_t extents = c.size / c.block_size;
  so.initial_file_size = (extents + c.paths.size() - 1) / c.paths.size() * c.block_size;
  // A mixed pass rewrites half the extents, into fresh ones (the store keeps
  // the old value until the new one is on disk): room for those too.
  if (std::find(c.ops.begin(), c.ops.end(), Op::kMixed) != c.ops.end())
    so.initial_file_size += so.initial_file_size / 2 + c.block_size;
  ZINF_ASSIGN_OR_RETURN(auto store, swap::SwapStore::open(so));

  const std::uint64_t window =
      std::min<std::uint64_t>(extents, std::uint64_t{c.queue_depth} * c.threads);
  ZINF_ASSIGN_OR_RETURN(AlignedBuffer pool, AlignedBuffer::allocate(window * c.block_size));
  std::span<std::byte> regions[] = {pool.bytes()};
  if (Status s = store->register_buffers(regions); !s.is_ok())
    ZINF_LOG(kWarn) << "swapbench: " << s.message() << "; measuring with plain buffers";
  auto buffer = [&](std::uint64_t slot) { return pool.data() + slot * c.block_size; };
  if (!c.verify) fill(pool.data(), pool.size(), 0, 0);
  AlignedBuffer expected;
  if (c.verify) {
    ZINF_ASSIGN_OR_RETURN(expected, AlignedBuffer::allocate(c.block_size));
  }

  // One pass over every extent, keeping `window` requests in flight and
  // retiring whichever finishes first (as fio does, so a slow request does not
  // hold up the queue); latencies (submit to completion) go to `lat`.
  auto pass = [&](Op op, std::uint32_t loop, std::vector<double>& lat) -> Status {
    struct InFlight {
      std::uint64_t extent;
      std::uint64_t slot;  // of the buffer pool
      Clock::time_point start;
    };
    std::vector<InFlight> in_flight;
    std::vector<swap::SwapTicket> tickets;
    std::vector<std::uint64_t> free_slots;
    for (std::uint64_t s = window; s > 0; --s) free_slots.push_back(s - 1);
    auto retire = [&]() -> Status {
      ZINF_ASSIGN_OR_RETURN(swap::SwapDone done, store->wait_any(tickets));
      ZINF_RETURN_IF_ERROR(done.status);
      const InFlight f = in_flight[done.index];
      in_flight[done.index] = in_flight.back();
      in_flight.pop_back();
      tickets[done.index] = tickets.back();
      tickets.pop_back();
      free_slots.push_back(f.slot);
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - f.start).count());
      if (c.verify && op == Op::kRead) {
        fill(expected.data(), c.block_size, f.extent, loop);
        if (std::memcmp(expected.data(), buffer(f.slot), c.block_size) != 0) {
          return Status::data_loss("--verify: extent " + std::to_string(f.extent) +
                                   " read back differs");
        }
      }
      return Status::ok();
    };
    for (std::uint64_t e = 0; e < extents; ++e) {
      if (free_slots.empty()) ZINF_RETURN_IF_ERROR(retire());
      const std::uint64_t slot = free_slots.back();
      free_slots.pop_back();
      std::byte* b = buffer(slot);
      const bool write = op == Op::kWrite || (op == Op::kMixed && e % 2 == 1);
      if (c.verify && write) fill(b, c.block_size, e, loop);
      const auto start = Clock::now();
      auto t =
          write ? store->write(key(e), {b, c.block_size}) : store->read(key(e), {b, c.block_size});
      if (!t.is_ok()) return t.status();
      in_flight.push_back({e, slot, start});
      tickets.push_back(*t);
    }
    while (!in_flight.empty()) ZINF_RETURN_IF_ERROR(retire());
    return Status::ok();
  };

  // Reads need data: when no write is measured first, write it unmeasured.
  if (c.ops.front() != Op::kWrite) {
    std::vector<double> ignored;
    ZINF_RETURN_IF_ERROR(pass(Op::kWrite, 0, ignored));
  }
  std::vector<RunResult> results;
  for (Op op : c.ops) {
    RunResult r;
    r.op = op;
    r.backend = std::string(store->backend_name());
    r.block_size = c.block_size;
    r.queue_depth = c.queue_depth;
    r.threads = c.threads;
    r.checksum = c.checksum;
    r.sqpoll = c.sqpoll;
    std::vector<double> latencies;
    latencies.reserve(extents * c.loops);
    const double cpu0 = cpu_seconds();
    const auto t0 = Clock::now();
    for (std::uint32_t loop = 0; loop < c.loops; ++loop) {
      // With --verify, a read checks what the last write wrote.
      ZINF_RETURN_IF_ERROR(pass(op, op == Op::kRead ? c.loops - 1 : loop, latencies));
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.bytes = extents * c.block_size * c.loops;
    r.gbps = static_cast<double>(r.bytes) / r.seconds / 1e9;
    r.iops = static_cast<double>(extents * c.loops) / r.seconds;
    r.p50_us = percentile(latencies, 0.50);
    r.p99_us = percentile(latencies, 0.99);
    r.cpu_s_per_gb = (cpu_seconds() - cpu0) / (static_cast<double>(r.bytes) / 1e9);
    results.push_back(r);
  }
  return results;
}

}  // namespace zinf::swapbench
