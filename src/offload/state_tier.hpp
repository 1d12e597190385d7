// Where the optimizer's fp32 state lives: host memory or NVMe. Both the
// drop-in optimizers and the engine see the flattened state as a sequence of
// pieces, in order: each piece is `count` consecutive elements of one group
// (a sub-group), with `num_states` fp32 arrays (master weights first, then
// the algorithm's moments). On NVMe a piece is what fits the pinned pool's
// buffers, so host memory is the pool's size whatever the sub-group size.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "zinf/common/busy_time.hpp"
#include "zinf/offload/offload_optimizer.hpp"
#include "zinf/swap/swap_store.hpp"

namespace zinf::offload {

struct Piece {
  std::size_t index = 0;  // in visit order
  std::size_t group = 0;
  std::uint64_t begin = 0;  // first element, in the flattened state
  std::uint64_t count = 0;
  bool ends_group = false;  // the last piece of its group
  std::array<float*, 3> state{};
};

using PieceFn = std::function<Status(Piece&)>;

// fn(piece), with an exception (a c10::Error from a device copy, a
// std::bad_alloc) turned into the error it reports, so that a tier can drain
// its I/O and keep its guarantees instead of unwinding past them.
Status call_piece_fn(const PieceFn& fn, Piece& piece) noexcept;

// The part of an item (a parameter) inside a piece.
struct Segment {
  std::size_t item;
  std::uint64_t item_offset;   // elements into the item
  std::uint64_t piece_offset;  // elements into the piece
  std::uint64_t length;
};

// The items' parts inside `piece`, in order. Items are consecutive ranges
// of the flattened state: item i starts at begin(i) and holds size(i)
// elements, sorted by begin.
template <typename Begin, typename Size>
std::vector<Segment> segments(std::size_t items, const Piece& piece, Begin&& begin, Size&& size) {
  std::vector<Segment> out;
  std::size_t lo = 0, hi = items;  // the last item beginning at or before the piece
  while (hi - lo > 1) {
    const std::size_t mid = (lo + hi) / 2;
    (begin(mid) <= piece.begin ? lo : hi) = mid;
  }
  const std::uint64_t end = piece.begin + piece.count;
  for (std::size_t i = lo; i < items && begin(i) < end; ++i) {
    const std::uint64_t from = std::max(piece.begin, begin(i));
    const std::uint64_t to = std::min(end, begin(i) + size(i));
    if (from < to) out.push_back({i, from - begin(i), from - piece.begin, to - from});
  }
  return out;
}

struct TierShape {
  std::vector<std::uint64_t> groups;  // sizes of consecutive groups, in elements
  std::uint64_t chunk = 0;            // most elements per piece (0: whole groups)
  int num_states = 0;

  // Groups of `group_size` over `elements` (the drop-in's sub-groups).
  static std::vector<std::uint64_t> even_groups(std::uint64_t elements, std::uint64_t group_size);
  std::uint64_t elements() const;
  // Every piece's group, begin and count (state pointers unset).
  std::vector<Piece> pieces() const;
};

// One NVMe read or write of a piece's state array.
struct TierTransfer {
  bool read = true;
  std::size_t piece = 0;
  std::size_t group = 0;   // the piece's sub-group
  const char* state = "";  // "master", "state1", "state2"
  std::uint64_t bytes = 0;
  Interval when;
};

// The tier's storage traffic since the last take_io().
struct TierIo {
  std::vector<Interval> busy;           // when its NVMe reads or writes ran
  std::vector<TierTransfer> transfers;  // each one, while record_transfers() is on
  std::vector<swap::LaneBusy> lanes;    // its store's lanes, while record_transfers() is on
};

class StateTier {
 public:
  virtual ~StateTier() = default;
  // Visits every piece in order with its state loaded; what `fn` changes is
  // kept. If `fn` (or a throw from it) or any I/O fails, the first error is
  // returned, and on an atomic() tier the stored state stays exactly as
  // before; a tier that is not atomic (host memory, updated in place) keeps
  // what `fn` changed in the pieces before the failure.
  virtual Status update(const PieceFn& fn, StepStats& stats) = 0;
  // update() for an `fn` that sets every element of every piece (a load):
  // the stored state is not read first, so a piece's state is undefined
  // when `fn` gets it. The same guarantees on failure.
  virtual Status overwrite(const PieceFn& fn, StepStats& stats) = 0;
  // overwrite(), all or nothing on every tier: if `fn` or any I/O fails,
  // the stored state stays exactly as before. An atomic() tier's overwrite()
  // is that already; the host tier fills a second copy and swaps it in, and
  // refuses (kResourceExhausted, before calling `fn`, nothing changed) when
  // the host cannot hold a second copy (MemAvailable); the copy is pinned, if
  // the tier is, once filled.
  virtual Status replace(const PieceFn& fn, StepStats& stats) = 0;
  virtual bool atomic() const = 0;
  // Visits every piece in order, read only.
  virtual Status read(const PieceFn& fn) = 0;
  virtual TierBytes bytes() const = 0;
  virtual std::size_t pieces() const = 0;
  virtual TierIo take_io() = 0;
  virtual void record_transfers(bool on) = 0;
};

// `init` fills each piece's initial state (called once per piece, in order).
Result<std::unique_ptr<StateTier>> make_host_tier(const TierShape& shape, bool pin,
                                                  const PieceFn& init);
// The pool holds 3 sets of one piece's state arrays, so reads, compute and
// writes all overlap. options.buffer_count is DeepSpeed's (buffers of the
// largest sub-group, one per state and one for the gradient): fewer than
// that is an error naming the key, and the pool stays within what it would
// take. The piece size (TierShape::chunk, which must be 0 on entry) is
// derived: large enough to keep every lane's queue full, at most a
// sub-group, and never so large that the pool holds more than half of the
// state.
Result<std::unique_ptr<StateTier>> make_nvme_tier(TierShape shape, const OffloadOptions& options,
                                                  const char* algorithm, const PieceFn& init);

// What a tier of `shape` made with `options` (offload_optimizer's device
// "cpu" or "nvme") holds once it has stepped, as its bytes() reports it: an
// NVMe tier then has both slots of every piece stored.
struct TierFootprint {
  std::uint64_t host = 0;
  std::uint64_t nvme = 0;
};
TierFootprint tier_footprint(TierShape shape, const OffloadOptions& options);

}  // namespace zinf::offload
