#include "offload/checkpoint_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <numeric>

#include "swap/crc32c.hpp"
#include "zinf/swap/file.hpp"

namespace zinf::offload {

namespace fs = std::filesystem;

std::uint64_t CheckpointParam::numel() const {
  return static_cast<std::uint64_t>(
      std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>()));
}

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
  for (const auto& p : {c.folder, path, c.folder / kCheckpointStateFile}) {
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
    if (m.at("format") != kCheckpointFormat || m.at("version") != kCheckpointVersion)
      return bad("not a zinf checkpoint of version " + std::to_string(kCheckpointVersion));
    c.world_size = m.at("world_size");
    c.optimizer = m.at("optimizer");
    c.num_states = m.at("num_states");
    c.elements = m.at("elements");
    c.global_steps = m.at("global_steps");
    for (const auto& p : m.at("params")) {
      c.params.push_back({p.at("name"), p.at("shape").get<std::vector<std::int64_t>>(),
                          p.at("dtype"), p.at("flat"), p.at("step")});
      if (c.params.back().flat + c.params.back().numel() > c.elements)
        return bad("parameter '" + c.params.back().name + "' lies past the state's end");
    }
    const auto& file = m.at("files").at(kCheckpointStateFile);
    if (file.at("bytes") != c.state_bytes())
      return bad("the state's size disagrees with its element count");
    c.crc32c = file.at("crc32c").get<std::vector<std::uint32_t>>();
    if (c.crc32c.size() != static_cast<std::size_t>(c.num_states))
      return bad("one CRC32C per state array is expected");
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  return c;
}

Status read_checkpoint_state(const Checkpoint& c, int k, std::uint64_t begin, float* out,
                             std::uint64_t count) {
  const auto path = c.state_file();
  swap::FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::from_errno(errno, "cannot open " + path.string());
  const std::uint64_t offset = (k * c.elements + begin) * sizeof(float);
  auto* bytes = reinterpret_cast<std::byte*>(out);
  for (std::uint64_t done = 0; done < count * sizeof(float);) {
    const ssize_t n = ::pread(fd.get(), bytes + done, count * sizeof(float) - done,
                              static_cast<off_t>(offset + done));
    if (n <= 0) return Status::from_errno(n < 0 ? errno : EIO, "cannot read " + path.string());
    done += static_cast<std::uint64_t>(n);
  }
  return Status::ok();
}

Status verify_checkpoint(const Checkpoint& c) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(c.state_file(), ec);
  if (ec || size != c.state_bytes()) {
    return Status::data_loss(c.state_file().string() + " is " +
                             (ec ? "missing" : std::to_string(size) + " bytes") + ", not " +
                             std::to_string(c.state_bytes()));
  }
  std::vector<float> buffer(1 << 20);
  for (int k = 0; k < c.num_states; ++k) {
    std::uint32_t crc = 0;
    for (std::uint64_t at = 0; at < c.elements; at += buffer.size()) {
      const std::uint64_t n = std::min<std::uint64_t>(buffer.size(), c.elements - at);
      ZINF_RETURN_IF_ERROR(read_checkpoint_state(c, k, at, buffer.data(), n));
      crc =
          swap::crc32c({reinterpret_cast<const std::byte*>(buffer.data()), n * sizeof(float)}, crc);
    }
    if (crc != c.crc32c[static_cast<std::size_t>(k)]) {
      return Status::data_loss(c.state_file().string() + ": state " + std::to_string(k) +
                               " fails its CRC32C (corrupt)");
    }
  }
  return Status::ok();
}

}  // namespace zinf::offload
