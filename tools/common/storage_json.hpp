// What a swap path is on, as JSON: swapbench's `storage` and train_gpt's
// `memory.nvme_paths` entries.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "zinf/swap/file.hpp"

namespace zinf::tools {

inline nlohmann::json storage_json(const std::string& path, const swap::StorageInfo& s) {
  return {{"path", path},
          {"filesystem", s.filesystem},
          {"ram_backed", s.ram_backed},
          {"device", s.device},
          {"model", s.model},
          {"rotational", s.rotational},
          {"virtual_disk", s.virtual_disk},
          {"memlock_limit", s.memlock_limit},
          {"summary", s.describe()}};
}

}  // namespace zinf::tools
