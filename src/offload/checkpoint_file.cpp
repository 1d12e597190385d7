#include "offload/checkpoint_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <numeric>

#include "common/progress_log.hpp"
#include "gpu/communicator.hpp"
#include "swap/crc32c.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::offload {

namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 56;  // 2^58 bytes per fp32 state array

struct BadValue {
  std::string what;
};

// A non-negative integer of at most `max` (a float, a negative number or a
// string is not one).
std::uint64_t natural(const nlohmann::json& value, const std::string& what, std::uint64_t max) {
  // The message names the value's type, not its text: a value nested
  // 100000 deep would overflow the stack printing itself.
  if (!value.is_number_unsigned())
    throw BadValue{what + " is not an integer from 0 to " + std::to_string(max) + " (it is a " +
                   value.type_name() + ")"};
  if (value.get<std::uint64_t>() > max)
    throw BadValue{what + " is " + std::to_string(value.get<std::uint64_t>()) + ", more than " +
                   std::to_string(max)};
  return value.get<std::uint64_t>();
}

Status sync_path(const fs::path& path, int flags) {
  swap::FileDescriptor fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (!fd.valid()) return Status::from_errno(errno, "cannot open " + path.string());
  if (::fsync(fd.get()) != 0) return Status::from_errno(errno, "cannot fsync " + path.string());
  return Status::ok();
}

// A new file, 0600, written and fsync'ed.
Status write_file(const fs::path& path, const std::string& text) {
  swap::FileDescriptor fd(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::from_errno(errno, "cannot create " + path.string());
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0) return Status::from_errno(errno, "cannot write " + path.string());
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Status::from_errno(errno, "cannot fsync " + path.string());
  return Status::ok();
}

// Renames `from` onto `to`, atomically replacing what `to` was.
Status replace(const fs::path& from, const fs::path& to, bool directory) {
  std::error_code ec;
  if (directory && fs::exists(to, ec)) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) != 0)
      return Status::from_errno(errno, "cannot replace " + to.string());
    fs::remove_all(from, ec);  // the old checkpoint, now under the temporary name
  } else if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status::from_errno(errno, "cannot rename " + from.string() + " to " + to.string());
  }
  return sync_path(to.parent_path(), O_RDONLY | O_DIRECTORY);
}

// Folders a killed save left behind (".TAG.saving-PID" of a process that is
// gone): never a checkpoint, since only a finished one is renamed to its tag.
void remove_abandoned_saves(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const auto mark = name.rfind(".saving-");
    if (name.empty() || name[0] != '.' || mark == std::string::npos) continue;
    const std::string pid = name.substr(mark + 8);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) == 0 || errno != ESRCH) continue;
    fs::remove_all(entry.path(), ec);
  }
}

Status read_floats(const swap::FileDescriptor& fd, const fs::path& path, std::uint64_t offset,
                   float* out, std::uint64_t count) {
  auto* bytes = reinterpret_cast<std::byte*>(out);
  for (std::uint64_t done = 0; done < count * sizeof(float);) {
    const ssize_t n = ::pread(fd.get(), bytes + done, count * sizeof(float) - done,
                              static_cast<off_t>(offset + done));
    if (n <= 0) return Status::from_errno(n < 0 ? errno : EIO, "cannot read " + path.string());
    done += static_cast<std::uint64_t>(n);
  }
  return Status::ok();
}

}  // namespace

std::uint64_t CheckpointParam::numel() const {
  return std::accumulate(
      shape.begin(), shape.end(), std::uint64_t{1},
      [](std::uint64_t n, std::int64_t d) { return n * static_cast<std::uint64_t>(d); });
}

std::string checkpoint_state_file(int rank) { return "rank" + std::to_string(rank) + ".state"; }

std::uint64_t shard_elements(const std::vector<CheckpointPartition>& partitions, int world,
                             int rank) {
  std::uint64_t n = 0;
  for (const CheckpointPartition& part : partitions) n += gpu::shard(part.numel, world, rank).count;
  return n;
}

StateLayout Checkpoint::layout(int rank) const {
  return {files[static_cast<std::size_t>(rank)].elements, num_states, version};
}

std::uint64_t Checkpoint::state_bytes(int rank) const { return layout(rank).state_bytes(); }

std::uint64_t Checkpoint::state_bytes() const {
  return static_cast<std::uint64_t>(num_states) * elements * sizeof(float);
}

