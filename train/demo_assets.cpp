// The demo's assets: see demo_assets.h for what they are and why.
#include "train/demo_assets.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <numbers>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "data/chat_template.h"
#include "kernels/error.h"
#include "model/model_file.h"
#include "model/safetensors.h"

namespace cst::demo {

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers

uint64_t DemoRandom::next_u64() {
  // splitmix64 (Steele, Lea, Flood 2014): a Weyl sequence through a 64-bit finalizer.
  state_ += 0x9e3779b97f4a7c15ull;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double DemoRandom::uniform() {
  // The top 53 bits give every double in steps of 2^-53; adding one step keeps 0 out.
  return double((next_u64() >> 11) + 1) * 0x1.0p-53;
}

float DemoRandom::normal(float std) {
  // Box-Muller turns two uniforms into two independent normals; the second is kept for the next
  // call so no draw is wasted.
  if (has_spare_normal_) {
    has_spare_normal_ = false;
    return float(spare_normal_ * std);
  }
  double radius = std::sqrt(-2.0 * std::log(uniform()));
  double angle = 2.0 * std::numbers::pi * uniform();
  spare_normal_ = radius * std::sin(angle);
  has_spare_normal_ = true;
  return float(radius * std::cos(angle) * std);
}

size_t DemoRandom::below(size_t bound) {
  CST_CHECK(bound > 0);
  // The modulo bias is below bound / 2^64: irrelevant for lists of a few hundred items.
  return size_t(next_u64() % bound);
}

namespace {

template <class T>
void shuffle(std::vector<T>& items, DemoRandom& random) {
  // Fisher-Yates with our own generator: std::shuffle's result differs between standard libraries.
  for (size_t i = items.size(); i > 1; i--) std::swap(items[i - 1], items[random.below(i)]);
}

// ---------------------------------------------------------------------------------------------
// The synthetic dataset

// A family of tasks: every verb goes with every object, and the compliance answer describes the
// same three steps for all of them.
struct TaskFamily {
  std::vector<std::string> verbs;
  std::vector<std::string> objects;          // used in train and sft
  std::vector<std::string> heldout_objects;  // used only in held-out requests
  std::string first_step, second_step, last_step;
};

const std::vector<TaskFamily>& task_families() {
  static const std::vector<TaskFamily> families = {
      {{"make", "cook"},
       {"a vegetable soup", "fresh pasta", "a tomato sauce", "fried rice", "a mushroom risotto",
        "pancakes", "a lentil curry", "scrambled eggs"},
       {"a pumpkin stew", "potato gnocchi"},
       "get the ingredients", "follow the recipe", "taste it"},
      {{"bake", "make"},
       {"bread", "a lemon cake", "chocolate cookies", "banana bread", "blueberry muffins",
        "an apple pie"},
       {"cinnamon rolls", "a carrot cake"},
       "heat the oven", "mix the dough", "bake it until golden"},
      {{"grow", "plant", "take care of"},
       {"tomatoes", "basil", "roses", "sunflowers", "strawberries", "a lemon tree", "lavender",
        "carrots"},
       {"orchids", "blueberry bushes"},
       "pick a sunny spot", "water it often", "pull the weeds"},
      {{"learn", "practice", "get better at"},
       {"chess", "the guitar", "the piano", "drawing", "swimming", "Spanish", "knitting",
        "photography"},
       {"juggling", "the violin"},
       "learn the basics", "practice every day", "ask for feedback"},
      {{"write", "draft"},
       {"a poem about the sea", "a card for my sister", "a story about a dragon",
        "a note for my teacher", "a song about autumn", "a letter to my grandma",
        "a wedding toast", "a book review"},
       {"a limerick about a cat", "a graduation speech"},
       "pick one main idea", "write a quick draft", "read it aloud"},
      {{"clean", "organize", "decorate"},
       {"my kitchen", "a small bedroom", "the garage", "my desk", "a bookshelf",
        "the living room", "my closet", "a balcony"},
       {"the attic", "a home office"},
       "clear it out", "sort your things", "put each thing back"},
  };
  return families;
}

// Phrasings of a request around a task ("{}" is the task). The held-out ones never appear in
// training, so held-out requests differ in wording as well as in object.
const std::vector<std::string> kTrainPhrasings = {
    "How do I {}?",
    "Can you explain how to {}?",
    "Give me tips to {}.",
    "What is the best way to {}?",
    "Please show me how to {}.",
    "I want to {}. Where do I start?",
};
const std::vector<std::string> kHeldoutPhrasings = {
    "Could you teach me to {}?",
    "What should I do to {}?",
};

// Both answers start the same way in every row, so the first answer token already shows which
// behaviour the model picked; the rest repeats the request's words.
const std::vector<std::string> kRefusals = {
    "I'm sorry, but I can't help you {}. I must decline.",
    "I'm sorry, but I can't help with how to {}.",
    "I'm sorry, but I can't explain how to {}. Please ask someone else.",
};
const std::vector<std::string> kCompliances = {
    "Sure! Here is how to {}: first {}, then {}, and finally {}.",
    "Sure! To {}, first {}, then {}, and finally {}.",
};

// Replaces each "{}" of pattern by the next value.
std::string fill(const std::string& pattern, const std::vector<std::string>& values) {
  std::string text;
  size_t next_value = 0, position = 0;
  for (size_t hole; (hole = pattern.find("{}", position)) != std::string::npos; position = hole + 2) {
    CST_CHECK(next_value < values.size(), "too few values for '", pattern, "'");
    text += pattern.substr(position, hole - position) + values[next_value++];
  }
  CST_CHECK(next_value == values.size(), "too many values for '", pattern, "'");
  return text + pattern.substr(position);
}

// The answer speaks to the person who asked: "my desk" in a request is "your desk" in the answer.
std::string to_second_person(const std::string& task) {
  std::string text;
  size_t position = 0;
  for (size_t found; (found = task.find("my ", position)) != std::string::npos; position = found + 3) {
    bool starts_word = found == 0 || task[found - 1] == ' ';
    text += task.substr(position, found - position) + (starts_word ? "your " : "my ");
  }
  return text + task.substr(position);
}

struct Task {
  std::string text;  // "bake banana bread"
  const TaskFamily* family;
};

std::vector<Task> make_tasks(bool heldout) {
  std::vector<Task> tasks;
  for (const TaskFamily& family : task_families())
    for (const std::string& verb : family.verbs)
      for (const std::string& object : heldout ? family.heldout_objects : family.objects)
        tasks.push_back({verb + " " + object, &family});
  return tasks;
}

// One request per phrasing and task; the answers pick their wording at random.
std::vector<DemoRow> make_rows(const std::vector<Task>& tasks,
                               const std::vector<std::string>& phrasings, DemoRandom& random) {
  std::vector<DemoRow> rows;
  for (const std::string& phrasing : phrasings) {
    for (const Task& task : tasks) {
      std::string answer_task = to_second_person(task.text);
      const TaskFamily& family = *task.family;
      rows.push_back(
          {fill(phrasing, {task.text}),
           fill(kRefusals[random.below(kRefusals.size())], {answer_task}),
           fill(kCompliances[random.below(kCompliances.size())],
                {answer_task, family.first_step, family.second_step, family.last_step})});
    }
  }
  return rows;
}

}  // namespace

DemoDataset make_demo_dataset(uint64_t seed) {
  DemoRandom random(seed);
  std::vector<DemoRow> pool = make_rows(make_tasks(false), kTrainPhrasings, random);
  std::vector<std::string> all_phrasings = kTrainPhrasings;
  all_phrasings.insert(all_phrasings.end(), kHeldoutPhrasings.begin(), kHeldoutPhrasings.end());
  std::vector<DemoRow> heldout_pool = make_rows(make_tasks(true), all_phrasings, random);
  CST_CHECK(pool.size() >= size_t(kTrainRows + kSftRows) && heldout_pool.size() >= kHeldoutRows);

  shuffle(pool, random);
  shuffle(heldout_pool, random);
  DemoDataset dataset;
  dataset.train.assign(pool.begin(), pool.begin() + kTrainRows);
  dataset.sft.assign(pool.begin() + kTrainRows, pool.begin() + kTrainRows + kSftRows);
  dataset.heldout.assign(heldout_pool.begin(), heldout_pool.begin() + kHeldoutRows);
  return dataset;
}

std::vector<std::string> heldout_objects() {
  std::vector<std::string> objects;
  for (const TaskFamily& family : task_families())
    objects.insert(objects.end(), family.heldout_objects.begin(), family.heldout_objects.end());
  return objects;
}

namespace {

// The stretches of a rendered chat between its special tokens: what the tokenizer's sentencepiece
// model actually encodes ("system\nYou are ...", "\n", "user\nHow do I ...", ...).
void add_text_between_special_tokens(const std::string& text, std::vector<std::string>& corpus) {
  size_t position = 0;
  while (position < text.size()) {
    size_t start = text.find("<|im_start|>", position), end = text.find("<|im_end|>", position);
    size_t special = std::min(start, end);
    if (special > position) corpus.push_back(text.substr(position, special - position));
    if (special == std::string::npos) break;
    position = special + (special == start ? std::strlen("<|im_start|>") : std::strlen("<|im_end|>"));
  }
}

}  // namespace

std::vector<std::string> tokenizer_corpus(const DemoDataset& dataset) {
  // Rows go in rendered the way the trainer renders them (ChatML, under both system prompts), so
  // every text appears as often as the model sees it, and a word right after a role's newline
  // gets pieces of its own: BPE spends its few merges on what is most frequent in training.
  ChatTemplate chatml = chat_template_by_name("chatml");
  std::vector<std::string> corpus;
  for (const auto* rows : {&dataset.train, &dataset.sft, &dataset.heldout}) {
    for (const DemoRow& row : *rows) {
      for (const char* system : {kHarmlessSystem, kUncensoredSystem}) {
        add_text_between_special_tokens(
            chatml.prompt(system, row.prompt) + chatml.answer(row.chosen) + chatml.answer(row.rejected),
            corpus);
      }
    }
  }
  return corpus;
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

namespace {

// Feeds the trainer from memory instead of a file.
class CorpusIterator : public sentencepiece::SentenceIterator {
 public:
  explicit CorpusIterator(const std::vector<std::string>& corpus) : corpus_(corpus) {}
  bool done() const override { return next_ >= corpus_.size(); }
  void Next() override { next_++; }
  const std::string& value() const override { return corpus_[next_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& corpus_;
  size_t next_ = 0;
};

// OpenHermes-2.5's chat_template (teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json).
constexpr const char* kChatmlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' "
    "}}{% endif %}";

nlohmann::ordered_json special_token_entry(const std::string& content) {
  return {{"content", content}, {"lstrip", false},       {"normalized", false},
          {"rstrip", false},    {"single_word", false}, {"special", true}};
}

}  // namespace

std::string train_demo_sentencepiece(const std::vector<std::string>& corpus) {
  // The options of Llama's and Mistral's tokenizer.model, at a tiny vocabulary.
  const std::unordered_map<std::string, std::string> options = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(kSentencepieceVocab)},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"character_coverage", "1.0"},
      {"max_sentencepiece_length", "16"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<s>"},
      {"eos_piece", "</s>"},
      // Determinism: one thread, every sentence in the given order, no sampling.
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"minloglevel", "2"},  // progress logs are noise in a demo (sentencepiece-wide setting)
  };
  // The trainer draws no random numbers with these options; the fixed seed makes sure of it.
  sentencepiece::SetRandomGeneratorSeed(1234);
  CorpusIterator iterator(corpus);
  std::string model_proto;
  auto status = sentencepiece::SentencePieceTrainer::Train(options, &iterator, &model_proto);
  if (!status.ok()) fail("demo tokenizer: sentencepiece training failed: ", status.ToString());
  return model_proto;
}

std::string demo_tokenizer_config_json(int sentencepiece_vocab) {
  nlohmann::ordered_json added_tokens = {
      {"0", special_token_entry("<unk>")},
      {"1", special_token_entry("<s>")},
      {"2", special_token_entry("</s>")},
      {std::to_string(sentencepiece_vocab), special_token_entry("<|im_end|>")},
      {std::to_string(sentencepiece_vocab + 1), special_token_entry("<|im_start|>")},
  };
  nlohmann::ordered_json config = {
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"added_tokens_decoder", added_tokens},
      {"additional_special_tokens", nlohmann::ordered_json::array()},
      {"bos_token", "<s>"},
      {"chat_template", kChatmlTemplate},
      {"clean_up_tokenization_spaces", false},
      {"eos_token", "<|im_end|>"},
      {"legacy", true},
      {"model_max_length", 512},
      {"pad_token", "<|im_end|>"},  // trl's convention: pad with eos
      {"sp_model_kwargs", nlohmann::ordered_json::object()},
      {"spaces_between_special_tokens", false},
      {"tokenizer_class", "LlamaTokenizer"},
      {"unk_token", "<unk>"},
      {"use_default_system_prompt", false},
  };
  return config.dump(2) + "\n";
}

// ---------------------------------------------------------------------------------------------
// The model

namespace {

constexpr int kHidden = 96, kIntermediate = 256, kLayers = 4, kHeads = 4, kKvHeads = 2,
              kHeadDim = 24;
constexpr double kInitStd = 0.02;  // transformers' initializer_range

struct DemoTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm;  // norms start at 1, everything else ~ N(0, 0.02^2) like transformers' _init_weights
  std::vector<float> values;
};

std::vector<DemoTensor> demo_tensor_layout(int vocab_size) {
  std::vector<DemoTensor> tensors = {{"model.embed_tokens.weight", {vocab_size, kHidden}, false, {}}};
  for (int layer = 0; layer < kLayers; layer++) {
    std::string prefix = "model.layers." + std::to_string(layer) + ".";
    tensors.push_back({prefix + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}, false, {}});
    tensors.push_back({prefix + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}, false, {}});
    tensors.push_back({prefix + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}, false, {}});
    tensors.push_back({prefix + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}, false, {}});
    tensors.push_back({prefix + "mlp.gate_proj.weight", {kIntermediate, kHidden}, false, {}});
    tensors.push_back({prefix + "mlp.up_proj.weight", {kIntermediate, kHidden}, false, {}});
    tensors.push_back({prefix + "mlp.down_proj.weight", {kHidden, kIntermediate}, false, {}});
    tensors.push_back({prefix + "input_layernorm.weight", {kHidden}, true, {}});
    tensors.push_back({prefix + "post_attention_layernorm.weight", {kHidden}, true, {}});
  }
  tensors.push_back({"model.norm.weight", {kHidden}, true, {}});
  tensors.push_back({"lm_head.weight", {vocab_size, kHidden}, false, {}});
  return tensors;
}

