// The world of more than one rank: a c10d TCPStore for the rendezvous, and
// Gloo channels through c10d's ProcessGroupGloo (LibTorch's).
#define USE_C10D_GLOO 1
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "gpu/comm_backends.hpp"

namespace zinf::gpu {
namespace {

std::string what(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

#ifdef ZINF_HAVE_GLOO
torch::ScalarType scalar_type(CommDtype dtype) {
  switch (dtype) {
    case CommDtype::kF32:
      return torch::kFloat;
    case CommDtype::kF16:
      return torch::kHalf;
    case CommDtype::kBF16:
      return torch::kBFloat16;
    case CommDtype::kF64:
      return torch::kDouble;
    case CommDtype::kU8:
      break;
  }
  return torch::kByte;
}

c10d::ReduceOp reduce_op(ReduceOp op) {
  return op == ReduceOp::kMax ? c10d::ReduceOp(c10d::ReduceOp::MAX)
                              : c10d::ReduceOp(c10d::ReduceOp::SUM);
}

torch::Tensor wrap(void* data, std::uint64_t count, torch::ScalarType type) {
  return torch::from_blob(data, {static_cast<std::int64_t>(count)}, torch::dtype(type));
}

// c10d works, waited in order; the first error names the collective.
class GlooWork final : public CommWork {
 public:
  GlooWork(std::string what, std::vector<c10::intrusive_ptr<c10d::Work>> works)
      : what_(std::move(what)), works_(std::move(works)) {}
  Status wait() override {
    Status first;
    for (auto& w : works_) {
      try {
        w->wait();
      } catch (const std::exception& e) {
        if (first.is_ok()) first = Status::unavailable(what_ + " failed: " + gpu::what(e));
      }
    }
    works_.clear();
    return first;
  }

 private:
  std::string what_;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::string name, c10::intrusive_ptr<c10d::ProcessGroupGloo> pg)
      : Communicator(std::move(name)), pg_(std::move(pg)) {}
  int rank() const override { return pg_->getRank(); }
  int world_size() const override { return pg_->getSize(); }
  Backend backend() const override { return Backend::kGloo; }

  // One broadcast per shard, rooted at its owner: shards may differ in length.
  Result<CommWorkPtr> all_gather(void* data, std::uint64_t count, CommDtype dtype) override {
    const std::size_t elem = element_size(dtype);
    return run("all_gather", count * elem, [&] {
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      for_each_shard(count, world_size(), [&](int r, ShardRange s) {
        std::vector<torch::Tensor> t{
            wrap(static_cast<std::byte*>(data) + s.begin * elem, s.count * elem, torch::kByte)};
        works.push_back(pg_->broadcast(t, {r, 0}));
      });
      return works;
    });
  }
  // c10d's Gloo has no reduce-scatter: an all-reduce of the whole buffer.
  Result<CommWorkPtr> reduce_scatter(void* data, std::uint64_t count, CommDtype dtype,
                                     ReduceOp op) override {
    return reduce("reduce_scatter", data, count, dtype, op);
  }
  Result<CommWorkPtr> all_reduce(void* data, std::uint64_t count, CommDtype dtype,
                                 ReduceOp op) override {
    return reduce("all_reduce", data, count, dtype, op);
  }
  Result<CommWorkPtr> broadcast(void* data, std::uint64_t bytes, int root) override {
    return run("broadcast", bytes, [&] {
      std::vector<torch::Tensor> t{wrap(data, bytes, torch::kByte)};
      return std::vector<c10::intrusive_ptr<c10d::Work>>{pg_->broadcast(t, {root, 0})};
    });
  }
  Status barrier() override {
    auto work = run("barrier", 0,
                    [&] { return std::vector<c10::intrusive_ptr<c10d::Work>>{pg_->barrier()}; });
    return work.is_ok() ? (*work)->wait() : work.status();
  }

 private:
  Result<CommWorkPtr> reduce(const char* op_name, void* data, std::uint64_t count, CommDtype dtype,
                             ReduceOp op) {
    return run(op_name, count * element_size(dtype), [&] {
      std::vector<torch::Tensor> t{wrap(data, count, scalar_type(dtype))};
      c10d::AllreduceOptions o;
      o.reduceOp = reduce_op(op);
      return std::vector<c10::intrusive_ptr<c10d::Work>>{pg_->allreduce(t, o)};
    });
  }

  template <typename Issue>
  Result<CommWorkPtr> run(const char* op_name, std::uint64_t bytes, Issue issue) {
    const std::string label = "communicator '" + name() + "': " + op_name;
    try {
      return track(std::make_unique<GlooWork>(label, issue()), bytes, op_name);
    } catch (const std::exception& e) {
      return Status::unavailable(label + " failed: " + what(e));
    }
  }

  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

bool loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

#endif  // ZINF_HAVE_GLOO

class StoreWorld final : public World {
 public:
  StoreWorld(Launch launch, std::chrono::seconds timeout, c10::intrusive_ptr<c10d::Store> store)
      : launch_(std::move(launch)), timeout_(timeout), store_(std::move(store)) {}
  int rank() const override { return launch_.rank; }
  int world_size() const override { return launch_.world_size; }
  int local_rank() const override { return launch_.local_rank; }

  Result<std::unique_ptr<Communicator>> communicator(const std::string& name, Backend backend,
                                                     int device) override {
    // Each channel's keys apart, also for a name made twice.
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(
        "zinf/" + std::to_string(channels_++) + "/" + name, store_);
    if (backend == Backend::kNccl) {
      Exchange exchange = [this, prefixed](const std::string& key,
                                           const std::string& value) -> Result<std::string> {
        try {
          if (launch_.rank == 0)
            prefixed->set(key, std::vector<std::uint8_t>(value.begin(), value.end()));
          auto v = prefixed->get(key);
          return std::string(v.begin(), v.end());
        } catch (const std::exception& e) {
          return Status::unavailable("the store at " + where() + ": " + what(e));
        }
      };
      return make_nccl_communicator(name, exchange, launch_, device, timeout_);
    }
    if (backend != Backend::kGloo) {
      return Status::invalid_argument("communicator '" + name +
                                      "': \"single\" needs a world of one");
    }
#ifdef ZINF_HAVE_GLOO
    try {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout_);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (loopback(launch_.master_addr)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, launch_.rank,
                                                            launch_.world_size, options);
      return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(name, pg));
    } catch (const std::exception& e) {
      return Status::unavailable("communicator '" + name + "': gloo over the store at " + where() +
                                 ": " + what(e));
    }
#else
    return Status::unavailable("communicator '" + name +
                               "': this zinf was built without Gloo's headers (Debian's "
                               "libgloo-dev), so c10d's Gloo is not available");
#endif
  }

