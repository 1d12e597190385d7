// Chooses the I/O engine: io_uring, then libaio, then the pread/pwrite pool.
#include <mutex>
#include <set>

#include "swap/engines.hpp"
#include "zinf/common/logging.hpp"

namespace zinf::swap {
namespace {

Result<std::unique_ptr<IoEngine>> make_one(IoBackend backend, const IoEngineOptions& options) {
  switch (backend) {
    case IoBackend::kIoUring:
      return make_uring_engine(options);
    case IoBackend::kLibAio:
      return make_aio_engine(options);
    case IoBackend::kPsync:
      return make_psync_engine(options);
    case IoBackend::kAuto:
      break;
  }
  return Status::internal("make_one: kAuto");
}

// Every store worker makes an engine: say each distinct choice once.
void log_once(const std::string& line) {
  static std::mutex mutex;
  static std::set<std::string> said;
  std::lock_guard lock(mutex);
  if (said.insert(line).second) ZINF_LOG(kInfo) << line;
}

}  // namespace

Status probe_backend(IoBackend backend) {
  if (backend == IoBackend::kAuto) return Status::ok();
  IoEngineOptions options;
  options.queue_depth = 2;
  auto engine = make_one(backend, options);
  return engine.is_ok() ? Status::ok() : engine.status();
}

Result<std::unique_ptr<IoEngine>> make_io_engine(IoBackend backend,
                                                 const IoEngineOptions& options) {
  if (options.queue_depth == 0) return Status::invalid_argument("aio.queue_depth must be >= 1");
  if (backend != IoBackend::kAuto) {
    auto engine = make_one(backend, options);
    if (!engine.is_ok()) {
      return Status(StatusCode::kUnavailable,
                    "zinf.io_backend \"" + std::string(to_string(backend)) +
                        "\" cannot run here: " + engine.status().message());
    }
    log_once("io engine: " + std::string(to_string(backend)) + " (forced by the config)");
    return engine;
  }
  std::string why_not;
  for (IoBackend candidate : {IoBackend::kIoUring, IoBackend::kLibAio, IoBackend::kPsync}) {
    auto engine = make_one(candidate, options);
    if (engine.is_ok()) {
      log_once("io engine: " + std::string(to_string(candidate)) +
               (why_not.empty() ? std::string(" (best available)") : " (" + why_not + ")"));
      return engine;
    }
    if (!why_not.empty()) why_not += "; ";
    why_not += engine.status().message();
  }
  return Status::unavailable("no io engine can run here: " + why_not);
}

}  // namespace zinf::swap