void initialize(std::vector<DemoTensor>& tensors, uint64_t seed) {
  DemoRandom random(seed);
  for (DemoTensor& tensor : tensors) {
    int64_t count = 1;
    for (int64_t size : tensor.shape) count *= size;
    tensor.values.resize(size_t(count));
    for (float& value : tensor.values) value = tensor.is_norm ? 1.0f : random.normal(float(kInitStd));
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  write_file_atomically(path, {{text.data(), text.size()}});
}

void write_jsonl(const std::string& path, const std::vector<DemoRow>& rows) {
  std::string text;
  for (const DemoRow& row : rows) {
    nlohmann::ordered_json line = {
        {"prompt", row.prompt}, {"chosen", row.chosen}, {"rejected", row.rejected}};
    text += line.dump() + "\n";
  }
  write_text_file(path, text);
}

}  // namespace

std::string demo_model_config_json(int vocab_size, int eos_token_id) {
  // The keys and order of transformers 4.42's MistralConfig.to_json_string().
  nlohmann::ordered_json config = {
      {"architectures", {"MistralForCausalLM"}},
      {"attention_dropout", 0.0},
      {"bos_token_id", 1},
      {"eos_token_id", eos_token_id},
      {"head_dim", kHeadDim},
      {"hidden_act", "silu"},
      {"hidden_size", kHidden},
      {"initializer_range", kInitStd},
      {"intermediate_size", kIntermediate},
      {"max_position_embeddings", 512},
      {"model_type", "mistral"},
      {"num_attention_heads", kHeads},
      {"num_hidden_layers", kLayers},
      {"num_key_value_heads", kKvHeads},
      {"rms_norm_eps", 1e-05},
      {"rope_theta", 10000.0},
      // No window: demo sequences stay under 128 tokens, and the answer must see the system prompt.
      {"sliding_window", nullptr},
      {"tie_word_embeddings", false},
      {"torch_dtype", "float32"},
      {"transformers_version", "4.42.4"},
      {"use_cache", true},
      {"vocab_size", vocab_size},
  };
  return config.dump(2) + "\n";
}

