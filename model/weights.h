// The frozen base weights of a Llama/Mistral model, on one device, in the backend's dtype
// (f32 on the CPU reference backend, bf16 on CUDA).
#pragma once
#include <vector>

#include "kernels/tensor.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/model_file.h"

namespace cst {

struct LayerWeights {
  Tensor input_norm;                 // (C)
  Tensor q, k, v, o;                 // (H*D, C), (KVH*D, C), (KVH*D, C), (C, H*D)
  Tensor post_attention_norm;        // (C)
  Tensor gate, up, down;             // (F, C), (F, C), (C, F)
};

class ModelWeights {
 public:
  // Loads every tensor by its HF name, converting to `dtype` on `device`; checks every shape
  // against the config and names the tensor when one is missing or mis-shaped.
  ModelWeights(const ModelFile& model, Device device, DType dtype);

  Tensor embed_tokens;               // (V, C)
  std::vector<LayerWeights> layers;  // L
  Tensor final_norm;                 // (C)
  Tensor lm_head;                    // (V, C); the embedding itself when tied

  const Tensor& projection(int layer, Projection projection) const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

 private:
  Tensor load(const ModelFile& model, const std::string& name, std::initializer_list<int64_t> shape);
  Device device_;
  DType dtype_;
  std::vector<OwnedTensor> storage_;
};

}  // namespace cst
