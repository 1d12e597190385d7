// libFuzzer target: the engine checkpoint's manifest and its loader
// (offload/checkpoint_file.cpp: read_checkpoint, verify_checkpoint).
//
// The input is DIR/TAG/manifest.json; DIR/TAG also holds two fixed state
// files (rank0.state, rank1.state) that the corpus's manifests describe,
// so that verify_checkpoint's reads and checksums run too. Whatever the
// manifest says, the loader must return an error or a Checkpoint that
// keeps its promises: no crash or sanitizer report, no allocation beyond
// libFuzzer's -malloc_limit_mb, only files inside DIR/TAG, every parameter
// and partition inside the state, every rank's shards inside its file.
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "offload/checkpoint_file.hpp"
#include "zinf/common/logging.hpp"

namespace fs = std::filesystem;
using zinf::offload::Checkpoint;

namespace {

constexpr const char* kTag = "global_step1";
fs::path g_dir;          // DIR, this process's own temporary folder
bool g_verbose = false;  // ZINF_FUZZ_VERBOSE: say what each input gave

[[noreturn]] void broken(const Checkpoint& c, const std::string& what) {
  std::fprintf(stderr, "read_checkpoint accepted a manifest that breaks its contract: %s\n%s\n",
               what.c_str(), c.manifest.dump().c_str());
  std::abort();
}

void write_file(const fs::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "checkpoint_fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// The state files the corpus describes: rank0.state holds 2 states of 8
// floats (a world of one with 8 elements, or rank 0 of two), rank1.state 2
// of 3 (rank 1 of two, 11 elements).
void write_state_files(const fs::path& folder) {
  float rank0[16], rank1[6];
  for (int i = 0; i < 16; ++i) rank0[i] = 0.5f * static_cast<float>(i);
  for (int i = 0; i < 6; ++i) rank1[i] = 100.0f + static_cast<float>(i);
  write_file(folder / zinf::offload::checkpoint_state_file(0), rank0, sizeof rank0);
  write_file(folder / zinf::offload::checkpoint_state_file(1), rank1, sizeof rank1);
}

void remove_dir() {
  std::error_code ec;
  fs::remove_all(g_dir, ec);
}

// What a Checkpoint that read_checkpoint returned must satisfy.
void check(const Checkpoint& c) {
  if (c.folder != g_dir / kTag) broken(c, "its folder is " + c.folder.string());
  if (c.world_size < 1 || c.files.size() != static_cast<std::size_t>(c.world_size))
    broken(c, "world_size and files disagree");
  if (c.num_states < 1) broken(c, "no state arrays");
  for (int r = 0; r < c.world_size; ++r) {
    if (c.state_file(r).parent_path() != c.folder) broken(c, "a state file outside the folder");
    if (c.files[static_cast<std::size_t>(r)].crc32c.size() !=
        static_cast<std::size_t>(c.num_states))
      broken(c, "a file without one CRC32C per state");
  }
  for (const auto& p : c.params) {
    // The exact element count: a product that wraps around would let a
    // parameter of 2^64 elements pass as an empty one.
    std::uint64_t numel = 1;
    for (std::int64_t d : p.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel))
        broken(c, "parameter '" + p.name + "' has more than 2^64 elements");
    }
    if (numel != p.numel()) broken(c, "parameter '" + p.name + "': numel() is not its shape's");
    if (p.flat > c.elements || numel > c.elements - p.flat)
      broken(c, "parameter '" + p.name + "' lies outside the state");
  }
  std::uint64_t end = 0;
  for (const auto& part : c.partitions) {
    if (part.flat != end || part.numel > c.elements - end)
      broken(c, "the partitions do not tile the state");
    end += part.numel;
  }
  if (end != c.elements) broken(c, "the partitions do not cover the state");
  std::uint64_t files_elements = 0;
  for (const auto& f : c.files) files_elements += f.elements;
  if (files_elements != c.elements) broken(c, "the files' elements are not the state's");
  std::uint64_t next = 0;
  zinf::Status s = zinf::offload::for_each_checkpoint_shard(
      c, [&](int rank, std::uint64_t at, std::uint64_t flat, std::uint64_t count) {
        if (rank < 0 || rank >= c.world_size || count == 0 || flat != next ||
            count > c.elements - flat || at > c.files[static_cast<std::size_t>(rank)].elements ||
            count > c.files[static_cast<std::size_t>(rank)].elements - at)
          broken(c, "a shard outside its file or out of order");
        next = flat + count;
        return zinf::Status::ok();
      });
  if (!s.is_ok() || next != c.elements) broken(c, "the shards do not cover the state");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  zinf::set_log_level(zinf::LogLevel::kError);
  g_verbose = std::getenv("ZINF_FUZZ_VERBOSE") != nullptr;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/zinf-checkpoint-fuzz-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("checkpoint_fuzz: mkdtemp");
    std::abort();
  }
  g_dir = pattern;
  std::atexit(remove_dir);
  fs::create_directory(g_dir / kTag);
  write_state_files(g_dir / kTag);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  write_file(g_dir / kTag / "manifest.json", data, size);
  auto read = zinf::offload::read_checkpoint(g_dir, kTag);
  if (!read.is_ok()) {
    if (g_verbose) std::fprintf(stderr, "read: %s\n", read.status().to_string().c_str());
    return 0;
  }
  check(*read);
  const zinf::Status verified = zinf::offload::verify_checkpoint(*read);
  if (g_verbose) std::fprintf(stderr, "read: ok; verify: %s\n", verified.to_string().c_str());
  return 0;
}
