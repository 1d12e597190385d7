// zinf-ckpt: engine checkpoints from the outside (DeepSpeed's zero_to_fp32
// and friends).
//
//   zinf-ckpt inspect DIR [--tag TAG]       what the checkpoint holds
//   zinf-ckpt verify DIR [--tag TAG]        sizes and checksums; exit 1 if bad
//   zinf-ckpt consolidate DIR OUT [--tag TAG]
//       every parameter's fp32 master, nested by name as Module::save nests
//       it, in one file a plain LibTorch program loads with
//       torch::load(module, OUT) (a module with buffers reads them elsewhere)
//   zinf-ckpt reshard DIR OUT --world-size N [--tag TAG]
//       the same checkpoint for a job of N ranks, as OUT/TAG and OUT/latest
//       (DeepSpeed's universal checkpoint step: load it with N ranks)
//
// TAG defaults to the one DIR/latest names. Errors print "error: ..." and
// exit 1.
#include <torch/serialize.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "offload/checkpoint_file.hpp"
#include "zinf/common/logging.hpp"

namespace {

using zinf::offload::Checkpoint;

void inspect(const Checkpoint& c) {
  const auto& m = c.manifest;
  std::printf("%s: tag %s, step %llu (%llu skipped), world size %d, stage %d\n",
              c.folder.string().c_str(), c.tag.c_str(),
              static_cast<unsigned long long>(c.global_steps),
              static_cast<unsigned long long>(m.value("skipped_steps", 0ull)), c.world_size,
              m.value("zero_stage", 0));
  std::printf("  optimizer %s, %d fp32 state arrays over %llu elements (%s in %d files)\n",
              c.optimizer.c_str(), c.num_states, static_cast<unsigned long long>(c.elements),
              zinf::format_bytes(c.state_bytes()).c_str(), c.world_size);
  for (int r = 0; r < c.world_size; ++r) {
    std::printf("    %s: %s, %zu partitions' shards\n",
                zinf::offload::checkpoint_state_file(r).c_str(),
                zinf::format_bytes(c.state_bytes(r)).c_str(), c.partitions.size());
  }
  if (m.contains("scheduler") && !m["scheduler"].value("type", "").empty()) {
    std::printf("  scheduler %s at last_batch_iteration %lld\n",
                m["scheduler"]["type"].get<std::string>().c_str(),
                static_cast<long long>(m["scheduler"]["last_batch_iteration"].get<std::int64_t>()));
  }
  if (m.contains("loss_scaler"))
    std::printf("  loss scale %g\n", m["loss_scaler"]["scale"].get<double>());
  std::printf("  %zu parameters:\n", c.params.size());
  for (const auto& p : c.params) {
    std::string dims;
    for (auto d : p.shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    std::printf("    %-40s %s[%s], step %lld\n", p.name.c_str(), p.dtype.c_str(), dims.c_str(),
                static_cast<long long>(p.step));
  }
}

// Parameters by their dotted names as torch::nn::Module::save nests them:
// one archive per submodule.
struct Tree {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, Tree> children;

  void add(const std::string& name, torch::Tensor t) {
    const auto dot = name.find('.');
    if (dot == std::string::npos) {
      tensors[name] = std::move(t);
    } else {
      children[name.substr(0, dot)].add(name.substr(dot + 1), std::move(t));
    }
  }
  void write(torch::serialize::OutputArchive& archive) const {
    for (const auto& [name, t] : tensors) archive.write(name, t, /*is_buffer=*/false);
    for (const auto& [name, child] : children) {
      torch::serialize::OutputArchive nested;
      child.write(nested);
      archive.write(name, nested);
    }
  }
};

zinf::Status consolidate(const Checkpoint& c, const std::string& out) {
  // Each parameter's masters (state 0) from the ranks' shards that hold them.
  std::vector<torch::Tensor> masters;
  std::map<std::uint64_t, std::size_t> by_flat;  // first element -> parameter
  for (const auto& p : c.params) {
    by_flat[p.flat] = masters.size();
    masters.push_back(torch::empty({static_cast<std::int64_t>(p.numel())}, torch::kFloat));
  }
  zinf::Status read = zinf::offload::for_each_checkpoint_shard(
      c, [&](int rank, std::uint64_t at, std::uint64_t flat, std::uint64_t count) {
        // The parameters overlapping [flat, flat + count): from the last
        // one starting at or before flat.
        auto it = by_flat.upper_bound(flat);
        if (it != by_flat.begin()) --it;
        for (; it != by_flat.end() && it->first < flat + count; ++it) {
          const auto& p = c.params[it->second];
          const std::uint64_t lo = std::max(flat, p.flat);
          const std::uint64_t hi = std::min(flat + count, p.flat + p.numel());
          if (hi <= lo) continue;
          float* dst = masters[it->second].data_ptr<float>() + (lo - p.flat);
          ZINF_RETURN_IF_ERROR(
              zinf::offload::read_checkpoint_state(c, rank, 0, at + (lo - flat), dst, hi - lo));
        }
        return zinf::Status::ok();
      });
  ZINF_RETURN_IF_ERROR(read);
  Tree tree;
  for (std::size_t i = 0; i < c.params.size(); ++i)
    tree.add(c.params[i].name, masters[i].view(c.params[i].shape));
  try {
    torch::serialize::OutputArchive archive;
    tree.write(archive);
    archive.save_to(out);
  } catch (const c10::Error& e) {
    return zinf::Status::unavailable("cannot write " + out + ": " + e.what_without_backtrace());
  }
  std::printf("%s: %zu parameters, fp32, from %s\n", out.c_str(), c.params.size(),
              c.folder.string().c_str());
  return zinf::Status::ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zinf-ckpt: inspect, verify, consolidate and reshard zinf engine checkpoints"};
  app.require_subcommand(1);
  std::string dir, tag, out;
  auto add = [&](const char* name, const char* help) {
    CLI::App* sub = app.add_subcommand(name, help);
    sub->add_option("dir", dir, "the checkpoint folder (DIR of DIR/latest)")->required();
    sub->add_option("--tag", tag, "the tag to read; default: the one DIR/latest names");
    return sub;
  };
  CLI::App* inspect_cmd = add("inspect", "print what the checkpoint holds");
  CLI::App* verify_cmd = add("verify", "check sizes and checksums; exit 1 if anything is wrong");
  CLI::App* consolidate_cmd =
      add("consolidate", "write every parameter's fp32 master, by name, for torch::load");
  consolidate_cmd->add_option("out", out, "the output file")->required();
  int world = 0;
  CLI::App* reshard_cmd = add("reshard", "rewrite the checkpoint for a job of another world size");
  reshard_cmd->add_option("out", out, "the folder to write OUT/TAG and OUT/latest in")->required();
  reshard_cmd->add_option("--world-size", world, "the ranks of the job that loads it")->required();
  CLI11_PARSE(app, argc, argv);

  auto checkpoint = zinf::offload::read_checkpoint(dir, tag);
  zinf::Status s = checkpoint.status();
  if (s.is_ok() && (verify_cmd->parsed() || consolidate_cmd->parsed()))
    s = zinf::offload::verify_checkpoint(*checkpoint);
  if (s.is_ok() && inspect_cmd->parsed()) inspect(*checkpoint);
  if (s.is_ok() && verify_cmd->parsed())
    std::printf("%s: ok (%s checked)\n", checkpoint->folder.string().c_str(),
                zinf::format_bytes(checkpoint->state_bytes()).c_str());
  if (s.is_ok() && consolidate_cmd->parsed()) s = consolidate(*checkpoint, out);
  if (s.is_ok() && reshard_cmd->parsed()) {
    s = zinf::offload::reshard_checkpoint(*checkpoint, out, world);
    if (s.is_ok())
      std::printf("%s/%s: %d rank(s), from %s (%d rank(s))\n", out.c_str(), checkpoint->tag.c_str(),
                  world, checkpoint->folder.string().c_str(), checkpoint->world_size);
  }
  if (!s.is_ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
