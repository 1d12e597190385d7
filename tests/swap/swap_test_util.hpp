// Helpers shared by the swap tests: a scratch directory on a real disk and
// the backends this machine can run.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/vfs.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "zinf/common/config.hpp"
#include "zinf/swap/io_engine.hpp"

namespace zinf::swap::testing {

// A fresh directory under $ZINF_TEST_DIR or the current directory (the build
// tree: a real disk, where O_DIRECT works), removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("ZINF_TEST_DIR");
    std::string pattern = (std::filesystem::path(base ? base : ".") / "zinf-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp " + pattern);
    path_ = std::filesystem::absolute(pattern).lexically_normal();
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::vector<IoBackend> all_backends() {
  return {IoBackend::kIoUring, IoBackend::kLibAio, IoBackend::kPsync};
}

inline std::string backend_name(const ::testing::TestParamInfo<IoBackend>& info) {
  return std::string(to_string(info.param));
}

// Deterministic content for (seed, offset) so a read can be checked anywhere.
inline void fill_pattern(std::byte* data, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t v = rng();
    for (std::size_t b = 0; b < 8 && i + b < n; ++b)
      data[i + b] = static_cast<std::byte>(v >> (8 * b));
  }
}

}  // namespace zinf::swap::testing
