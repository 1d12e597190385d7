#include "zinf/common/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
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
  EXPECT_EQ(z.offload_param.buffer_count, 5u);
  EXPECT_EQ(z.offload_param.buffer_size, 100000000u);
  EXPECT_EQ(z.offload_optimizer.buffer_count, 4u);
  EXPECT_TRUE(z.offload_optimizer.pin_memory);
  EXPECT_EQ(c.fp16.initial_scale_power, 16);
  EXPECT_EQ(c.fp16.loss_scale_window, 1000);
  EXPECT_EQ(c.fp16.hysteresis, 2);
  EXPECT_EQ(c.gradient_clipping, 1.0);
  EXPECT_FALSE(c.steps_per_print.has_value());
  EXPECT_TRUE(c.ignored.empty());
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
  EXPECT_EQ(c.ignored,
            std::vector<std::string>{"zero_optimization.offload_optimizer.pipeline_read (zinf "
                                     "always overlaps the reads with the update)"});
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

// DeepSpeed keys zinf does not act on are accepted and listed, with the
// path, wherever they are.
TEST(ConfigTest, DeepSpeedKeysNotActedOnAreListedAsIgnored) {
  Config c = parse_ok(R"({"activation_checkpointing": {"partition_activations": true,
                                                        "cpu_checkpointing": true},
    "wall_clock_breakdown": false,
    "zero_optimization": {"stage": 3, "contiguous_gradients": true, "reduce_bucket_size": 5e8,
                          "stage3_gather_16bit_weights_on_model_save": true,
                          "offload_param": {"device": "cpu", "max_in_cpu": 1e9}},
    "fp16": {"enabled": true, "auto_cast": false}})");
  EXPECT_TRUE(c.activation_checkpointing.cpu_checkpointing);
  for (const char* key : {"activation_checkpointing.partition_activations (",
                          "wall_clock_breakdown (", "zero_optimization.contiguous_gradients (",
                          "zero_optimization.stage3_gather_16bit_weights_on_model_save (",
                          "zero_optimization.offload_param.max_in_cpu (", "fp16.auto_cast ("}) {
    EXPECT_EQ(std::count_if(c.ignored.begin(), c.ignored.end(),
                            [&](const std::string& e) { return e.rfind(key, 0) == 0; }),
              1)
        << key;
  }
  EXPECT_EQ(c.ignored.size(), 6u);
  EXPECT_EQ(c.zero_optimization.reduce_bucket_size, 500000000u);
}

// overlap_comm: DeepSpeed's default (true at stage 3 only) when absent or
// null, else what it says; the effective config says which.
TEST(ConfigTest, OverlapCommDefaultsToStageThreeAsInDeepSpeed) {
  for (int stage = 0; stage <= 3; ++stage) {
    const std::string z = R"({"zero_optimization": {"stage": )" + std::to_string(stage);
    EXPECT_EQ(parse_ok(z + "}}").zero_optimization.overlap_comm, stage == 3) << stage;
    EXPECT_EQ(parse_ok(z + R"(, "overlap_comm": null}})").zero_optimization.overlap_comm,
              stage == 3)
        << stage;
    EXPECT_TRUE(parse_ok(z + R"(, "overlap_comm": true}})").zero_optimization.overlap_comm);
    EXPECT_FALSE(parse_ok(z + R"(, "overlap_comm": false}})").zero_optimization.overlap_comm);
  }
  auto bad = Config::from_string(R"({"zero_optimization": {"overlap_comm": "yes"}})");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("zero_optimization.overlap_comm"), std::string::npos)
      << bad.status().message();
  const Config c = parse_ok(R"({"zero_optimization": {"stage": 2, "overlap_comm": true}})");
  EXPECT_TRUE(Config::from_string(to_json(c))->zero_optimization.overlap_comm);
}

// communication_data_type: DeepSpeed's three names, any case, or null; the
// effective config says which.
TEST(ConfigTest, CommunicationDataTypeIsOneOfDeepSpeeds) {
  EXPECT_EQ(parse_ok("{}").communication_data_type, "");
  EXPECT_EQ(parse_ok(R"({"communication_data_type": null})").communication_data_type, "");
  for (const char* t : {"fp32", "fp16", "bf16"})
    EXPECT_EQ(parse_ok(R"({"communication_data_type": ")" + std::string(t) + "\"}")
                  .communication_data_type,
              t);
  const Config c = parse_ok(R"({"communication_data_type": "FP16"})");
  EXPECT_EQ(c.communication_data_type, "fp16");
  EXPECT_EQ(parse_ok(to_json(c)).communication_data_type, "fp16");
  expect_error(R"({"communication_data_type": "int8"})",
               "communication_data_type: expected \"fp32\", \"fp16\", \"bf16\" or null");
  expect_error(R"({"communication_data_type": 16})", "communication_data_type: expected a string");
}

