#include "offload/checkpoint_file.hpp"

#include <fcntl.h>
#include <unistd.h>

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
  const std::uint64_t offset = k * c.layout(rank).region_stride() + begin * sizeof(float);
  auto* bytes = reinterpret_cast<std::byte*>(out);
  for (std::uint64_t done = 0; done < count * sizeof(float);) {
    const ssize_t n = ::pread(fd.get(), bytes + done, count * sizeof(float) - done,
                              static_cast<off_t>(offset + done));
    if (n <= 0) return Status::from_errno(n < 0 ? errno : EIO, "cannot read " + path.string());
    done += static_cast<std::uint64_t>(n);
  }
  return Status::ok();
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

}  // namespace zinf::offload
