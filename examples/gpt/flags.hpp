// The GPT's command-line flags, shared by train_gpt and zinf-plan so that a
// plan is made for exactly the model a run trains (and with its defaults).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <zinf/common/config.hpp>

#include "gpt/model.hpp"

namespace gpt {

// --layers --hidden --heads --seq --batch --vocab --tied into `model` and
// `batch` (0 when --batch is not given: the config's batch keys decide).
inline void add_model_flags(CLI::App& app, Options& model, int& batch) {
  model.layers = 20;
  model.hidden = 512;
  model.heads = 8;
  model.seq = 16;
  app.add_option("--layers", model.layers, "transformer blocks")->capture_default_str();
  app.add_option("--hidden", model.hidden, "hidden size")->capture_default_str();
  app.add_option("--heads", model.heads, "attention heads")->capture_default_str();
  app.add_option("--seq", model.seq, "sequence length (tokens are bytes)")->capture_default_str();
  app.add_option("--batch", batch,
                 "micro-batch (per rank); default: the config's batch keys, else 2 (a value "
                 "they contradict is an error)")
      ->check(CLI::PositiveNumber);
  app.add_option("--vocab", model.vocab, "vocabulary (256: every byte)")->capture_default_str();
  app.add_flag("--tied", model.tied, "tie the LM head to the token embedding");
}

// --device (auto, cpu, cuda) and --device-budget (bytes, or auto).
inline void add_device_flags(CLI::App& app, std::string& device, std::string& budget) {
  app.add_option("--device", device, "auto, cpu (host-emulated) or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--device-budget", budget,
                 "device memory budget in bytes (64M, 2G); auto: a quarter of the parameters on "
                 "the emulated device, the config's zinf.device_budget on cuda")
      ->capture_default_str();
}

// "64M", "1.5G", "1048576": bytes (K, M, G are powers of 1024).
inline std::uint64_t parse_bytes(const std::string& text) {
  std::size_t used = 0;
  const double value = std::stod(text, &used);
  double scale = 1;
  const std::string suffix = text.substr(used);
  if (suffix == "K" || suffix == "KiB") {
    scale = 1 << 10;
  } else if (suffix == "M" || suffix == "MiB") {
    scale = 1 << 20;
  } else if (suffix == "G" || suffix == "GiB") {
    scale = 1 << 30;
  } else if (!suffix.empty()) {
    throw std::invalid_argument("unknown suffix '" + suffix + "'");
  }
  if (value < 0) throw std::invalid_argument("negative");
  return static_cast<std::uint64_t>(value * scale);
}

// The budget --device-budget gives (nullopt: the config's zinf.device_budget).
// "auto" on the emulated device is a quarter of the fp32 parameters: a model
// 4x larger than its device.
inline std::optional<std::uint64_t> device_budget(const std::string& flag, const Options& model,
                                                  bool cuda) {
  if (flag != "auto") return parse_bytes(flag);
  if (cuda) return std::nullopt;
  return static_cast<std::uint64_t>(model.parameters()) * sizeof(float) / 4;
}

// The micro-batch: the config's where its batch keys give one (a --batch
// that contradicts them is an error), else --batch or 2, written into the
// config; the batch keys resolved for `world` ranks.
inline void resolve_batch(zinf::Config& cfg, int& batch, std::uint64_t world) {
  if (cfg.train_batch_size || cfg.train_micro_batch_size_per_gpu) {
    zinf::throw_if_error(cfg.resolve_batch(world));
    const auto micro = static_cast<int>(*cfg.train_micro_batch_size_per_gpu);
    if (batch != 0 && batch != micro) {
      throw std::runtime_error("--batch " + std::to_string(batch) + " contradicts " + cfg.source +
                               ": its batch keys give a micro-batch of " + std::to_string(micro) +
                               " (train_micro_batch_size_per_gpu)");
    }
    batch = micro;
  } else {
    if (batch == 0) batch = 2;
    cfg.train_micro_batch_size_per_gpu = static_cast<std::uint64_t>(batch);
    zinf::throw_if_error(cfg.resolve_batch(world));
  }
}

}  // namespace gpt
