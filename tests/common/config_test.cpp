#include "zinf/common/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace zinf {
namespace {

Config parse_ok(std::string_view text) {
  auto cfg = Config::from_string(text, "test.json");
  EXPECT_TRUE(cfg.is_ok()) << cfg.status().to_string();
  return cfg.is_ok() ? *cfg : Config{};
}

// The error must name the file and the key path.
void expect_error(std::string_view text, std::string_view needle) {
  auto cfg = Config::from_string(text, "test.json");
  ASSERT_FALSE(cfg.is_ok()) << "accepted: " << text;
  EXPECT_EQ(cfg.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cfg.status().message().find("test.json: "), std::string::npos)
      << cfg.status().message();
  EXPECT_NE(cfg.status().message().find(needle), std::string::npos) << cfg.status().message();
}

TEST(ConfigTest, DefaultsAreDeepSpeeds) {
  Config c = parse_ok("{}");
  EXPECT_EQ(c.aio.block_size, 1048576u);
  EXPECT_EQ(c.aio.queue_depth, 8u);
  EXPECT_EQ(c.aio.intra_op_parallelism, 1u);
  EXPECT_FALSE(c.aio.single_submit);
  EXPECT_TRUE(c.aio.overlap_events);
  EXPECT_FALSE(c.aio.use_gds);
  const ZeroConfig& z = c.zero_optimization;
  EXPECT_EQ(z.stage, 0);
  EXPECT_EQ(z.sub_group_size, 1000000000u);
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 50000000u);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 100000u);
  EXPECT_EQ(z.stage3_max_live_parameters, 1000000000u);
  EXPECT_EQ(z.reduce_bucket_size, 500000000u);
  EXPECT_FALSE(z.overlap_comm_enabled());
  EXPECT_EQ(z.offload_param.buffer_count, 5u);
  EXPECT_EQ(z.offload_param.buffer_size, 100000000u);
  EXPECT_FALSE(z.offload_optimizer.buffer_count.has_value());
  EXPECT_TRUE(z.offload_optimizer.pin_memory);
  EXPECT_EQ(c.fp16.initial_scale_power, 16);
  EXPECT_EQ(c.fp16.loss_scale_window, 1000);
  EXPECT_EQ(c.fp16.hysteresis, 2);
  EXPECT_EQ(c.gradient_clipping, 0.0);
  EXPECT_EQ(c.zinf.io_backend, IoBackend::kAuto);
  EXPECT_TRUE(c.zinf.checksum);
}

TEST(ConfigTest, ReadsAFullDeepSpeedNvmeConfig) {
  Config c = parse_ok(R"({
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "optimizer": {"type": "adamw", "params": {"lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-6,
                                              "weight_decay": 0.01}},
    "bf16": {"enabled": true},
    "zero_optimization": {
      "stage": 3, "sub_group_size": 1e8, "stage3_prefetch_bucket_size": 5e7,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/local_nvme", "buffer_count": 8,
                            "pipeline_read": true},
      "offload_param": {"device": "nvme", "nvme_path": "/local_nvme", "buffer_size": 1e8}
    },
    "aio": {"block_size": 262144, "queue_depth": 32, "intra_op_parallelism": 2,
            "single_submit": false, "overlap_events": true},
    "zinf": {"io_backend": "io_uring", "nvme_paths": ["/nvme1"], "checksum": false,
             "device": "cpu", "device_budget": 64e6}
  })");
  EXPECT_EQ(c.optimizer->type, "AdamW");
  EXPECT_DOUBLE_EQ(c.optimizer->beta2, 0.95);
  EXPECT_TRUE(c.bf16_enabled);
  EXPECT_EQ(c.zero_optimization.sub_group_size, 100000000u);
  EXPECT_TRUE(c.zero_optimization.overlap_comm_enabled());
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kNvme);
  EXPECT_EQ(c.zero_optimization.offload_optimizer.buffer_count, 8u);
  EXPECT_EQ(c.aio.queue_depth, 32u);
  EXPECT_EQ(c.aio.intra_op_parallelism, 2u);
  EXPECT_EQ(c.zinf.io_backend, IoBackend::kIoUring);
  EXPECT_EQ(c.zinf.device, "cpu");
  EXPECT_EQ(c.zinf.device_budget, 64000000u);
  EXPECT_EQ(c.swap_paths(), (std::vector<std::string>{"/local_nvme", "/nvme1"}));
  ASSERT_TRUE(c.resolve_batch(2).is_ok());
  EXPECT_EQ(c.train_batch_size, 16u);
}