Result<Checkpoint> read_checkpoint(const std::filesystem::path& dir, std::string tag) {
  if (tag.empty()) {
    std::ifstream in(dir / "latest");
    if (!in) return Status::not_found((dir / "latest").string() + " not found: no checkpoint");
    std::getline(in, tag);
  }
  // A tag names a folder inside `dir`, and nothing in it is a link: a
  // checkpoint from elsewhere cannot make the loader read outside it.
  if (tag.empty() || tag == "." || tag == ".." || tag.find('/') != std::string::npos)
    return Status::invalid_argument("checkpoint tag \"" + tag + "\" is not a folder name in " +
                                    dir.string());
  Checkpoint c;
  c.folder = dir / tag;
  c.tag = tag;
  const auto path = c.folder / "manifest.json";
  for (const auto& p : {c.folder, path}) {
    std::error_code ec;
    if (fs::is_symlink(p, ec))
      return Status::invalid_argument(p.string() + " is a symbolic link; a checkpoint has none");
  }
  std::ifstream in(path);
  if (!in) return Status::not_found(path.string() + " not found");
  auto bad = [&](const std::string& why) { return Status::data_loss(path.string() + ": " + why); };
  try {
    c.manifest = nlohmann::json::parse(in);
    const auto& m = c.manifest;
    if (m.at("format") != kCheckpointFormat)
      return bad("not a zinf checkpoint (format is not \"" + std::string(kCheckpointFormat) +
                 "\")");
    c.version = static_cast<int>(natural(m.at("version"), "version", 1 << 20));
    if (c.version < kOldestCheckpointVersion || c.version > kCheckpointVersion)
      return bad("version " + std::to_string(c.version) + "; this zinf reads versions " +
                 std::to_string(kOldestCheckpointVersion) + " to " +
                 std::to_string(kCheckpointVersion));
    // Sizes are bounded before anything is computed from them: no overflow,
    // no allocation beyond the manifest's own size.
    const std::uint64_t world_size = natural(m.at("world_size"), "world_size", 1 << 20);
    c.world_size = static_cast<int>(world_size);
    c.optimizer = m.at("optimizer");
    c.num_states = static_cast<int>(natural(m.at("num_states"), "num_states", 8));
    if (c.num_states == 0) return bad("num_states is 0");
    c.elements = natural(m.at("elements"), "elements", kMaxElements);
    c.global_steps = natural(m.at("global_steps"), "global_steps", ~std::uint64_t{0});
    const auto& files = m.at("files");
    if (world_size == 0 || world_size != files.size())
      return bad("world_size " + std::to_string(world_size) + " with " +
                 std::to_string(files.size()) + " state files");
    for (const auto& p : m.at("params")) {
      CheckpointParam q{p.at("name"),
                        {},
                        p.at("dtype"),
                        natural(p.at("flat"), "a parameter's flat", c.elements),
                        static_cast<std::int64_t>(
                            natural(p.at("step"), "a parameter's step", std::uint64_t{1} << 62))};
      std::uint64_t numel = 1;
      for (const auto& d : p.at("shape")) {
        q.shape.push_back(static_cast<std::int64_t>(natural(d, "a dimension", c.elements)));
        if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(q.shape.back()), &numel) ||
            numel > c.elements)
          return bad("parameter '" + q.name + "' is larger than the state");
      }
      if (numel > c.elements - q.flat)
        return bad("parameter '" + q.name + "' lies past the state's end");
      c.params.push_back(std::move(q));
    }
    // Partitions tile the flattened state in order.
    std::uint64_t end = 0;
    for (const auto& p : m.at("partitions")) {
      const CheckpointPartition part{natural(p.at(0), "a partition's flat", c.elements),
                                     natural(p.at(1), "a partition's numel", c.elements)};
      if (part.flat != end || part.numel > c.elements - end)
        return bad("partition " + std::to_string(c.partitions.size()) +
                   " does not start where the one before it ends, inside the state");
      end += part.numel;
      c.partitions.push_back(part);
    }
    if (end != c.elements) return bad("the partitions do not cover the state");
    c.files.resize(files.size());
    for (int r = 0; r < c.world_size; ++r) {
      CheckpointFile& file = c.files[static_cast<std::size_t>(r)];
      file.elements = shard_elements(c.partitions, c.world_size, r);
      const std::string name = checkpoint_state_file(r);
      const auto& entry = files.at(name);
      if (natural(entry.at("bytes"), "a file's bytes", ~std::uint64_t{0}) !=
          c.layout(r).file_bytes())
        return bad(name + "'s size disagrees with its shards' elements");
      const auto& crcs = entry.at("crc32c");
      if (crcs.size() != static_cast<std::size_t>(c.num_states))
        return bad(name + ": one CRC32C per state array is expected");
      for (const auto& crc : crcs)
        file.crc32c.push_back(static_cast<std::uint32_t>(natural(crc, "a CRC32C", 0xffffffffu)));
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  } catch (const BadValue& e) {
    return bad(e.what);
  }
  return c;
}

