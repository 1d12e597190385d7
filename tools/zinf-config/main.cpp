// zinf-config: what zinf makes of a DeepSpeed config.
//
//   zinf-config check ds_config.json [--world-size N]
//
// Prints the effective settings (every key zinf acts on, defaults filled in,
// as DeepSpeed JSON that loads again) and the DeepSpeed keys it ignores, and
// exits 0; on a bad config it prints "error: FILE: KEY.PATH: why" and exits 1.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "zinf/common/config.hpp"

int main(int argc, char** argv) {
  CLI::App app{"zinf-config: what zinf makes of a DeepSpeed JSON config"};
  app.require_subcommand(1);
  std::string path;
  std::uint64_t world_size = 1;
  CLI::App* check = app.add_subcommand(
      "check", "print the effective settings and the ignored keys; exit 1 on an error");
  check->add_option("file", path, "the DeepSpeed JSON config")->required();
  check->add_option("--world-size", world_size, "ranks the batch keys are resolved for")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  auto config = zinf::Config::from_file(path);
  zinf::Status status = config.is_ok() ? config->resolve_batch(world_size) : config.status();
  if (!status.is_ok() && config.is_ok() && !config->train_batch_size &&
      !config->train_micro_batch_size_per_gpu && !config->gradient_accumulation_steps) {
    status = zinf::Status::ok();  // no batch keys: the program sets the batch
  }
  if (!status.is_ok()) {
    std::fprintf(stderr, "error: %s\n", status.message().c_str());
    return 1;
  }
  std::printf("%s: valid for %llu rank%s\n\neffective settings:\n%s\n", path.c_str(),
              static_cast<unsigned long long>(world_size), world_size == 1 ? "" : "s",
              zinf::to_json(*config).c_str());
  std::printf("\nignored (DeepSpeed keys zinf does not act on): %s\n",
              config->ignored.empty() ? "none" : "");
  for (const auto& key : config->ignored) std::printf("  %s\n", key.c_str());
  return 0;
}
