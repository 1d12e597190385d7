// A GPT written as plain LibTorch modules: token and position embeddings, N
// pre-norm transformer blocks (causal self-attention and a GELU MLP), a final
// layer norm and an LM head, tied to the token embedding or not.
//
// The one zinf-specific line is the type of `blocks`: each block is a
// zinf::Unit<Block>, so under a zinf::Engine its parameters are gathered onto
// the device just before it runs and released right after. Outside an
// Engine the units are the plain blocks, which is how the reference run
// (train_gpt --reference torch) and the tests train the same model with
// LibTorch alone. The untied head is a unit of its own (it is as large as
// the embedding); the embeddings and the final norm form the root unit.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>
#include <zinf/offload/unit.hpp>

namespace gpt {

struct Options {
  int vocab = 256;  // bytes
  int layers = 4;
  int hidden = 128;
  int heads = 4;
  int seq = 64;
  bool tied = false;  // the LM head reuses the token embedding

  // The parameters the model these options builds has, without building
  // it (for a planner such as zinf-plan): the root's (outside every unit),
  // then each unit's, in the order the modules list them.
  struct Param {
    std::string name;
    std::vector<std::int64_t> shape;
  };
  struct Unit {
    std::string name;
    std::vector<Param> params;
  };
  struct Shapes {
    std::vector<Param> root;
    std::vector<Unit> units;
  };
  Shapes shapes() const {
    const std::int64_t h = hidden, v = vocab;
    auto linear = [&](const std::string& name, std::int64_t in, std::int64_t out) {
      return std::vector<Param>{{name + ".weight", {out, in}}, {name + ".bias", {out}}};
    };
    auto norm = [&](const std::string& name) {
      return std::vector<Param>{{name + ".weight", {h}}, {name + ".bias", {h}}};
    };
    Shapes s;
    s.root = {{"wte.weight", {v, h}}, {"wpe.weight", {std::int64_t{seq}, h}}};
    for (auto& p : norm("ln_f")) s.root.push_back(p);
    for (int i = 0; i < layers; ++i) {
      Unit block{"h" + std::to_string(i), {}};
      for (const auto& part : {norm("ln1"), linear("attn.qkv", h, 3 * h), linear("attn.proj", h, h),
                               norm("ln2"), linear("fc", h, 4 * h), linear("out", 4 * h, h)})
        block.params.insert(block.params.end(), part.begin(), part.end());
      s.units.push_back(std::move(block));
    }
    if (!tied) s.units.push_back({"head", {{"lm.weight", {v, h}}}});
    return s;
  }

  std::int64_t parameters() const {
    const Shapes s = shapes();
    std::int64_t n = 0;
    auto count = [&](const std::vector<Param>& params) {
      for (const Param& p : params) {
        std::int64_t e = 1;
        for (std::int64_t d : p.shape) e *= d;
        n += e;
      }
    };
    count(s.root);
    for (const Unit& u : s.units) count(u.params);
    return n;
  }
};

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const Options& o) : heads(o.heads) {
    qkv = register_module("qkv", torch::nn::Linear(o.hidden, 3 * o.hidden));
    proj = register_module("proj", torch::nn::Linear(o.hidden, o.hidden));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const auto b = x.size(0), t = x.size(1), c = x.size(2);
    auto parts = qkv(x).view({b, t, 3, heads, c / heads}).permute({2, 0, 3, 1, 4});
    auto q = parts[0], k = parts[1], v = parts[2];  // [b, heads, t, c / heads]
    auto att = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(c / heads));
    auto mask = torch::ones({t, t}, torch::dtype(torch::kBool).device(x.device())).triu(1);
    att = torch::softmax(att.masked_fill(mask, -INFINITY), -1);
    auto y = torch::matmul(att, v).transpose(1, 2).reshape({b, t, c});
    return proj(y);
  }
  std::int64_t heads;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(Attention);

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const Options& o) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden})));
    attn = register_module("attn", Attention(o));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden})));
    fc = register_module("fc", torch::nn::Linear(o.hidden, 4 * o.hidden));
    out = register_module("out", torch::nn::Linear(4 * o.hidden, o.hidden));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x + attn(ln1(x));
    return x + out(torch::gelu(fc(ln2(x))));
  }
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  Attention attn{nullptr};
  torch::nn::Linear fc{nullptr}, out{nullptr};
};
TORCH_MODULE(Block);

struct HeadImpl : torch::nn::Module {
  explicit HeadImpl(const Options& o) {
    lm = register_module(
        "lm", torch::nn::Linear(torch::nn::LinearOptions(o.hidden, o.vocab).bias(false)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lm(x); }
  torch::nn::Linear lm{nullptr};
};
TORCH_MODULE(Head);

struct GPTImpl : torch::nn::Module {
  explicit GPTImpl(const Options& o) : options(o) {
    wte = register_module("wte", torch::nn::Embedding(o.vocab, o.hidden));
    wpe = register_module("wpe", torch::nn::Embedding(o.seq, o.hidden));
    for (int i = 0; i < o.layers; ++i)
      blocks.push_back(register_module("h" + std::to_string(i), zinf::Unit<Block>(o)));
    ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden})));
    if (!o.tied) head = register_module("head", zinf::Unit<Head>(o));
  }
  // idx: [batch, seq] token ids; returns logits [batch, seq, vocab].
  torch::Tensor forward(const torch::Tensor& idx) {
    auto pos = torch::arange(idx.size(1), torch::dtype(torch::kLong).device(idx.device()));
    auto x = wte(idx) + wpe(pos);
    for (auto& block : blocks) x = block(x);
    x = ln_f(x);
    return options.tied ? torch::matmul(x, wte->weight.t()) : head(x);
  }
  Options options;
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  std::vector<zinf::Unit<Block>> blocks;
  torch::nn::LayerNorm ln_f{nullptr};
  zinf::Unit<Head> head{nullptr};
};
TORCH_MODULE(GPT);

// The next-token loss of `logits` [b, t, vocab] against `targets` [b, t].
inline torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat), targets.reshape({-1}));
}

// Byte-level batches from a text: batch `k` of a run seeded with `seed` is
// always the same `batch` windows of seq + 1 bytes.
class Batches {
 public:
  Batches(std::string text, int batch, int seq, std::uint64_t seed)
      : text_(std::move(text)), batch_(batch), seq_(seq), seed_(seed) {}
  // (inputs, targets), both [batch, seq] int64, on the CPU.
  std::pair<torch::Tensor, torch::Tensor> get(std::uint64_t k) const {
    torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(seed_ * 1000003 + k);
    const auto limit = static_cast<std::int64_t>(text_.size()) - seq_ - 1;
    auto starts = torch::randint(limit, {batch_}, gen, torch::kLong);
    auto data = torch::empty({batch_, seq_ + 1}, torch::kLong);
    auto acc = data.accessor<std::int64_t, 2>();
    auto st = starts.accessor<std::int64_t, 1>();
    for (int i = 0; i < batch_; ++i)
      for (int j = 0; j <= seq_; ++j)
        acc[i][j] = static_cast<unsigned char>(text_[static_cast<std::size_t>(st[i] + j)]);
    return {data.narrow(1, 0, seq_).clone(), data.narrow(1, 1, seq_).clone()};
  }

 private:
  std::string text_;
  int batch_, seq_;
  std::uint64_t seed_;
};

}  // namespace gpt
