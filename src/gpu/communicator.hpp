// Collectives between the ranks of a data-parallel job (private to zinf).
//
// A World is this process's place in the job: its rank and world size from
// the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT as torchrun and zinf-launch set them, or OMPI_COMM_WORLD_* under
// mpirun) and, with more than one rank, a c10d TCPStore on MASTER_ADDR:MASTER_PORT
// that every rank reaches (rank 0 serves it). A World of one needs neither.
//
// A Communicator is one ordered channel of collectives over the World, named
// so that several can run at once (the engine keeps one per thread that
// issues collectives: the order of collectives must be the same on every
// rank, and one thread per channel keeps it so). Backends:
//   gloo    c10d's ProcessGroupGloo (LibTorch); buffers in host memory.
//   nccl    NCCL; buffers in device memory, work on a stream of its own. The
//           unique id travels through the World's store.
//   single  a World of one: every collective is complete at once.
//
// Collectives work on flat buffers in place. A buffer of `count` elements
// splits into world_size() contiguous shards as shard() says (the first
// ones ceil(count / N) long, the last what is left, maybe nothing);
//   all_gather      each rank's own shard is valid on entry; every shard is on exit.
//   reduce_scatter  on exit this rank's shard holds the reduction over ranks
//                   (gloo reduces the whole buffer: the other shards hold it too).
//   all_reduce      the whole buffer holds the reduction.
//   broadcast       the whole buffer holds root's.
// They return at once with a Work to wait on; the buffer must stay valid,
// and untouched, until wait() returned. Errors (a rank gone, a timeout) are
// Status, naming the collective and the channel; after one the channel is
// unusable.
//
// Thread safety: one thread issues a Communicator's collectives; Work::wait
// may be called from any thread. A World is safe to share.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/common/status.hpp"

namespace zinf::gpu {

// The launcher's environment.
struct Launch {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;  // torchrun's default
  std::string source;       // which variables it came from, for messages
};
// Reads it: RANK/WORLD_SIZE/LOCAL_RANK (torchrun, zinf-launch), else
// OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK (mpirun); neither: a world of one.
// Inconsistent or malformed values are errors naming the variable.
Result<Launch> launch_from_env();

enum class CommDtype : std::uint8_t { kF32, kF16, kBF16, kU8, kF64 };
std::size_t element_size(CommDtype dtype);
enum class ReduceOp : std::uint8_t { kSum, kMax };
enum class Backend : std::uint8_t { kSingle, kGloo, kNccl };
std::string_view to_string(Backend backend);

struct ShardRange {
  std::uint64_t begin = 0;
  std::uint64_t count = 0;
};
// Shard `rank` of `count` elements split over `world` ranks.
inline ShardRange shard(std::uint64_t count, int world, int rank) {
  const auto n = static_cast<std::uint64_t>(world);
  const std::uint64_t per = (count + n - 1) / n;
  const std::uint64_t begin = std::min(count, per * static_cast<std::uint64_t>(rank));
  return {begin, std::min(count, begin + per) - begin};
}
// fn(rank, its shard) for every rank whose shard is not empty, in rank order.
template <typename Fn>
void for_each_shard(std::uint64_t count, int world, Fn&& fn) {
  for (int r = 0; r < world; ++r) {
    const ShardRange s = shard(count, world, r);
    if (s.count > 0) fn(r, s);
  }
}

class CommWork {
 public:
  virtual ~CommWork() = default;
  virtual Status wait() = 0;
};
using CommWorkPtr = std::unique_ptr<CommWork>;

// What a channel has moved: the bytes handed to its collectives, and when
// they ran (from issue to completion).
struct CommStats {
  std::uint64_t bytes = 0;
  std::uint64_t collectives = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual Backend backend() const = 0;
  const std::string& name() const { return name_; }

  virtual Result<CommWorkPtr> all_gather(void* data, std::uint64_t count, CommDtype dtype) = 0;
  virtual Result<CommWorkPtr> reduce_scatter(void* data, std::uint64_t count, CommDtype dtype,
                                             ReduceOp op) = 0;
  virtual Result<CommWorkPtr> all_reduce(void* data, std::uint64_t count, CommDtype dtype,
                                         ReduceOp op) = 0;
  virtual Result<CommWorkPtr> broadcast(void* data, std::uint64_t bytes, int root) = 0;
  virtual Status barrier() = 0;

  // Issue and wait, for the callers that have nothing to overlap.
  Status all_reduce_now(void* data, std::uint64_t count, CommDtype dtype, ReduceOp op);

  CommStats stats() const { return stats_; }
  // When collectives were in flight since the last call.
  std::vector<Interval> take_busy() { return busy_.take(); }
  // Each collective, from issue to completion, as a span named after the
  // collective (off until turned on; a trace turns it on).
  void record_spans(bool on) { spans_.set_on(on); }
  std::vector<Span> take_spans() { return spans_.take(); }

 protected:
  explicit Communicator(std::string name) : name_(std::move(name)) {}
  // Counts a collective `op` (a string literal) of `bytes`, and wraps its
  // work so that its time in flight is logged.
  CommWorkPtr track(CommWorkPtr work, std::uint64_t bytes, std::string_view op);

 private:
  std::string name_;
  CommStats stats_;
  BusyLog busy_;
  SpanLog spans_;
};

class World {
 public:
  // Joins the job `launch` describes: with more than one rank, reaches the
  // store (rank 0 starts it) within `timeout`, and checks that every rank
  // agrees on the world size and on `fingerprint` (a hash of the config):
  // a rank that disagrees, or does not come, is an error on every rank.
  static Result<std::shared_ptr<World>> join(const Launch& launch, std::chrono::seconds timeout,
                                             const std::string& fingerprint);
  virtual ~World() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;
  // A new channel `name`: every rank makes the same channels in the same
  // order (a name may repeat).
  // kSingle needs a world of one; kGloo a build with LibTorch; kNccl one with
  // NCCL and a GPU (`device` is the CUDA device index).
  virtual Result<std::unique_ptr<Communicator>> communicator(const std::string& name,
                                                             Backend backend, int device = 0) = 0;
};

}  // namespace zinf::gpu
