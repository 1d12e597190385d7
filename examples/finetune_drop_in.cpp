// A small real training program that uses zinf::OffloadAdamW exactly where it
// would use torch::optim::AdamW: a character-level model learns to predict
// the next character of a text file.
//
//   finetune_drop_in [--optimizer torch|zinf-cpu|zinf-nvme] [--device auto|cpu|cuda]
//                    [--steps N] [--nvme-path DIR] [--config ds.json] [--data FILE]
//                    [--lr X]
//
// The model trains on the GPU when there is one (--device auto) and on the CPU
// otherwise. It prints the loss curve, the time per step and the bytes held on
// each tier: the parameters on the device, the optimizer state in host memory
// or on NVMe.
#include <stdlib.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <zinf/zinf.hpp>

namespace {

constexpr int kContext = 24;
constexpr int kEmbed = 48;
constexpr int kHidden = 512;
constexpr int kBatch = 64;

struct CharModel : torch::nn::Module {
  explicit CharModel(int vocab) {
    embed = register_module("embed", torch::nn::Embedding(vocab, kEmbed));
    fc1 = register_module("fc1", torch::nn::Linear(kContext * kEmbed, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kHidden));
    out = register_module("out", torch::nn::Linear(kHidden, vocab));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = embed(x).flatten(1);
    h = torch::gelu(fc1(h));
    h = torch::gelu(fc2(h)) + h;
    return out(h);
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
};

struct Args {
  std::string optimizer = "zinf-nvme";
  std::string device = "auto";
  int steps = 200;
  std::string nvme_path;
  std::string config;
  std::string data = ZINF_EXAMPLE_DATA;
  double lr = 2e-3;
};

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "finetune_drop_in: " << why
            << "\nusage: finetune_drop_in [--optimizer torch|zinf-cpu|zinf-nvme] "
               "[--device auto|cpu|cuda] [--steps N] [--nvme-path DIR] [--config ds.json] "
               "[--data FILE] [--lr X]\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage_error(flag + " needs a value");
    const std::string value = argv[++i];
    try {
      if (flag == "--optimizer") {
        a.optimizer = value;
      } else if (flag == "--device") {
        a.device = value;
      } else if (flag == "--steps") {
        a.steps = std::stoi(value);
      } else if (flag == "--nvme-path") {
        a.nvme_path = value;
      } else if (flag == "--config") {
        a.config = value;
      } else if (flag == "--data") {
        a.data = value;
      } else if (flag == "--lr") {
        a.lr = std::stod(value);
      } else {
        usage_error("unknown flag " + flag);
      }
    } catch (const std::logic_error&) {
      usage_error(flag + ": not a number: " + value);
    }
  }
  if (a.optimizer != "torch" && a.optimizer != "zinf-cpu" && a.optimizer != "zinf-nvme") {
    usage_error("--optimizer must be torch, zinf-cpu or zinf-nvme");
  }
  if (a.device == "auto") a.device = torch::cuda::is_available() ? "cuda" : "cpu";
  if (a.device != "cpu" && a.device != "cuda") usage_error("--device must be auto, cpu or cuda");
  if (a.device == "cuda" && !torch::cuda::is_available()) {
    usage_error("--device cuda: no CUDA device, or LibTorch built without CUDA");
  }
  if (a.steps < 1) usage_error("--steps must be >= 1");
  return a;
}

std::string mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// The default NVMe directory: under the current one, removed at exit.
struct ScratchDir {
  std::filesystem::path path;
  ~ScratchDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

int run(const Args& args);

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::cerr << "finetune_drop_in: error: " << e.what() << "\n";
    return 1;
  }
}

