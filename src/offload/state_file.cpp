#include "offload/state_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <vector>

#include "swap/crc32c.hpp"
#include "zinf/common/aligned.hpp"
#include "zinf/common/logging.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::offload {

namespace fs = std::filesystem;

std::uint64_t StateLayout::region_stride() const {
  return version >= 3 ? align_up(data_bytes(), kIoAlignment) : data_bytes();
}

namespace {

struct Chunk {
  std::byte* data = nullptr;
  int region = 0;
  std::uint64_t bytes = 0;   // data bytes it holds (reads: will hold)
  std::uint64_t offset = 0;  // reader: where its read is from
  bool in_flight = false;
  bool due = false;  // reader: its read waits for one of the file's kStateDepth places
};

// Region k's stream. A writer fills one chunk at a time and submits it when
// full; a reader keeps all of the region's chunks reading ahead, in file
// order (at most kStateDepth reads over the file in flight, the rest due),
// and consumes the oldest.
struct Region {
  std::uint64_t base = 0;    // file offset
  std::uint64_t queued = 0;  // data bytes submitted so far
  std::deque<int> chunks;    // writer: the free ones; reader: those reading or read, in order
  int fill = -1;             // writer: the chunk being filled
  std::uint64_t used = 0;    // bytes of the fill chunk filled, or of the oldest chunk consumed
  std::uint32_t crc = 0;
};

}  // namespace

struct StateFile::State {
  fs::path path;
  StateLayout layout;
  bool writing = false;
  std::uint64_t chunk_bytes = kStateChunk;  // less for a file smaller than a chunk
  swap::FileDescriptor fd;
  bool direct = false;
  // Declared before the queue, whose destructor waits for the I/O into them
  // (and keeps what a lost request may still use from being released).
  AlignedBuffer arena;
  std::unique_ptr<swap::IoQueue> queue;
  std::vector<Chunk> chunks;
  std::vector<Region> regions;
  std::vector<swap::IoResult> results;
  int in_flight = 0;    // requests, at most kStateDepth
  std::deque<int> due;  // reader: chunks waiting for a place, in the order they came free
  Status error;

  Status fail(Status s) {
    if (error.is_ok()) error = std::move(s);
    return error;
  }

  Status submit(int c, std::uint64_t offset) {
    Chunk& chunk = chunks[static_cast<std::size_t>(c)];
    // O_DIRECT transfers whole blocks: a region's last chunk reads or
    // writes its padding too (a version 3 file always has it; a version 2
    // file, read through the page cache, has none).
    const std::uint64_t length =
        writing || direct ? align_up(chunk.bytes, kIoAlignment) : chunk.bytes;
    const swap::IoRequest r{writing ? swap::IoOp::kWrite : swap::IoOp::kRead,
                            0,
                            offset,
                            chunk.data,
                            static_cast<std::uint32_t>(length),
                            static_cast<std::uint64_t>(c)};
    auto accepted = queue->submit({&r, 1});
    if (!accepted.is_ok()) return fail(accepted.status());
    if (*accepted != 1) return fail(Status::internal(path.string() + ": the I/O queue is full"));
    chunk.in_flight = true;
    ++in_flight;
    return Status::ok();
  }

  // Waits for at least one chunk's I/O to end.
  Status reap() {
    auto n = queue->wait(results, 1);
    if (!n.is_ok()) return fail(n.status());
    Status first;
    for (std::size_t i = 0; i < *n; ++i) {
      const swap::IoResult& r = results[i];
      Chunk& chunk = chunks[r.user_data];
      if (!r.lost) {
        chunk.in_flight = false;
        --in_flight;
        if (writing)
          regions[static_cast<std::size_t>(chunk.region)].chunks.push_back(
              static_cast<int>(r.user_data));
      }
      if (!r.status.is_ok() && first.is_ok()) first = r.status;
    }
    if (!first.is_ok()) return fail(first);
    // Reads wait to be due only while every place is taken, so each place a
    // completion frees goes to the oldest of them.
    while (!due.empty() && in_flight < kStateDepth) {
      Chunk& next = chunks[static_cast<std::size_t>(due.front())];
      next.due = false;
      ZINF_RETURN_IF_ERROR(submit(due.front(), next.offset));
      due.pop_front();
    }
    return Status::ok();
  }

