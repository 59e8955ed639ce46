// Everything a program needs to run a model: the model file, its tokenizer and chat template, and
// the base weights on the chosen device. Shared by cst_train, cst_eval and cst_generate.
#pragma once
#include <memory>
#include <string>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/lora.h"
#include "model/model_file.h"
#include "model/weights.h"

namespace cst {

// "auto" picks CUDA when this build has it and a GPU is visible, else the CPU.
Device resolve_device(const std::string& name);
// The backend's dtype: f32 on the CPU reference backend, bf16 on CUDA.
DType backend_dtype(Device device);

struct ModelSession {
  std::unique_ptr<ModelFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  ChatTemplate chat_template;
  Device device = Device::cpu;
  std::unique_ptr<ModelWeights> weights;

  const ModelConfig& config() const { return file->config(); }
  // A trained PEFT adapter directory's LoRA weights on this session's device and dtype; an empty
  // directory name gives none (the base model alone).
  std::unique_ptr<LoraAdapter> load_adapter(const std::string& adapter_dir) const;
};

// chat_template_name empty: recognise the tokenizer's template; chat_template_date as
// parse_chat_template_date reads it. Checks that the tokenizer fits the model's vocabulary.
// load_weights false: only the tokenizer side (dry runs).
ModelSession open_model_session(const std::string& model_path, const std::string& device_name,
                                const std::string& chat_template_name, const std::string& chat_template_date,
                                bool load_weights);

}  // namespace cst
