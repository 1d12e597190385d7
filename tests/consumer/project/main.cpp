// A program outside the zinf tree, built only from the installed package.
#include <cstdio>
#include <zinf/common/config.hpp>
#include <zinf/cpu_adam/cpu_adam.hpp>
#include <zinf/swap/io_engine.hpp>

int main() {
  auto config = zinf::Config::from_string(R"({"aio": {"queue_depth": 16}})");
  if (!config.is_ok() || config->aio.queue_depth != 16) return 1;
  auto executor = zinf::cpu_adam::Executor::create(1);
  if (!executor.is_ok()) return 2;
  zinf::Status psync = zinf::swap::probe_backend(zinf::IoBackend::kPsync);
  std::printf("zinf consumer: isa %s, psync %s\n",
              std::string(zinf::cpu_adam::to_string((*executor)->isa())).c_str(),
              psync.to_string().c_str());
  return psync.is_ok() ? 0 : 3;
}