  // Reader: region k's next chunk from where it has got to, if any is left.
  Status read_ahead(Region& region, int c) {
    const std::uint64_t left = layout.data_bytes() - region.queued;
    if (left == 0) return Status::ok();
    Chunk& chunk = chunks[static_cast<std::size_t>(c)];
    chunk.bytes = std::min(chunk_bytes, left);
    chunk.offset = region.base + region.queued;
    region.queued += chunk.bytes;
    region.chunks.push_back(c);
    if (due.empty() && in_flight < kStateDepth) return submit(c, chunk.offset);
    chunk.due = true;
    due.push_back(c);
    return Status::ok();
  }

  // Writer: region k's fill chunk, as it is.
  Status flush(Region& region) {
    Chunk& chunk = chunks[static_cast<std::size_t>(region.fill)];
    chunk.bytes = region.used;
    std::memset(chunk.data + chunk.bytes, 0, align_up(chunk.bytes, kIoAlignment) - chunk.bytes);
    while (in_flight >= kStateDepth) ZINF_RETURN_IF_ERROR(reap());
    ZINF_RETURN_IF_ERROR(submit(region.fill, region.base + region.queued));
    region.queued += chunk.bytes;
    region.fill = -1;
    region.used = 0;
    return Status::ok();
  }
};

namespace {

Result<std::unique_ptr<StateFile::State>> make_state(const fs::path& path,
                                                     const StateLayout& layout, bool writing,
                                                     swap::OpenedFile file, const StateIo& io) {
  auto s = std::make_unique<StateFile::State>();
  s->path = path;
  s->layout = layout;
  s->writing = writing;
  s->fd = std::move(file.fd);
  s->direct = file.direct;
  // Each region has its own chunks, as many as the file has places in
  // flight (kStateDepth) plus the one being filled or consumed: a walk that
  // takes a whole sub-group of one region at a time (the host tier's
  // pieces) keeps them all on that region while the others' chunks sit
  // full. With a third of the chunks each, it read at a third of the depth.
  const int per_region = kStateDepth + 1;
  const int count = per_region * layout.num_states;
  // A small file takes small chunks.
  s->chunk_bytes =
      std::min(kStateChunk,
               std::max<std::uint64_t>(kIoAlignment, align_up(layout.data_bytes(), kIoAlignment)));
  ZINF_ASSIGN_OR_RETURN(s->arena, AlignedBuffer::allocate(count * s->chunk_bytes));
  swap::IoEngineOptions options;
  options.queue_depth = static_cast<std::uint32_t>(count);
  ZINF_ASSIGN_OR_RETURN(std::unique_ptr<swap::IoEngine> engine,
                        swap::make_io_engine(io.backend, options));
  if (io.fault) engine = swap::make_fault_injecting_engine(std::move(engine), *io.fault);
  ZINF_RETURN_IF_ERROR(engine->add_file(s->fd.get(), path.string()).status());
  // Fixed buffers only save the kernel a page walk per request: where the
  // memlock limit refuses them, plain buffers do the same work.
  const std::span<std::byte> arena = s->arena.bytes();
  (void)engine->register_buffers({&arena, 1});
  s->queue = std::make_unique<swap::IoQueue>(std::move(engine));
  s->results.resize(static_cast<std::size_t>(count));
  s->regions.resize(static_cast<std::size_t>(layout.num_states));
  for (int c = 0; c < count; ++c)
    s->chunks.push_back({s->arena.data() + c * s->chunk_bytes, c / per_region, 0, false});
  for (int k = 0; k < layout.num_states; ++k) {
    Region& region = s->regions[static_cast<std::size_t>(k)];
    region.base = k * layout.region_stride();
    for (int c = k * per_region; c < (k + 1) * per_region; ++c) {
      if (writing)
        region.chunks.push_back(c);
      else
        ZINF_RETURN_IF_ERROR(s->read_ahead(region, c));
    }
  }
  return s;
}

}  // namespace

StateFile::StateFile(std::unique_ptr<State> state) : state_(std::move(state)) {}
StateFile::~StateFile() = default;

Result<std::unique_ptr<StateFile>> StateFile::create(const fs::path& path,
                                                     const StateLayout& layout, const StateIo& io) {
  if (layout.version < 3)
    return Status::internal("StateFile::create writes format version 3 or later");
  ZINF_ASSIGN_OR_RETURN(
      swap::OpenedFile file,
      swap::open_direct(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600, true));
  const auto bytes = static_cast<off_t>(layout.file_bytes());
  if (bytes > 0 && ::fallocate(file.fd.get(), 0, 0, bytes) != 0 &&
      (errno != EOPNOTSUPP || ::ftruncate(file.fd.get(), bytes) != 0))
    return Status::from_errno(
        errno, "cannot allocate " + std::to_string(bytes) + " bytes for " + path.string());
  ZINF_ASSIGN_OR_RETURN(auto state, make_state(path, layout, true, std::move(file), io));
  return std::unique_ptr<StateFile>(new StateFile(std::move(state)));
}

