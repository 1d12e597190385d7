// The engine checkpoint's files (private to zinf: the engine and zinf-ckpt).
//
// DIR/TAG/manifest.json and DIR/TAG/rank0.state; see engine_checkpoint.cpp
// for what they hold and how they are written.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "zinf/common/status.hpp"

namespace zinf::offload {

inline constexpr const char* kCheckpointFormat = "zinf-checkpoint";
inline constexpr int kCheckpointVersion = 1;
inline constexpr const char* kCheckpointStateFile = "rank0.state";

struct CheckpointParam {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;   // as c10::toString names it: "Float", "BFloat16", "Half"
  std::uint64_t flat;  // its first element in the flattened state
  std::int64_t step;   // updates applied (bias correction)
  std::uint64_t numel() const;
};

// A checkpoint's manifest, read and checked for form (not yet its data).
struct Checkpoint {
  std::filesystem::path folder;  // DIR/TAG
  std::string tag;
  int world_size = 1;
  std::string optimizer;
  int num_states = 0;
  std::uint64_t elements = 0;
  std::uint64_t global_steps = 0;
  std::vector<CheckpointParam> params;
  std::vector<std::uint32_t> crc32c;  // per state array
  nlohmann::json manifest;            // the whole file, for what only the engine reads

  std::filesystem::path state_file() const { return folder / kCheckpointStateFile; }
  std::uint64_t state_bytes() const;
};

// DIR/TAG, or with an empty tag the one DIR/latest names. Errors name the
// file and what is wrong with it.
Result<Checkpoint> read_checkpoint(const std::filesystem::path& dir, std::string tag);

// The state file's size and every state array's CRC32C.
Status verify_checkpoint(const Checkpoint& checkpoint);

// Reads `count` elements of state `k` from element `begin` of the
// flattened state into `out`.
Status read_checkpoint_state(const Checkpoint& checkpoint, int k, std::uint64_t begin, float* out,
                             std::uint64_t count);

}  // namespace zinf::offload