  std::string where() const {
    return launch_.master_addr + ":" + std::to_string(launch_.master_port);
  }

 private:
  Launch launch_;
  std::chrono::seconds timeout_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::atomic<int> channels_{0};
};

}  // namespace

Result<std::shared_ptr<World>> join_store_world(const Launch& launch, std::chrono::seconds timeout,
                                                const std::string& fingerprint) {
  const std::string where = launch.master_addr + ":" + std::to_string(launch.master_port);
  const std::string me = "rank " + std::to_string(launch.rank) + " of " +
                         std::to_string(launch.world_size) + " (" + launch.source + ")";
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(launch.master_port);
    o.isServer = launch.rank == 0;
    o.numWorkers = static_cast<std::size_t>(launch.world_size);
    o.waitWorkers = false;
    o.timeout = timeout;
    store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, o);
  } catch (const std::exception& e) {
    return Status::unavailable(me + ": cannot reach the rendezvous store at " + where +
                               " (MASTER_ADDR:MASTER_PORT) within " +
                               std::to_string(timeout.count()) + " s: " + what(e));
  }
  // Every rank publishes its world size and config fingerprint and checks
  // the others'; rank 0, whose process serves the store, waits until every
  // rank has read them, so that a rank that disagrees is told so on all.
  const std::string mine = std::to_string(launch.world_size) + "\n" + fingerprint;
  Status verdict;
  try {
    store->set("zinf/join/" + std::to_string(launch.rank),
               std::vector<std::uint8_t>(mine.begin(), mine.end()));
    for (int r = 0; r < launch.world_size && verdict.is_ok(); ++r) {
      auto v = store->get("zinf/join/" + std::to_string(r));
      const std::string theirs(v.begin(), v.end());
      if (theirs == mine) continue;
      const std::string their_world = theirs.substr(0, theirs.find('\n'));
      verdict = Status::invalid_argument(
          their_world != std::to_string(launch.world_size)
              ? me + ": rank " + std::to_string(r) + " says WORLD_SIZE=" + their_world +
                    ": every rank must be started with the same"
              : me + ": rank " + std::to_string(r) +
                    " runs a different configuration (its effective config differs from this "
                    "rank's): every rank must be given the same config");
    }
    store->set("zinf/joined/" + std::to_string(launch.rank), std::vector<std::uint8_t>{1});
    if (launch.rank == 0) {
      std::vector<std::string> joined;
      for (int r = 0; r < launch.world_size; ++r)
        joined.push_back("zinf/joined/" + std::to_string(r));
      store->wait(joined, timeout);
    }
  } catch (const std::exception& e) {
    return Status::unavailable(me + ": not every rank joined at " + where + " within " +
                               std::to_string(timeout.count()) + " s: " + what(e));
  }
  if (!verdict.is_ok()) return verdict;
  return std::shared_ptr<World>(std::make_shared<StoreWorld>(launch, timeout, store));
}

}  // namespace zinf::gpu
