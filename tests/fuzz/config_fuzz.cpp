// libFuzzer target: the DeepSpeed-config parser (zinf::Config::from_string).
//
// Any input must come back as a Config or an error, without a crash, a
// sanitizer report or an exception. An input that parses must also
// round-trip: its effective settings (to_json) parse again and give the
// same to_json, since train_gpt --json and zinf-config print them as a
// config that can be fed back.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "zinf/common/config.hpp"
#include "zinf/common/logging.hpp"

namespace {
bool g_verbose = false;  // ZINF_FUZZ_VERBOSE: say what each input gave
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The parse's warnings (deprecated keys, the ignored list) would be most
  // of the run's time.
  zinf::set_log_level(zinf::LogLevel::kError);
  g_verbose = std::getenv("ZINF_FUZZ_VERBOSE") != nullptr;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = zinf::Config::from_string(text, "fuzz.json");
  if (g_verbose) std::fprintf(stderr, "parse: %s\n", parsed.status().to_string().c_str());
  if (!parsed.is_ok()) return 0;
  const std::string once = zinf::to_json(*parsed);
  auto again = zinf::Config::from_string(once, "to_json");
  if (!again.is_ok()) {
    std::fprintf(stderr, "to_json of a parsed config does not parse: %s\n%s\n",
                 again.status().to_string().c_str(), once.c_str());
    std::abort();
  }
  const std::string twice = zinf::to_json(*again);
  if (twice != once) {
    std::fprintf(stderr, "to_json does not round-trip:\n%s\n---\n%s\n", once.c_str(),
                 twice.c_str());
    std::abort();
  }
  return 0;
}