Result<std::unique_ptr<StateFile>> StateFile::open(const fs::path& path, const StateLayout& layout,
                                                   const StateIo& io) {
  swap::OpenedFile file;
  if (layout.version >= 3) {
    ZINF_ASSIGN_OR_RETURN(file, swap::open_direct(path, O_RDONLY | O_NOFOLLOW, 0, true));
  } else {
    file.fd = swap::FileDescriptor(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!file.fd.valid()) return Status::from_errno(errno, "cannot open " + path.string());
  }
  struct stat st {};
  if (::fstat(file.fd.get(), &st) != 0)
    return Status::from_errno(errno, "cannot stat " + path.string());
  if (static_cast<std::uint64_t>(st.st_size) != layout.file_bytes()) {
    return Status::data_loss(path.string() + " is " + std::to_string(st.st_size) + " bytes, not " +
                             std::to_string(layout.file_bytes()));
  }
  ZINF_ASSIGN_OR_RETURN(auto state, make_state(path, layout, false, std::move(file), io));
  return std::unique_ptr<StateFile>(new StateFile(std::move(state)));
}

Status StateFile::write(int k, const float* data, std::uint64_t count) {
  State& s = *state_;
  ZINF_RETURN_IF_ERROR(s.error);
  Region& region = s.regions[static_cast<std::size_t>(k)];
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  std::uint64_t left = count * sizeof(float);
  if (region.queued + region.used + left > s.layout.data_bytes())
    return s.fail(Status::internal(s.path.string() + ": state " + std::to_string(k) +
                                   " written past its end"));
  region.crc = swap::crc32c({bytes, left}, region.crc);
  while (left > 0) {
    if (region.fill < 0) {
      while (region.chunks.empty()) ZINF_RETURN_IF_ERROR(s.reap());
      region.fill = region.chunks.front();
      region.chunks.pop_front();
    }
    const std::uint64_t n = std::min(left, s.chunk_bytes - region.used);
    std::memcpy(s.chunks[static_cast<std::size_t>(region.fill)].data + region.used, bytes, n);
    region.used += n;
    bytes += n;
    left -= n;
    if (region.used == s.chunk_bytes) ZINF_RETURN_IF_ERROR(s.flush(region));
  }
  return Status::ok();
}

Status StateFile::finish() {
  State& s = *state_;
  ZINF_RETURN_IF_ERROR(s.error);
  for (Region& region : s.regions) {
    if (region.queued + region.used != s.layout.data_bytes())
      return s.fail(Status::internal(s.path.string() + ": a state was not written in full"));
    if (region.fill >= 0) ZINF_RETURN_IF_ERROR(s.flush(region));
  }
  while (s.queue->pending() > 0) ZINF_RETURN_IF_ERROR(s.reap());
  if (::fdatasync(s.fd.get()) != 0)
    return s.fail(Status::from_errno(errno, "cannot fdatasync " + s.path.string()));
  return Status::ok();
}

Status StateFile::read(int k, float* out, std::uint64_t count) {
  State& s = *state_;
  ZINF_RETURN_IF_ERROR(s.error);
  Region& region = s.regions[static_cast<std::size_t>(k)];
  auto* bytes = reinterpret_cast<std::byte*>(out);
  for (std::uint64_t left = count * sizeof(float); left > 0;) {
    if (region.chunks.empty())
      return s.fail(Status::internal(s.path.string() + ": state " + std::to_string(k) +
                                     " read past its end"));
    const int c = region.chunks.front();
    Chunk& chunk = s.chunks[static_cast<std::size_t>(c)];
    while (chunk.due || chunk.in_flight) ZINF_RETURN_IF_ERROR(s.reap());
    const std::uint64_t n = std::min(left, chunk.bytes - region.used);
    const std::span<const std::byte> data{chunk.data + region.used, n};
    region.crc = swap::crc32c(data, region.crc);
    if (bytes != nullptr) {
      std::memcpy(bytes, data.data(), n);
      bytes += n;
    }
    region.used += n;
    left -= n;
    if (region.used == chunk.bytes) {
      region.chunks.pop_front();
      region.used = 0;
      ZINF_RETURN_IF_ERROR(s.read_ahead(region, c));
    }
  }
  return Status::ok();
}

std::uint32_t StateFile::crc32c(int k) const {
  return state_->regions[static_cast<std::size_t>(k)].crc;
}

bool StateFile::direct() const { return state_->direct; }

}  // namespace zinf::offload