// DeepSpeed's pydantic aliases: the short name or the stage3_ one, not both.
TEST(ConfigTest, Stage3AliasesAreTheSameKeys) {
  Config c = parse_ok(R"({"zero_optimization": {"stage": 3, "prefetch_bucket_size": 123,
    "param_persistence_threshold": 7, "model_persistence_threshold": 8,
    "max_live_parameters": 9, "max_reuse_distance": 10}})");
  const ZeroConfig& z = c.zero_optimization;
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 123u);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 7u);
  EXPECT_EQ(z.stage3_model_persistence_threshold, 8u);
  EXPECT_EQ(z.stage3_max_live_parameters, 9u);
  EXPECT_EQ(z.stage3_max_reuse_distance, 10u);
  expect_error(R"({"zero_optimization": {"prefetch_bucket_size": 1,
                                         "stage3_prefetch_bucket_size": 2}})",
               "zero_optimization.prefetch_bucket_size: is the same setting as "
               "zero_optimization.stage3_prefetch_bucket_size");
  expect_error(R"({"aio": {"thread_count": 2, "intra_op_parallelism": 2}})",
               "aio.thread_count: is the same setting");
  Config old = parse_ok(R"({"bfloat16": {"enabled": true}})");
  EXPECT_TRUE(old.bf16_enabled);
  expect_error(R"({"bf16": {"enabled": true}, "bfloat16": {"enabled": true}})", "bfloat16");
}

// The deprecated spellings DeepSpeed still accepts (and its tests use).
TEST(ConfigTest, DeprecatedOffloadSpellingsStillWork) {
  Config c = parse_ok(R"({"zero_optimization": {"stage": 2, "cpu_offload": true}})");
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kCpu);
  Config p = parse_ok(R"({"zero_optimization": {"stage": 3, "cpu_offload_param": true,
                                                "cpu_offload": false}})");
  EXPECT_EQ(p.zero_optimization.offload_param.device, OffloadDevice::kCpu);
  EXPECT_EQ(p.zero_optimization.offload_optimizer.device, OffloadDevice::kNone);
  expect_error(R"({"zero_optimization": {"cpu_offload": true,
                                         "offload_optimizer": {"device": "cpu"}}})",
               "zero_optimization.cpu_offload: is the deprecated spelling of "
               "zero_optimization.offload_optimizer");
  EXPECT_EQ(parse_ok(R"({"zero_optimization": true})").zero_optimization.stage, 1);
  EXPECT_EQ(parse_ok(R"({"zero_optimization": false})").zero_optimization.stage, 0);
  EXPECT_EQ(parse_ok(R"({"zero_optimization": {"stage": 0}})").zero_optimization.stage, 0);
}

// HF-Trainer configs carry "auto", which the Trainer replaces; zinf has no
// Trainer, so it says so instead of guessing.
TEST(ConfigTest, AutoIsAnErrorSayingWhoResolvesIt) {
  expect_error(R"({"train_batch_size": "auto"})",
               "train_batch_size: \"auto\" is resolved by the HF Trainer");
  expect_error(R"({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})",
               "optimizer.params.lr: \"auto\"");
  expect_error(R"({"zero_optimization": {"stage3_prefetch_bucket_size": "auto"}})",
               "zero_optimization.stage3_prefetch_bucket_size: \"auto\"");
  EXPECT_EQ(parse_ok(R"({"zinf": {"device": "auto"}})").zinf.device, "auto");  // zinf's own value
}

// Each optimizer type takes its DeepSpeed CPU optimizer's params and defaults.
TEST(ConfigTest, OptimizerParamsAndDefaultsFollowTheType) {
  Config adagrad = parse_ok(R"({"optimizer": {"type": "Adagrad"}})");
  EXPECT_DOUBLE_EQ(adagrad.optimizer->lr, 1e-2);
  EXPECT_DOUBLE_EQ(adagrad.optimizer->eps, 1e-10);
  expect_error(R"({"optimizer": {"type": "Adagrad", "params": {"betas": [0.9, 0.99]}}})",
               "optimizer.params.betas: unknown key");
  expect_error(R"({"optimizer": {"type": "Lion", "params": {"eps": 1e-8}}})",
               "optimizer.params.eps: unknown key");
  expect_error(R"({"optimizer": {"type": "Lion", "params": {"adam_w_mode": true}}})",
               "optimizer.params.adam_w_mode: unknown key");
  Config adam = parse_ok(R"({"optimizer": {"type": "Adam", "params": {"torch_adam": true}}})");
  EXPECT_TRUE(adam.optimizer->adam_w_mode) << "DeepSpeed's adam_w_mode defaults to true";
  EXPECT_TRUE(adam.optimizer->torch_adam);
  Config l2 = parse_ok(R"({"optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}})");
  EXPECT_FALSE(l2.optimizer->adam_w_mode);
  Config adamw = parse_ok(R"({"optimizer": {"type": "AdamW", "params": {"adam_w_mode": false}}})");
  EXPECT_TRUE(adamw.optimizer->adam_w_mode) << "type AdamW is decoupled whatever adam_w_mode says";
  expect_error(R"({"optimizer": {"type": "Adam", "params": {"max_grad_norm": 1.0}}})",
               "optimizer.params.max_grad_norm: is not an optimizer parameter");
  expect_error(R"({"optimizer": {"type": "Adam", "params": {"amsgrad": true}}})",
               "optimizer.params.amsgrad");
  for (const char* type : {"Adam", "AdamW", "Adagrad", "Lion"}) {
    Config c = parse_ok(std::string(R"({"optimizer": {"type": ")") + type + R"("}})");
    Config again = parse_ok(to_json(c));
    EXPECT_EQ(to_json(again), to_json(c)) << type;
  }
}