TEST(ConfigTest, ThreadCountIsADeprecatedAlias) {
  Config c = parse_ok(R"({"aio": {"thread_count": 4}})");
  EXPECT_EQ(c.aio.intra_op_parallelism, 4u);
}

TEST(ConfigTest, UnknownKeysAreErrorsNamingThePath) {
  expect_error(R"({"aio": {"queue_dept": 8}})", "aio.queue_dept: unknown key");
  expect_error(R"({"zero_optimization": {"offload_optimizer": {"devise": "cpu"}}})",
               "zero_optimization.offload_optimizer.devise: unknown key");
  expect_error(R"({"not_a_deepspeed_key": 1})", "not_a_deepspeed_key: unknown key");
}

TEST(ConfigTest, WrongTypesAndRangesAreErrors) {
  expect_error(R"({"aio": {"queue_depth": "8"}})", "aio.queue_depth: expected an integer");
  expect_error(R"({"aio": {"queue_depth": 0}})", "aio.queue_depth: expected an integer in [1,");
  expect_error(R"({"aio": {"block_size": 1000000}})", "aio.block_size: must be a multiple of 4096");
  expect_error(R"({"aio": {"single_submit": 1}})", "aio.single_submit: expected true or false");
  expect_error(R"({"aio": {"use_gds": true}})", "aio.use_gds");
  expect_error(R"({"zero_optimization": {"stage": 4}})", "zero_optimization.stage");
  expect_error(R"({"zero_optimization": {"sub_group_size": 1.5}})",
               "zero_optimization.sub_group_size");
  expect_error(R"({"zero_optimization": {"offload_optimizer": {"device": "disk"}}})",
               "offload_optimizer.device: unknown offload device \"disk\"");
  expect_error(R"({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}})",
               "offload_optimizer.nvme_path: is required");
  expect_error(R"({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})",
               "offload_param: parameter offload needs stage 3");
  expect_error(R"({"optimizer": {"type": "SGD"}})", "optimizer.type: unsupported optimizer");
  expect_error(R"({"optimizer": {"params": {"betas": [0.9, 1.0]}}})", "optimizer.params.betas");
  expect_error(R"({"gradient_clipping": -1})", "gradient_clipping");
  expect_error(R"({"zinf": {"io_backend": "spdk"}})", "zinf.io_backend: unknown io backend");
  expect_error(R"({"zinf": {"device": "tpu"}})", "zinf.device: expected \"auto\"");
  expect_error(R"({"fp16": {"enabled": true}, "bf16": {"enabled": true}})", "cannot both be true");
  expect_error(R"({"aio": [1, 2]})", "aio: expected an object");
}

TEST(ConfigTest, DeepSpeedKeysNotImplementedAreAccepted) {
  Config c = parse_ok(R"({"activation_checkpointing": {}, "wall_clock_breakdown": false})");
  EXPECT_EQ(c.aio.queue_depth, 8u);
}

TEST(ConfigTest, SyntaxErrorsNameTheFile) {
  auto cfg = Config::from_string("{\"aio\": {", "broken.json");
  ASSERT_FALSE(cfg.is_ok());
  EXPECT_NE(cfg.status().message().find("broken.json: invalid JSON"), std::string::npos);
}