Status read_checkpoint_state(const Checkpoint& c, int rank, int k, std::uint64_t begin, float* out,
                             std::uint64_t count) {
  const auto path = c.state_file(rank);
  swap::FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::from_errno(errno, "cannot open " + path.string());
  return read_floats(fd, path, k * c.layout(rank).region_stride() + begin * sizeof(float), out,
                     count);
}

Status verify_checkpoint_file(const Checkpoint& c, int rank, const StateIo& io) {
  const auto path = c.state_file(rank);
  std::error_code ec;
  if (fs::is_symlink(path, ec))
    return Status::invalid_argument(path.string() + " is a symbolic link; a checkpoint has none");
  if (!fs::exists(path, ec)) return Status::data_loss(path.string() + " is missing");
  const StateLayout layout = c.layout(rank);
  ZINF_ASSIGN_OR_RETURN(auto file, StateFile::open(path, layout, io));
  // All the state arrays a chunk at a time, as the loader reads them.
  constexpr std::uint64_t kStep = kStateChunk / sizeof(float);
  ProgressLog progress("verifying " + path.string(), c.state_bytes(rank));
  for (std::uint64_t at = 0; at < layout.elements; at += kStep) {
    const std::uint64_t n = std::min(kStep, layout.elements - at);
    for (int k = 0; k < c.num_states; ++k) ZINF_RETURN_IF_ERROR(file->read(k, nullptr, n));
    progress.add(c.num_states * n * sizeof(float));
  }
  return check_state_crcs(c, rank, *file);
}

Status check_state_crcs(const Checkpoint& c, int rank, const StateFile& file) {
  const auto& expected = c.files[static_cast<std::size_t>(rank)].crc32c;
  for (int k = 0; k < c.num_states; ++k) {
    if (file.crc32c(k) != expected[static_cast<std::size_t>(k)]) {
      return Status::data_loss(c.state_file(rank).string() + ": state " + std::to_string(k) +
                               " fails its CRC32C (corrupt)");
    }
  }
  return Status::ok();
}

Status verify_checkpoint(const Checkpoint& c) {
  for (int r = 0; r < c.world_size; ++r) ZINF_RETURN_IF_ERROR(verify_checkpoint_file(c, r));
  return Status::ok();
}

Status for_each_checkpoint_shard(const Checkpoint& c, const ShardVisitor& fn) {
  std::vector<std::uint64_t> at(static_cast<std::size_t>(c.world_size), 0);
  for (const CheckpointPartition& part : c.partitions) {
    Status s = Status::ok();
    gpu::for_each_shard(part.numel, c.world_size, [&](int r, gpu::ShardRange shard) {
      if (s.is_ok())
        s = fn(r, at[static_cast<std::size_t>(r)], part.flat + shard.begin, shard.count);
      at[static_cast<std::size_t>(r)] += shard.count;
    });
    ZINF_RETURN_IF_ERROR(s);
  }
  return Status::ok();
}

fs::path checkpoint_staging(const fs::path& dir, const std::string& tag, std::uint64_t pid) {
  return dir / ("." + tag + ".saving-" + std::to_string(pid));
}

Status make_checkpoint_staging(const fs::path& dir, const fs::path& staging) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::from_errno(ec.value(), "cannot create " + dir.string());
  remove_abandoned_saves(dir);
  fs::remove_all(staging, ec);
  fs::create_directory(staging, ec);
  if (!ec) fs::permissions(staging, fs::perms::owner_all, ec);  // 0700, like the swap folders
  if (ec) return Status::from_errno(ec.value(), "cannot create " + staging.string());
  return Status::ok();
}

Status publish_checkpoint(const fs::path& dir, const std::string& tag, const fs::path& staging,
                          const std::string& manifest) {
  Status s = write_file(staging / "manifest.json", manifest);
  if (s.is_ok()) s = sync_path(staging, O_RDONLY | O_DIRECTORY);
  if (s.is_ok()) s = replace(staging, dir / tag, /*directory=*/true);
  if (!s.is_ok()) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    return s;
  }
  const fs::path latest = dir / ".latest.saving";
  s = write_file(latest, tag);
  return s.is_ok() ? replace(latest, dir / "latest", /*directory=*/false) : s;
}

