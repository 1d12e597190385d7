// NCCL channels: one ncclComm_t and one non-blocking stream each. Shards of
// any length: all_gather is a group of broadcasts rooted at each shard's
// owner, reduce_scatter a group of reduces, all in place (NCCL runs a group
// as one launch). A Work is an event recorded after the collective; waiting
// polls it, and a collective still running after the timeout aborts the
// communicator (ncclCommAbort) so that no rank hangs on a dead peer.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <thread>

#include "gpu/comm_backends.hpp"

namespace zinf::gpu {
namespace {

Status nccl_error(ncclResult_t r, const std::string& what) {
  return Status::unavailable(what + ": " + ncclGetErrorString(r));
}
Status cuda_error(cudaError_t e, const std::string& what) {
  return Status::internal(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

ncclDataType_t nccl_type(CommDtype dtype) {
  switch (dtype) {
    case CommDtype::kF32:
      return ncclFloat32;
    case CommDtype::kF16:
      return ncclFloat16;
    case CommDtype::kBF16:
      return ncclBfloat16;
    case CommDtype::kF64:
      return ncclFloat64;
    case CommDtype::kU8:
      break;
  }
  return ncclUint8;
}

class NcclCommunicator;

class NcclWork final : public CommWork {
 public:
  NcclWork(NcclCommunicator& comm, cudaEvent_t event) : comm_(comm), event_(event) {}
  ~NcclWork() override { cudaEventDestroy(event_); }
  Status wait() override;

 private:
  NcclCommunicator& comm_;
  cudaEvent_t event_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::string name, ncclComm_t comm, cudaStream_t stream, int rank, int world,
                   std::chrono::seconds timeout)
      : Communicator(std::move(name)),
        comm_(comm),
        stream_(stream),
        rank_(rank),
        world_(world),
        timeout_(timeout) {}
  ~NcclCommunicator() override {
    if (!aborted_) ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  Backend backend() const override { return Backend::kNccl; }

  Result<CommWorkPtr> all_gather(void* data, std::uint64_t count, CommDtype dtype) override {
    const std::size_t elem = element_size(dtype);
    return issue("all_gather", count * elem, [&]() -> ncclResult_t {
      ncclGroupStart();
      for_each_shard(count, world_, [&](int r, ShardRange s) {
        void* at = static_cast<std::byte*>(data) + s.begin * elem;
        ncclBroadcast(at, at, s.count * elem, ncclUint8, r, comm_, stream_);
      });
      return ncclGroupEnd();
    });
  }
  Result<CommWorkPtr> reduce_scatter(void* data, std::uint64_t count, CommDtype dtype,
                                     ReduceOp op) override {
    const std::size_t elem = element_size(dtype);
    return issue("reduce_scatter", count * elem, [&]() -> ncclResult_t {
      ncclGroupStart();
      for_each_shard(count, world_, [&](int r, ShardRange s) {
        void* at = static_cast<std::byte*>(data) + s.begin * elem;
        ncclReduce(at, at, s.count, nccl_type(dtype), nccl_op(op), r, comm_, stream_);
      });
      return ncclGroupEnd();
    });
  }
  Result<CommWorkPtr> all_reduce(void* data, std::uint64_t count, CommDtype dtype,
                                 ReduceOp op) override {
    return issue("all_reduce", count * element_size(dtype), [&] {
      return ncclAllReduce(data, data, count, nccl_type(dtype), nccl_op(op), comm_, stream_);
    });
  }
  Result<CommWorkPtr> broadcast(void* data, std::uint64_t bytes, int root) override {
    return issue("broadcast", bytes,
                 [&] { return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
  }
  Status barrier() override {
    if (scratch_ == nullptr) {
      if (cudaError_t e = cudaMalloc(&scratch_, sizeof(float)); e != cudaSuccess)
        return cuda_error(e, "communicator '" + name() + "': barrier scratch");
    }
    ZINF_ASSIGN_OR_RETURN(auto work, all_reduce(scratch_, 1, CommDtype::kF32, ReduceOp::kSum));
    return work->wait();
  }

  // Polls `event`; past the timeout the communicator is aborted.
  Status wait_event(cudaEvent_t event) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (;;) {
      const cudaError_t e = cudaEventQuery(event);
      if (e == cudaSuccess) return Status::ok();
      if (e != cudaErrorNotReady) return cuda_error(e, "communicator '" + name() + "'");
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        return nccl_error(async, "communicator '" + name() + "'");
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm_);
        aborted_ = true;
        return Status::unavailable("communicator '" + name() +
                                   "': a collective did not finish within " +
                                   std::to_string(timeout_.count()) +
                                   " s (zinf.comm_timeout): a rank is gone or stuck; aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kMax ? ncclMax : ncclSum; }

  template <typename Call>
  Result<CommWorkPtr> issue(const char* op_name, std::uint64_t bytes, Call call) {
    const std::string label = "communicator '" + name() + "': " + op_name;
    if (aborted_) return Status::failed_precondition(label + ": the communicator was aborted");
    if (ncclResult_t r = call(); r != ncclSuccess) return nccl_error(r, label);
    cudaEvent_t event = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); e != cudaSuccess)
      return cuda_error(e, label);
    if (cudaError_t e = cudaEventRecord(event, stream_); e != cudaSuccess) {
      cudaEventDestroy(event);
      return cuda_error(e, label);
    }
    return track(std::make_unique<NcclWork>(*this, event), bytes, op_name);
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_;
  int world_;
  std::chrono::seconds timeout_;
  bool aborted_ = false;
  void* scratch_ = nullptr;
};

Status NcclWork::wait() { return comm_.wait_event(event_); }

}  // namespace

Result<std::unique_ptr<Communicator>> make_nccl_communicator(const std::string& name,
                                                             const Exchange& exchange,
                                                             const Launch& launch, int device,
                                                             std::chrono::seconds timeout) {
  const std::string label = "communicator '" + name + "' (nccl)";
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    return Status::unavailable(label + ": no CUDA GPU is visible");
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_error(e, label);
  ncclUniqueId id{};
  if (launch.rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) return nccl_error(r, label);
  }
  if (exchange) {
    ZINF_ASSIGN_OR_RETURN(std::string shared,
                          exchange("nccl_id", std::string(id.internal, sizeof(id.internal))));
    if (shared.size() != sizeof(id.internal))
      return Status::internal(label + ": the NCCL id from the store has the wrong size");
    std::copy(shared.begin(), shared.end(), id.internal);
  }
  ncclComm_t comm = nullptr;
  if (ncclResult_t r = ncclCommInitRank(&comm, launch.world_size, id, launch.rank);
      r != ncclSuccess) {
    return nccl_error(r, label + ": ncclCommInitRank");
  }
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    ncclCommDestroy(comm);
    return cuda_error(e, label);
  }
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(
      name, comm, stream, launch.rank, launch.world_size, timeout));
}

}  // namespace zinf::gpu