TEST(ConfigTest, FromFileReportsMissingFileAndReadsRealOne) {
  auto missing = Config::from_file("/nonexistent/zinf.json");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/zinf.json"), std::string::npos);

  auto dir =
      std::filesystem::temp_directory_path() / ("zinf-config-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / "ds.json";
  std::ofstream(path) << R"({"aio": {"queue_depth": 64}})";
  auto cfg = Config::from_file(path);
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->aio.queue_depth, 64u);
  EXPECT_EQ(cfg->source, path.string());
}

TEST(ConfigTest, BatchSizesResolveOrConflict) {
  Config c = parse_ok(R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4})");
  ASSERT_TRUE(c.resolve_batch(2).is_ok());
  EXPECT_EQ(c.gradient_accumulation_steps, 4u);

  Config bad = parse_ok(R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4,
                            "gradient_accumulation_steps": 2})");
  Status s = bad.resolve_batch(2);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("train_batch_size (30)"), std::string::npos) << s.message();

  Config none = parse_ok("{}");
  EXPECT_FALSE(none.resolve_batch(1).is_ok());
}

TEST(ConfigTest, AioBlockRoundTripsThroughJson) {
  AioConfig aio;
  aio.block_size = 8 << 20;
  aio.queue_depth = 128;
  aio.intra_op_parallelism = 4;
  Config c = parse_ok(to_json(aio));
  EXPECT_EQ(c.aio.block_size, aio.block_size);
  EXPECT_EQ(c.aio.queue_depth, 128u);
  EXPECT_EQ(c.aio.intra_op_parallelism, 4u);
}

// The effective settings parse back to the same settings: every key zinf
// reads is in them, with the value it acts on.
TEST(ConfigTest, EffectiveSettingsRoundTripThroughJson) {
  Config c = parse_ok(R"({
    "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5, "bf16": {"enabled": true},
    "optimizer": {"type": "adam", "params": {"lr": 2e-4, "betas": [0.8, 0.9], "adam_w_mode": false}},
    "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4,
                                                "cycle_second_step_size": 7}},
    "zero_optimization": {"stage": 3, "sub_group_size": 1e6, "stage3_max_live_parameters": 3e6,
      "offload_param": {"device": "nvme", "nvme_path": "./p", "buffer_count": 7},
      "offload_optimizer": {"device": "cpu", "buffer_count": 9}},
    "aio": {"queue_depth": 32},
    "zinf": {"device": "cpu", "device_budget": 1e9, "nvme_paths": ["./q"]}
  })");
  const std::string once = to_json(c);
  Config again = parse_ok(once);
  EXPECT_EQ(to_json(again), once);
  EXPECT_EQ(again.optimizer->type, "Adam");
  EXPECT_FALSE(again.optimizer->adam_w_mode);
  EXPECT_EQ(again.zero_optimization.stage3_max_live_parameters, 3000000u);
  EXPECT_EQ(again.zero_optimization.offload_param.buffer_count, 7u);
  EXPECT_EQ(again.zero_optimization.offload_optimizer.buffer_count, 9u);
  EXPECT_EQ(again.zinf.device_budget, 1000000000u);
  EXPECT_TRUE(again.bf16_enabled);
  EXPECT_EQ(again.scheduler->type, "OneCycle");
  EXPECT_EQ(again.scheduler->cycle_second_step_size, 7u);
  EXPECT_FALSE(again.train_batch_size.has_value()) << "an unset key stays unset";
}

// Every config shipped in configs/ loads as it is.
TEST(ConfigTest, EveryShippedConfigLoads) {
  std::size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(ZINF_CONFIGS_DIR)) {
    if (entry.path().extension() != ".json") continue;
    auto c = Config::from_file(entry.path());
    ASSERT_TRUE(c.is_ok()) << entry.path() << ": " << c.status().message();
    EXPECT_TRUE(c->resolve_batch(1).is_ok()) << entry.path();
    ++n;
  }
  EXPECT_GE(n, 4u);
}

}  // namespace
}  // namespace zinf