namespace {

// Where the flattened state's elements are in the source files: its
// shards in flat order.
struct SourceShard {
  int rank;
  std::uint64_t at, flat, count;
};

// Elements [flat, flat + count) of state k from the source's shards.
Status gather_state(const Checkpoint& c, const std::vector<SourceShard>& shards,
                    const std::vector<swap::FileDescriptor>& files, int k, std::uint64_t flat,
                    float* out, std::uint64_t count) {
  auto it = std::upper_bound(shards.begin(), shards.end(), flat,
                             [](std::uint64_t f, const SourceShard& s) { return f < s.flat; });
  for (--it; count > 0; ++it) {  // shards tile the state: the first starts at 0
    const std::uint64_t skip = flat - it->flat;
    const std::uint64_t n = std::min(count, it->count - skip);
    const auto r = static_cast<std::size_t>(it->rank);
    ZINF_RETURN_IF_ERROR(read_floats(
        files[r], c.state_file(it->rank),
        k * c.layout(it->rank).region_stride() + (it->at + skip) * sizeof(float), out, n));
    out += n;
    flat += n;
    count -= n;
  }
  return Status::ok();
}

}  // namespace

Status reshard_checkpoint(const Checkpoint& c, const fs::path& out, int world, const StateIo& io) {
  if (world < 1 || world > (1 << 20))
    return Status::invalid_argument("--world-size " + std::to_string(world) +
                                    ": a number of ranks from 1 to 1048576");
  std::error_code ec;
  if (fs::exists(out / c.tag, ec))
    return Status::failed_precondition((out / c.tag).string() +
                                       " exists; reshard writes a new checkpoint, never over one");
  ZINF_RETURN_IF_ERROR(verify_checkpoint(c));
  std::vector<SourceShard> shards;
  ZINF_RETURN_IF_ERROR(for_each_checkpoint_shard(
      c, [&](int rank, std::uint64_t at, std::uint64_t flat, std::uint64_t count) {
        shards.push_back({rank, at, flat, count});
        return Status::ok();
      }));
  std::vector<swap::FileDescriptor> files;
  for (int r = 0; r < c.world_size; ++r) {
    const auto path = c.state_file(r);
    files.emplace_back(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!files.back().valid()) return Status::from_errno(errno, "cannot open " + path.string());
  }
  const fs::path staging = checkpoint_staging(out, c.tag, static_cast<std::uint64_t>(::getpid()));
  ZINF_RETURN_IF_ERROR(make_checkpoint_staging(out, staging));
  constexpr std::uint64_t kChunk = std::uint64_t{4} << 20;
  std::vector<float> chunk(
      static_cast<std::size_t>(std::min(kChunk, std::max<std::uint64_t>(1, c.elements))));
  nlohmann::json manifest = c.manifest, written = nlohmann::json::object(),
                 rng = nlohmann::json::array();
  ProgressLog progress("resharding " + c.folder.string(), c.state_bytes());
  auto write_rank = [&](int r) -> Status {
    const StateLayout layout{shard_elements(c.partitions, world, r), c.num_states,
                             kCheckpointVersion};
    const fs::path path = staging / checkpoint_state_file(r);
    ZINF_ASSIGN_OR_RETURN(auto file, StateFile::create(path, layout, io));
    for (const CheckpointPartition& part : c.partitions) {
      const gpu::ShardRange shard = gpu::shard(part.numel, world, r);
      for (std::uint64_t done = 0; done < shard.count; done += chunk.size()) {
        const std::uint64_t n = std::min<std::uint64_t>(chunk.size(), shard.count - done);
        for (int k = 0; k < c.num_states; ++k) {
          ZINF_RETURN_IF_ERROR(
              gather_state(c, shards, files, k, part.flat + shard.begin + done, chunk.data(), n));
          ZINF_RETURN_IF_ERROR(file->write(k, chunk.data(), n));
        }
        progress.add(c.num_states * n * sizeof(float));
      }
    }
    ZINF_RETURN_IF_ERROR(file->finish());
    std::vector<std::uint32_t> crcs;
    for (int k = 0; k < c.num_states; ++k) crcs.push_back(file->crc32c(k));
    written[checkpoint_state_file(r)] = {{"bytes", layout.file_bytes()}, {"crc32c", crcs}};
    rng.push_back(c.manifest.at("rng").at(static_cast<std::size_t>(r % c.world_size)));
    return Status::ok();
  };
  Status s;
  try {
    for (int r = 0; r < world && s.is_ok(); ++r) s = write_rank(r);
  } catch (const nlohmann::json::exception& e) {
    s = Status::data_loss((c.folder / "manifest.json").string() + ": " + e.what());
  }
  if (!s.is_ok()) {
    fs::remove_all(staging, ec);
    return s.with_context("resharding " + c.folder.string() + " for " + std::to_string(world) +
                          " ranks (no checkpoint was written to " + out.string() + ")");
  }
  manifest["version"] = kCheckpointVersion;
  manifest["world_size"] = world;
  manifest["files"] = written;
  manifest["rng"] = rng;
  return publish_checkpoint(out, c.tag, staging, manifest.dump(1));
}
}  // namespace zinf::offload
