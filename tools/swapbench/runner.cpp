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
    case Op::kCopy:
      return "copy";
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
  const bool copy = c.ops.front() == Op::kCopy;
  if (c.ops.front() == Op::kMixed) so.initial_file_size += so.initial_file_size / 2 + c.block_size;
  ZINF_ASSIGN_OR_RETURN(auto store, swap::SwapStore::open(so));
  // A copy writes half the extents into a store of its own (its own files
  // and queue).
  std::unique_ptr<swap::SwapStore> target;
  if (copy) {
    so.initial_file_size = so.initial_file_size / 2 + c.block_size;
    ZINF_ASSIGN_OR_RETURN(target, swap::SwapStore::open(so));
  }

  const std::uint64_t window =
      std::min<std::uint64_t>(extents, std::uint64_t{c.queue_depth} * c.threads);
  ZINF_ASSIGN_OR_RETURN(AlignedBuffer pool, AlignedBuffer::allocate(window * c.block_size));
  std::span<std::byte> regions[] = {pool.bytes()};
  for (swap::SwapStore* st : {store.get(), target.get()}) {
    if (!st) continue;
    if (Status s = st->register_buffers(regions); !s.is_ok())
      ZINF_LOG(kWarn) << "swapbench: " << s.message() << "; measuring with plain buffers";
  }
  auto buffer = [&](std::uint64_t slot) { return pool.data() + slot * c.block_size; };
  if (!c.verify) fill(pool.data(), pool.size(), 0, 0);
  AlignedBuffer expected;
  if (c.verify) {
    ZINF_ASSIGN_OR_RETURN(expected, AlignedBuffer::allocate(c.block_size));
  }

  // One pass over every extent, keeping `window` requests in flight and
  // retiring whichever finishes first (as fio does, so a slow request does not
  // hold up the queue); latencies (submit to completion) go to `lat`. A copy
  // keeps half the window on each store: reads on `store`, writes on
  // `target`.
  auto pass = [&](Op op, std::uint32_t loop, std::vector<double>& lat) -> Status {
    struct InFlight {
      std::uint64_t extent;
      std::uint64_t slot;  // of the buffer pool
      Clock::time_point start;
    };
    struct Queue {
      swap::SwapStore* store;
      std::vector<InFlight> in_flight;
      std::vector<swap::SwapTicket> tickets;
      std::vector<std::uint64_t> free_slots;
    };
    std::vector<Queue> queues(op == Op::kCopy ? 2 : 1);
    queues[0].store = store.get();
    if (op == Op::kCopy) queues[1].store = target.get();
    for (std::uint64_t s = window; s > 0; --s)
      queues[(s - 1) % queues.size()].free_slots.push_back(s - 1);
    auto retire = [&](Queue& q) -> Status {
      ZINF_ASSIGN_OR_RETURN(swap::SwapDone done, q.store->wait_any(q.tickets));
      ZINF_RETURN_IF_ERROR(done.status);
      const InFlight f = q.in_flight[done.index];
      q.in_flight[done.index] = q.in_flight.back();
      q.in_flight.pop_back();
      q.tickets[done.index] = q.tickets.back();
      q.tickets.pop_back();
      q.free_slots.push_back(f.slot);
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
      const bool write = op == Op::kWrite || ((op == Op::kMixed || op == Op::kCopy) && e % 2 == 1);
      Queue& q = queues[op == Op::kCopy && write ? 1 : 0];
      if (q.free_slots.empty()) ZINF_RETURN_IF_ERROR(retire(q));
      const std::uint64_t slot = q.free_slots.back();
      q.free_slots.pop_back();
      std::byte* b = buffer(slot);
      if (c.verify && write) fill(b, c.block_size, e, loop);
      // A copy reads the first half of the extents in order while it
      // writes as many, in order, into the target.
      const std::uint64_t k = op == Op::kCopy ? e / 2 : e;
      const auto start = Clock::now();
      auto t = write ? q.store->write(key(k), {b, c.block_size})
                     : q.store->read(key(k), {b, c.block_size});
      if (!t.is_ok()) return t.status();
      q.in_flight.push_back({e, slot, start});
      q.tickets.push_back(*t);
    }
    for (Queue& q : queues) {
      while (!q.in_flight.empty()) ZINF_RETURN_IF_ERROR(retire(q));
    }
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
