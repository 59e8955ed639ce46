#include "train/model_session.h"

#include "kernels/device.h"

namespace cst {

Device resolve_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") {
    if (!cuda_available()) fail("--device cuda: no CUDA GPU is available to this build");
    return Device::cuda;
  }
  return cuda_available() ? Device::cuda : Device::cpu;
}

DType backend_dtype(Device device) { return device == Device::cpu ? DType::f32 : DType::bf16; }

ModelSession open_model_session(const std::string& model_path, const std::string& device_name,
                                const std::string& chat_template_name, const std::string& chat_template_date,
                                bool load_weights) {
  ModelSession session;
  session.file = std::make_unique<ModelFile>(model_path);
  const auto& tokenizer_files = session.file->tokenizer_files();
  if (tokenizer_files.count("tokenizer.model") == 0 && tokenizer_files.count("tokenizer.json") == 0)
    fail(model_path, ": has neither tokenizer.model nor tokenizer.json (convert the HF directory with its tokenizer files)");
  session.tokenizer = std::make_unique<Tokenizer>(session.file->tokenizer_files());
  if (session.tokenizer->vocab_size() > session.config().vocab_size)
    fail("model/tokenizer mismatch in ", model_path, ": the tokenizer has ",
         session.tokenizer->vocab_size(), " tokens but the model's vocabulary is ",
         session.config().vocab_size);
  if (!chat_template_name.empty()) {
    session.chat_template = chat_template_by_name(chat_template_name);
  } else if (!session.tokenizer->chat_template_source().empty()) {
    session.chat_template = detect_chat_template(session.tokenizer->chat_template_source());
  } else {
    fail(model_path, ": the tokenizer has no chat_template; choose one with --chat_template (",
         chat_template_name_list(), ")");
  }
  session.chat_template.today_date = parse_chat_template_date(chat_template_date);
  session.device = resolve_device(device_name);
  if (load_weights)
    session.weights = std::make_unique<ModelWeights>(*session.file, session.device, backend_dtype(session.device));
  return session;
}

std::unique_ptr<LoraAdapter> ModelSession::load_adapter(const std::string& adapter_dir) const {
  if (adapter_dir.empty()) return nullptr;
  auto adapter = std::make_unique<LoraAdapter>(config(), LoraAdapter::read_peft_config(adapter_dir), device,
                                               backend_dtype(device));
  adapter->load_peft_weights(adapter_dir);
  return adapter;
}

}  // namespace cst
