// The engine checkpoint's files (private to zinf: the engine and zinf-ckpt).
//
// DIR/TAG/manifest.json and one DIR/TAG/rank<R>.state per rank; see
// engine_checkpoint.cpp for what they hold and how they are written.
//
// Layout: the model's flattened state splits into partitions (the units'
// flat spaces, in order), and each partition over the ranks as gpu::shard
// says. Rank R's file holds, for each state array k in turn, R's shard of
// every partition in partition order (from version 3, each array padded to
// 4 KiB: state_file.hpp): the same space as R's optimizer tier, so a rank
// saves and loads its file with sequential I/O, and a world of one's file
// is the flattened state itself.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "offload/state_file.hpp"
#include "zinf/common/status.hpp"

namespace zinf::offload {

inline constexpr const char* kCheckpointFormat = "zinf-checkpoint";
// Version 3 pads each state array of a state file to 4 KiB (O_DIRECT);
// version 2 files, unpadded, are still read.
inline constexpr int kCheckpointVersion = 3;
inline constexpr int kOldestCheckpointVersion = 2;

// "rank<R>.state"
std::string checkpoint_state_file(int rank);

struct CheckpointParam {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;   // as c10::toString names it: "Float", "BFloat16", "Half"
  std::uint64_t flat;  // its first element in the flattened state
  std::int64_t step;   // updates applied (bias correction)
  std::uint64_t numel() const;
};

// A partition of the flattened state: elements [flat, flat + numel).
struct CheckpointPartition {
  std::uint64_t flat = 0;
  std::uint64_t numel = 0;
  bool operator==(const CheckpointPartition&) const = default;
};

// Elements of rank `rank`'s file per state array: its shards together.
std::uint64_t shard_elements(const std::vector<CheckpointPartition>& partitions, int world,
                             int rank);

struct CheckpointFile {
  std::uint64_t elements = 0;         // per state array: the rank's shards together
  std::vector<std::uint32_t> crc32c;  // per state array
};

// A checkpoint's manifest, read and checked for form (not yet its data).
struct Checkpoint {
  std::filesystem::path folder;  // DIR/TAG
  std::string tag;
  int version = kCheckpointVersion;
  int world_size = 1;
  std::string optimizer;
  int num_states = 0;
  std::uint64_t elements = 0;  // the model's
  std::uint64_t global_steps = 0;
  std::vector<CheckpointParam> params;
  std::vector<CheckpointPartition> partitions;
  std::vector<CheckpointFile> files;  // by rank
  nlohmann::json manifest;            // the whole file, for what only the engine reads

  std::filesystem::path state_file(int rank) const { return folder / checkpoint_state_file(rank); }
  StateLayout layout(int rank) const;
  std::uint64_t state_bytes(int rank) const;  // the state's (without padding)
  std::uint64_t state_bytes() const;          // every rank's
};

// DIR/TAG, or with an empty tag the one DIR/latest names. Errors name the
// file and what is wrong with it. Nothing the manifest says makes it read
// outside DIR/TAG or allocate more than the manifest's own size.
Result<Checkpoint> read_checkpoint(const std::filesystem::path& dir, std::string tag);

// Rank `rank`'s state file: its size and every state array's CRC32C.
Status verify_checkpoint_file(const Checkpoint& checkpoint, int rank, const StateIo& io = {});
// Every rank's.
Status verify_checkpoint(const Checkpoint& checkpoint);
// Whether what `file` has read of rank `rank`'s state file (all of it)
// matches the manifest's checksums.
Status check_state_crcs(const Checkpoint& checkpoint, int rank, const StateFile& file);

// Reads `count` elements of state `k` from element `begin` of rank `rank`'s
// file into `out`.
Status read_checkpoint_state(const Checkpoint& checkpoint, int rank, int k, std::uint64_t begin,
                             float* out, std::uint64_t count);

// Where the flattened state is: fn(rank, at, flat, count) for every
// non-empty shard, in flat order, says that elements [flat, flat + count)
// of the model are elements [at, at + count) of `rank`'s file.
using ShardVisitor =
    std::function<Status(int rank, std::uint64_t at, std::uint64_t flat, std::uint64_t count)>;
Status for_each_checkpoint_shard(const Checkpoint& checkpoint, const ShardVisitor& fn);

// Publishing (a save's, a reshard's): the files go into a fresh staging
// folder next to DIR/TAG (".TAG.saving-PID", 0700; made by
// make_checkpoint_staging, which also makes DIR and removes the staging
// folders of processes that are gone); publish_checkpoint writes the
// manifest into it, fsyncs it, renames it over DIR/TAG (exchanged
// atomically when TAG exists), then points DIR/latest at TAG the same
// way. A crash at any instant leaves the old checkpoint or the new one.
// Until the rename, a failure removes the staging folder.
std::filesystem::path checkpoint_staging(const std::filesystem::path& dir, const std::string& tag,
                                         std::uint64_t pid);
Status make_checkpoint_staging(const std::filesystem::path& dir,
                               const std::filesystem::path& staging);
Status publish_checkpoint(const std::filesystem::path& dir, const std::string& tag,
                          const std::filesystem::path& staging, const std::string& manifest);

// The checkpoint re-partitioned for `world` ranks, as OUT/TAG (and
// OUT/latest): the same state, counters and manifest, each new rank's file
// holding its shards of the same partitions (version 3); new rank r takes
// the generator states of old rank r mod N. The source is verified first;
// OUT/TAG must not exist. Memory: a chunk of 4 Mi elements. DeepSpeed changes a ZeRO job's world
// size through its universal checkpoint; this is the same step for zinf's.
Status reshard_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& out, int world,
                          const StateIo& io = {});

}  // namespace zinf::offload