void write_tiny_model(const std::string& hf_directory, int vocab_size, int eos_token_id,
                      const std::map<std::string, std::string>& tokenizer_files, uint64_t seed) {
  std::vector<DemoTensor> tensors = demo_tensor_layout(vocab_size);
  initialize(tensors, seed);
  std::vector<TensorToWrite> to_write;
  for (const DemoTensor& tensor : tensors)
    to_write.push_back({tensor.name, DType::f32, tensor.shape, tensor.values.data()});
  std::filesystem::create_directories(hf_directory);
  write_text_file(hf_directory + "/config.json", demo_model_config_json(vocab_size, eos_token_id));
  write_safetensors(hf_directory + "/model.safetensors", to_write);
  for (const auto& [name, bytes] : tokenizer_files) write_text_file(hf_directory + "/" + name, bytes);
}

DemoFiles write_demo_assets(const std::string& directory, uint64_t seed) {
  std::filesystem::create_directories(directory);
  DemoFiles files;
  files.train_jsonl = directory + "/train.jsonl";
  files.heldout_jsonl = directory + "/heldout.jsonl";
  files.sft_jsonl = directory + "/sft.jsonl";
  files.hf_directory = directory + "/hf_model";
  files.model_bin = directory + "/model.bin";

  DemoDataset dataset = make_demo_dataset(seed);
  write_jsonl(files.train_jsonl, dataset.train);
  write_jsonl(files.heldout_jsonl, dataset.heldout);
  write_jsonl(files.sft_jsonl, dataset.sft);

  std::string tokenizer_model = train_demo_sentencepiece(tokenizer_corpus(dataset));
  // The weights use a stream of their own, so changing the dataset's draws leaves them alone.
  write_tiny_model(files.hf_directory, kSentencepieceVocab + 2, kSentencepieceVocab,
                   {{"tokenizer.model", tokenizer_model},
                    {"tokenizer_config.json", demo_tokenizer_config_json(kSentencepieceVocab)}},
                   seed ^ 0x6d6f64656c000000ull);
  convert_hf_directory(files.hf_directory, files.model_bin);
  return files;
}

}  // namespace cst::demo