int run(const Args& args) {
  std::ifstream in(args.data);
  if (!in) usage_error("cannot read --data " + args.data);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (text.size() < 2 * kContext) usage_error("--data " + args.data + " is too short");
  std::map<char, int> index;
  for (char c : text) index.emplace(c, 0);
  int vocab = 0;
  for (auto& [c, i] : index) i = vocab++;
  auto encoded = torch::empty({static_cast<std::int64_t>(text.size())}, torch::kLong);
  for (std::size_t i = 0; i < text.size(); ++i)
    encoded[static_cast<std::int64_t>(i)] = index[text[i]];

  torch::manual_seed(0);
  CharModel model(vocab);
  const torch::Device device(args.device == "cuda" ? torch::kCUDA : torch::kCPU);
  model.to(device);
  std::int64_t n_params = 0;
  for (const auto& p : model.parameters()) n_params += p.numel();

  ScratchDir scratch;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  const auto adamw = torch::optim::AdamWOptions(args.lr).weight_decay(0.01);
  if (args.optimizer == "torch") {
    optimizer = std::make_unique<torch::optim::AdamW>(model.parameters(), adamw);
  } else {
    zinf::OffloadOptions offload = args.config.empty()
                                       ? zinf::OffloadOptions()
                                       : zinf::OffloadOptions::from_json_file(args.config);
    offload.device(args.optimizer == "zinf-nvme" ? "nvme" : "cpu");
    if (!args.nvme_path.empty()) offload.nvme_path(args.nvme_path);
    if (!offload.nvme_path().empty()) std::filesystem::create_directories(offload.nvme_path());
    if (offload.device() == "nvme" && offload.nvme_path().empty()) {
      std::string pattern = (std::filesystem::current_path() / "zinf-example-XXXXXX").string();
      if (::mkdtemp(pattern.data()) == nullptr)
        usage_error("cannot create a scratch directory here");
      scratch.path = pattern;
      offload.nvme_path(pattern);
    }
    if (args.config.empty()) offload.sub_group_size(200000).max_grad_norm(1.0);
    optimizer = std::make_unique<zinf::OffloadAdamW>(model.parameters(), adamw, offload);
  }
  std::cout << "finetune_drop_in: " << n_params << " parameters, vocabulary " << vocab
            << ", optimizer " << args.optimizer << ", model on " << args.device << "\n";

  const auto windows = static_cast<std::int64_t>(text.size()) - kContext - 1;
  double total_ms = 0;
  for (int step = 1; step <= args.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    auto starts = torch::randint(windows, {kBatch}, torch::kLong);
    auto offsets = torch::arange(kContext + 1, torch::kLong);
    auto idx = starts.unsqueeze(1) + offsets.unsqueeze(0);
    auto batch = encoded.index({idx}).to(device);
    auto x = batch.narrow(1, 0, kContext), y = batch.select(1, kContext);
    optimizer->zero_grad();
    auto loss = torch::cross_entropy_loss(model.forward(x), y);
    loss.backward();
    optimizer->step();
    if (device.is_cuda()) torch::cuda::synchronize();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    total_ms += ms;
    if (step == 1 || step % 20 == 0 || step == args.steps) {
      std::printf("step %4d  loss %.4f  %.1f ms/step\n", step, loss.item<double>(), ms);
      std::fflush(stdout);
    }
  }
  std::printf("average %.1f ms/step over %d steps\n", total_ms / args.steps, args.steps);
  std::cout << "parameters: " << args.device << " " << mib(n_params * sizeof(float)) << "\n";
  if (auto* z = dynamic_cast<zinf::OffloadOptimizer*>(optimizer.get())) {
    const zinf::TierBytes b = z->tier_bytes();
    const zinf::StepStats& s = z->last_step_stats();
    std::cout << "optimizer state: host " << mib(b.host) << ", nvme " << mib(b.nvme)
              << " (last step: read " << mib(s.bytes_read) << ", wrote " << mib(s.bytes_written)
              << ", " << s.sub_groups << " sub-groups)\n";
  } else {
    std::uint64_t bytes = 0;
    for (const auto& [key, state] : optimizer->state()) {
      const auto& st = static_cast<const torch::optim::AdamWParamState&>(*state);
      bytes += (st.exp_avg().numel() + st.exp_avg_sq().numel()) * sizeof(float);
    }
    std::cout << "optimizer state: " << args.device << " " << mib(bytes)
              << " (LibTorch keeps it beside the parameters)\n";
  }
  return 0;
}
