// A checkpoint state file's I/O (private to zinf::offload: the engine's
// save and load, verification, zinf-ckpt).
//
// The file holds `num_states` regions, one per fp32 state array, each of
// `elements` floats. From format version 3 each region starts on a 4 KiB
// boundary (the regions are padded with zeros), so the file is read and
// written with O_DIRECT; version 2 regions follow one another unpadded and
// are read through the page cache.
//
// Each region is a stream: written by appending, read from its start, in
// chunks of kStateChunk bytes (or the array, if smaller), with up to kStateDepth chunks in flight
// over all regions, through the swap layer's IoQueue (its error policy, its engines, the fault
// injector). Reads and writes of the regions may interleave as a piece-by-piece walk of the
// optimizer state does (every region a little at a time, in order): each region has its own
// buffers, so no region waits on another's. Every region's CRC32C covers its data bytes, not the
// padding.
//
// Threads: one at a time. Errors name the file, the offset and the errno;
// after one, every call returns it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "zinf/common/config.hpp"
#include "zinf/common/status.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf::offload {

inline constexpr std::uint64_t kStateChunk = std::uint64_t{1} << 20;
inline constexpr int kStateDepth = 8;

struct StateLayout {
  std::uint64_t elements = 0;  // per region
  int num_states = 0;
  int version = 3;  // the checkpoint format's

  std::uint64_t data_bytes() const { return elements * sizeof(float); }  // per region
  std::uint64_t state_bytes() const {  // every region's, without padding
    return static_cast<std::uint64_t>(num_states) * data_bytes();
  }
  // Where region k+1 starts relative to region k.
  std::uint64_t region_stride() const;
  std::uint64_t file_bytes() const {
    return static_cast<std::uint64_t>(num_states) * region_stride();
  }
};

struct StateIo {
  IoBackend backend = IoBackend::kAuto;
  std::optional<swap::FaultSpec> fault;  // tests: through make_fault_injecting_engine
};

class StateFile {
 public:
  // A new file (O_EXCL, 0600, its full size allocated up front: a full disk
  // fails here, before anything is written), in `layout.version` 3.
  static Result<std::unique_ptr<StateFile>> create(const std::filesystem::path& path,
                                                   const StateLayout& layout, const StateIo& io);
  // An existing one, which must be exactly layout.file_bytes() long.
  static Result<std::unique_ptr<StateFile>> open(const std::filesystem::path& path,
                                                 const StateLayout& layout, const StateIo& io);
  ~StateFile();
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;

  // Appends `count` elements to region k (a file made by create()).
  Status write(int k, const float* data, std::uint64_t count);
  // Writes what is left of every region, waits for every write, fdatasync.
  // The file is complete only when this returns ok.
  Status finish();

  // The next `count` elements of region k (a file made by open()); with
  // `out` null they are only checksummed.
  Status read(int k, float* out, std::uint64_t count);

  // Of the data bytes written or read so far in region k.
  std::uint32_t crc32c(int k) const;
  bool direct() const;  // O_DIRECT in effect

  struct State;  // state_file.cpp's
  explicit StateFile(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> state_;
};

}  // namespace zinf::offload