// DeepSpeed's checkpointing.configure() checks, and zinf's listing of the
// keys it does not act on.
TEST(ConfigTest, ActivationCheckpointingKeysAreCheckedAsInDeepSpeed) {
  Config c = parse_ok(R"({"activation_checkpointing": {"partition_activations": true,
    "contiguous_memory_optimization": true, "number_checkpoints": 24, "profile": false}})");
  EXPECT_EQ(c.ignored.size(), 4u);
  expect_error(R"({"activation_checkpointing": {"contiguous_memory_optimization": true,
                                                "number_checkpoints": 4}})",
               "activation_checkpointing.contiguous_memory_optimization: needs "
               "partition_activations");
  expect_error(R"({"activation_checkpointing": {"contiguous_memory_optimization": true,
                                                "partition_activations": true}})",
               "activation_checkpointing.contiguous_memory_optimization: needs number_checkpoints");
  expect_error(R"({"activation_checkpointing": {"number_checkpoints": "all"}})",
               "activation_checkpointing.number_checkpoints: expected an integer");
  EXPECT_TRUE(
      parse_ok(R"({"activation_checkpointing": {"number_checkpoints": null}})").ignored.size() ==
      1);
}

TEST(ConfigTest, PartialOffloadIsRefused) {
  expect_error(R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu",
                                                                            "ratio": 0.3}}})",
               "offload_optimizer.ratio: partial optimizer offload is not implemented");
  EXPECT_TRUE(
      parse_ok(R"({"zero_optimization": {"offload_optimizer": {"ratio": 1.0}}})").ignored.empty());
}

TEST(ConfigTest, SyntaxErrorsNameTheFile) {
  auto cfg = Config::from_string("{\"aio\": {", "broken.json");
  ASSERT_FALSE(cfg.is_ok());
  EXPECT_NE(cfg.status().message().find("broken.json: invalid JSON"), std::string::npos);
}

// Found by config_fuzz: nlohmann throws out_of_range, not parse_error, for
// a number too large for a double, and it escaped from_string.
TEST(ConfigTest, NumbersNoDoubleHoldsAreSyntaxErrors) {
  auto cfg = Config::from_string(R"({"gradient_clipping": 8e888})", "huge.json");
  ASSERT_FALSE(cfg.is_ok());
  EXPECT_EQ(cfg.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cfg.status().message().find("huge.json: invalid JSON"), std::string::npos)
      << cfg.status().message();
}

// A value nested a million levels deep overflowed the stack when an error
// message described it (nlohmann's dump recurses per level).
TEST(ConfigTest, DeepNestingIsASyntaxError) {
  const auto nested = [](int depth) {
    return R"({"train_batch_size": )" + std::string(depth, '[') + std::string(depth, ']') + "}";
  };
  auto cfg = Config::from_string(nested(1000000), "deep.json");
  ASSERT_FALSE(cfg.is_ok());
  EXPECT_NE(cfg.status().message().find("deep.json: invalid JSON: nested deeper than"),
            std::string::npos)
      << cfg.status().message();
  // Within the bound, the usual error naming the key.
  expect_error(nested(100), "train_batch_size: expected an integer");
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
    "zinf": {"device": "cpu", "device_budget": 1e9, "nvme_paths": ["./q"],
             "trace_path": "steps.json"}
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
  EXPECT_EQ(again.zinf.trace_path, "steps.json");
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

// Configs as DeepSpeed's docs and tests write them (tests/common/
// deepspeed_configs): each loads and resolves its batch, or fails with the
// key its first line names.
TEST(ConfigTest, DeepSpeedCorpus) {
  std::size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(ZINF_CORPUS_DIR)) {
    if (entry.path().extension() != ".json") continue;
    ++n;
    std::ifstream in(entry.path());
    std::string first;
    std::getline(in, first);
    const std::string tag = "// expect: ";
    ASSERT_EQ(first.rfind(tag, 0), 0u) << entry.path() << " must open with \"" << tag << "\"";
    const std::string expect = first.substr(tag.size());
    auto c = Config::from_file(entry.path());
    Status s = c.is_ok() ? c->resolve_batch(1) : c.status();
    if (expect == "ok") {
      EXPECT_TRUE(s.is_ok()) << entry.path() << ": " << s.message();
      continue;
    }
    ASSERT_EQ(expect.rfind("error ", 0), 0u) << entry.path() << ": " << first;
    const std::string key = expect.substr(6);
    EXPECT_FALSE(s.is_ok()) << entry.path() << " loaded";
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << entry.path();
    EXPECT_NE(s.message().find(entry.path().string() + ": " + key), std::string::npos)
        << entry.path() << ": " << s.message();
  }
  EXPECT_GE(n, 20u);
}

}  // namespace
}  // namespace zinf
