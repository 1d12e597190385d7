// The launcher's environment, shards, the work tracking every backend
// shares, and the world of one.
#include "gpu/communicator.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>

#include "gpu/comm_backends.hpp"

namespace zinf::gpu {
namespace {

// An integer environment variable; absent: nullopt.
Result<std::optional<long>> env_int(const char* name, long min, long max) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::optional<long>();
  errno = 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || n < min || n > max) {
    return Status::invalid_argument(std::string("environment variable ") + name + "=\"" + v +
                                    "\": expected an integer in [" + std::to_string(min) + ", " +
                                    std::to_string(max) + "]");
  }
  return std::optional<long>(n);
}

// One launcher's variables: rank, size and local rank under their names.
Result<std::optional<Launch>> read_launch(const char* rank, const char* size, const char* local) {
  constexpr long kMaxRanks = 1 << 20;
  ZINF_ASSIGN_OR_RETURN(auto r, env_int(rank, 0, kMaxRanks));
  ZINF_ASSIGN_OR_RETURN(auto n, env_int(size, 1, kMaxRanks));
  ZINF_ASSIGN_OR_RETURN(auto l, env_int(local, 0, kMaxRanks));
  if (!r && !n) return std::optional<Launch>();
  if (!r || !n) {
    return Status::invalid_argument(std::string("the environment sets ") + (r ? rank : size) +
                                    " but not " + (r ? size : rank) + ": a launcher sets both");
  }
  if (*r >= *n) {
    return Status::invalid_argument(std::string(rank) + "=" + std::to_string(*r) +
                                    " is not below " + size + "=" + std::to_string(*n));
  }
  Launch launch;
  launch.rank = static_cast<int>(*r);
  launch.world_size = static_cast<int>(*n);
  launch.local_rank = static_cast<int>(l.value_or(*r));
  launch.source = std::string(rank) + "/" + size;
  return std::optional<Launch>(launch);
}

class SingleWork final : public CommWork {
 public:
  Status wait() override { return Status::ok(); }
};

class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(std::string name) : Communicator(std::move(name)) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  Backend backend() const override { return Backend::kSingle; }
  Result<CommWorkPtr> all_gather(void*, std::uint64_t, CommDtype) override { return done(); }
  Result<CommWorkPtr> reduce_scatter(void*, std::uint64_t, CommDtype, ReduceOp) override {
    return done();
  }
  Result<CommWorkPtr> all_reduce(void*, std::uint64_t, CommDtype, ReduceOp) override {
    return done();
  }
  Result<CommWorkPtr> broadcast(void*, std::uint64_t, int) override { return done(); }
  Status barrier() override { return Status::ok(); }

 private:
  static Result<CommWorkPtr> done() { return CommWorkPtr(std::make_unique<SingleWork>()); }
};

class SingleWorld final : public World {
 public:
  explicit SingleWorld(Launch launch) : launch_(std::move(launch)) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return launch_.local_rank; }
  Result<std::unique_ptr<Communicator>> communicator(const std::string& name, Backend backend,
                                                     int device) override {
    switch (backend) {
      case Backend::kSingle:
        return std::unique_ptr<Communicator>(std::make_unique<SingleCommunicator>(name));
      case Backend::kNccl:
        return make_nccl_communicator(name, nullptr, launch_, device);
      case Backend::kGloo:
        break;
    }
    return Status::invalid_argument("communicator '" + name +
                                    "': gloo needs a job of more than one rank (a world of one "
                                    "uses \"single\")");
  }

 private:
  Launch launch_;
};

// Logs the time from issue to the first wait() that saw it complete.
class TrackedWork final : public CommWork {
 public:
  TrackedWork(CommWorkPtr inner, BusyLog& log, SpanLog& spans, std::uint64_t bytes,
              std::string_view op)
      : inner_(std::move(inner)), log_(log), spans_(spans), bytes_(bytes), op_(op) {
    log_.begin();
  }
  ~TrackedWork() override { finish(); }
  Status wait() override {
    Status s = inner_->wait();
    finish();
    return s;
  }

 private:
  void finish() {
    if (!open_) return;
    open_ = false;
    log_.end();
    if (spans_.on()) spans_.add({{issued_, SteadyClock::now()}, bytes_, std::string(op_)});
  }

  CommWorkPtr inner_;
  BusyLog& log_;
  SpanLog& spans_;
  const std::uint64_t bytes_;
  const std::string_view op_;  // a literal
  const SteadyClock::time_point issued_ = SteadyClock::now();
  bool open_ = true;
};

}  // namespace

Result<Launch> launch_from_env() {
  ZINF_ASSIGN_OR_RETURN(auto launch, read_launch("RANK", "WORLD_SIZE", "LOCAL_RANK"));
  if (!launch) {
    ZINF_ASSIGN_OR_RETURN(launch, read_launch("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                              "OMPI_COMM_WORLD_LOCAL_RANK"));
  }
  Launch out = launch.value_or(Launch{});
  if (!launch) out.source = "no launcher (a world of one)";
  if (const char* addr = std::getenv("MASTER_ADDR"); addr != nullptr && *addr != '\0')
    out.master_addr = addr;
  ZINF_ASSIGN_OR_RETURN(auto port, env_int("MASTER_PORT", 1, 65535));
  if (port) out.master_port = static_cast<int>(*port);
  return out;
}

std::size_t element_size(CommDtype dtype) {
  switch (dtype) {
    case CommDtype::kF32:
      return 4;
    case CommDtype::kF16:
    case CommDtype::kBF16:
      return 2;
    case CommDtype::kU8:
      return 1;
    case CommDtype::kF64:
      return 8;
  }
  return 1;
}

std::string_view to_string(Backend backend) {
  switch (backend) {
    case Backend::kSingle:
      return "single";
    case Backend::kGloo:
      return "gloo";
    case Backend::kNccl:
      return "nccl";
  }
  return "?";
}

Status Communicator::all_reduce_now(void* data, std::uint64_t count, CommDtype dtype, ReduceOp op) {
  ZINF_ASSIGN_OR_RETURN(auto work, all_reduce(data, count, dtype, op));
  return work->wait();
}

CommWorkPtr Communicator::track(CommWorkPtr work, std::uint64_t bytes, std::string_view op) {
  stats_.bytes += bytes;
  ++stats_.collectives;
  return std::make_unique<TrackedWork>(std::move(work), busy_, spans_, bytes, op);
}

Result<std::shared_ptr<World>> World::join(const Launch& launch, std::chrono::seconds timeout,
                                           const std::string& fingerprint) {
  if (launch.world_size == 1) return std::shared_ptr<World>(std::make_shared<SingleWorld>(launch));
  return join_store_world(launch, timeout, fingerprint);
}

}  // namespace zinf::gpu
