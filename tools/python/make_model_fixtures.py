#!/usr/bin/env python3
"""Golden fixtures for the model core: tiny HF models, PEFT adapters, logits, log-probs, gradients.

Rerun from the repository root (needs tools/python/requirements.txt):
    python3 tools/python/make_model_fixtures.py
Writes tests/fixtures/model/<case>/:
    hf/            config.json + model.safetensors (float32), as save_pretrained writes them
    adapter/       adapter_config.json + adapter_model.safetensors, as PEFT writes them
    golden.safetensors
        input_ids      i32 (N,)     the sequences laid end to end
        cu_seqlens     i32 (S+1,)   sequence boundaries
        loss_mask      i32 (N,)     1 where the token's log-prob enters the loss
        logits         f32 (N, V)   with the adapter
        base_logits    f32 (N, V)   adapter disabled
        logps          f32 (N,)     log softmax(logits)[next token]; 0 at each sequence's last token
        grad.<peft tensor name>     d(loss)/d(LoRA A or B), loss = sum(logps * loss_mask)
        rope_inv_freq  f32 (D/2,)   the rotary embedding's inverse frequencies (llama3 case only)
Each sequence runs through transformers separately (batch of one), so cst's packed batch is checked
against the plain per-sequence model.

The Llama 3.1-style case (RoPE type llama3) needs a transformers that knows that type (4.43 or
later; made with 4.57.6 and peft 0.11.1), so it is made apart, with that transformers installed:
    python3 tools/python/make_model_fixtures.py --llama3
which writes tests/fixtures/model/llama3_rope_scaled/ and tests/fixtures/model/rope_inverse_frequencies.json:
the inverse frequencies transformers computes for published Llama 3.1 / 3.2 RoPE settings.
"""
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "model")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    # GQA 4 heads / 2 kv heads, sliding window shorter than the sequences.
    "mistral_gqa_window": dict(
        model=MistralForCausalLM,
        config=MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=112,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             sliding_window=5, rope_theta=10000.0, rms_norm_eps=1e-5,
                             max_position_embeddings=64, tie_word_embeddings=False),
        lora=dict(r=4, lora_alpha=8, use_rslora=False),
        lengths=[13, 9, 1],
    ),
    # Llama style: no window, tied embeddings, 4 query heads per kv head, explicit head_dim, rslora.
    "llama_tied": dict(
        model=LlamaForCausalLM,
        config=LlamaConfig(vocab_size=89, hidden_size=48, intermediate_size=80,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=12, rope_theta=500000.0, rms_norm_eps=1e-6,
                           max_position_embeddings=64, tie_word_embeddings=True),
        lora=dict(r=6, lora_alpha=12, use_rslora=True),
        lengths=[11, 7],
    ),
    # LoRA on a subset of the projections only.
    "mistral_lora_subset": dict(
        model=MistralForCausalLM,
        config=MistralConfig(vocab_size=61, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             sliding_window=None, rope_theta=10000.0, rms_norm_eps=1e-5,
                             max_position_embeddings=64, tie_word_embeddings=False),
        lora=dict(r=2, lora_alpha=5, use_rslora=False),
        targets=["q_proj", "v_proj", "down_proj"],
        lengths=[9, 6],
    ),
}


# Llama 3.1/3.2 style: RoPE scaling of type llama3, tied embeddings (as the 3.2 1B and 3B models),
# a list of EOS ids, explicit head_dim (16, not hidden / heads = 24). With theta 500000 and
# head_dim 16 the wavelengths 2 pi / inv_freq are 6.3, 32, 167, 864, 4459, ...; an original context
# of 1024 with low_freq_factor 1 and high_freq_factor 16 puts the band edges at 1024 and 64, so the
# pairs fall in all three bands (kept, smoothed, divided by the factor). q and k weights 16 times
# HF's initialisation sharpen the attention so that positions matter: unscaled RoPE would move the
# logits by ~7e-2 (at HF's initialisation by 1.5e-4, too close to the tests' 1e-4 tolerance).
def llama3_cases():
    rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 16.0,
                    "original_max_position_embeddings": 1024}
    return {
        "llama3_rope_scaled": dict(
            model=LlamaForCausalLM,
            config=LlamaConfig(vocab_size=83, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               rope_theta=500000.0, rope_scaling=rope_scaling, rms_norm_eps=1e-5,
                               max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
                               eos_token_id=[2, 3, 4]),
            lora=dict(r=4, lora_alpha=8, use_rslora=False),
            lengths=[13, 9, 5],
            qk_scale=16.0,
            save_rope_frequencies=True,
        ),
    }


# Published RoPE settings (config.json of each model) for rope_inverse_frequencies.json.
PUBLISHED_ROPE = {
    "Llama-3.1-8B": dict(head_dim=128, rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "Llama-3.2-1B": dict(head_dim=64, rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "Llama-3.2-3B": dict(head_dim=128, rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "linear-factor-4": dict(head_dim=128, rope_theta=10000.0, max_position_embeddings=16384,
                            rope_scaling={"rope_type": "linear", "factor": 4.0}),
}


def rope_frequencies_fixture():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases = []
    for name, settings in PUBLISHED_ROPE.items():
        config = LlamaConfig(hidden_size=settings["head_dim"] * 8, num_attention_heads=8, **settings)
        inverse_frequencies, attention_factor = ROPE_INIT_FUNCTIONS[settings["rope_scaling"]["rope_type"]](
            config, "cpu")
        assert attention_factor == 1.0, (name, attention_factor)  # cst leaves cos/sin unscaled
        cases.append(dict(name=name, head_dim=settings["head_dim"], rope_theta=settings["rope_theta"],
                          rope_scaling=settings["rope_scaling"],
                          inverse_frequencies=[float(v) for v in inverse_frequencies.tolist()]))
    with open(os.path.join(OUT, "rope_inverse_frequencies.json"), "w") as f:
        json.dump({"transformers_version": transformers.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


def make_case(name, case, seed):
    torch.manual_seed(seed)
    config = case["config"]
    config._attn_implementation = "eager"
    model = case["model"](config).float().eval()
    # Random norm weights so the tests see them (HF initialises them to ones).
    with torch.no_grad():
        for module_name, parameter in model.named_parameters():
            if "norm" in module_name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            if "q_proj" in module_name or "k_proj" in module_name:
                parameter.mul_(case.get("qk_scale", 1.0))

    directory = os.path.join(OUT, name)
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(os.path.join(directory, "hf"), safe_serialization=True)

    lora = LoraConfig(target_modules=case.get("targets", TARGETS), lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM", **case["lora"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # non-zero A and B so every path of the adapter is exercised
        for module_name, parameter in peft_model.named_parameters():
            if "lora_" in module_name:
                parameter.copy_(0.15 * torch.randn_like(parameter))
    peft_model.save_pretrained(os.path.join(directory, "adapter"))
    os.remove(os.path.join(directory, "adapter", "README.md"))  # PEFT's model-card template

    generator = torch.Generator().manual_seed(seed + 1)
    sequences = [torch.randint(0, config.vocab_size, (n,), generator=generator)
                 for n in case["lengths"]]
    masks = [(torch.rand(n, generator=generator) < 0.7).to(torch.int32) for n in case["lengths"]]

    logits, base_logits, logps = [], [], []
    peft_model.zero_grad()
    total = 0.0
    for ids, mask in zip(sequences, masks):
        out = peft_model(input_ids=ids[None]).logits[0]
        token_logps = torch.log_softmax(out.float(), dim=-1)
        next_logps = torch.zeros(len(ids))
        if len(ids) > 1:
            next_logps[:-1] = token_logps[:-1].gather(1, ids[1:, None])[:, 0]
        total = total + (next_logps * mask).sum()
        logits.append(out.detach())
        logps.append(next_logps.detach())
        with torch.no_grad(), peft_model.disable_adapter():
            base_logits.append(peft_model(input_ids=ids[None]).logits[0])
    total.backward()

    cu_seqlens = [0]
    for n in case["lengths"]:
        cu_seqlens.append(cu_seqlens[-1] + n)
    tensors = {
        "input_ids": torch.cat(sequences).to(torch.int32),
        "cu_seqlens": torch.tensor(cu_seqlens, dtype=torch.int32),
        "loss_mask": torch.cat(masks),
        "logits": torch.cat(logits).contiguous(),
        "base_logits": torch.cat(base_logits).contiguous(),
        "logps": torch.cat(logps).contiguous(),
    }
    if case.get("save_rope_frequencies"):
        rotary = model.model.rotary_emb
        assert rotary.attention_scaling == 1.0, rotary.attention_scaling  # cst leaves cos/sin unscaled
        tensors["rope_inv_freq"] = rotary.inv_freq.detach().float().contiguous()
    for module_name, parameter in peft_model.named_parameters():
        if "lora_" in module_name:
            # PEFT's saved names drop the adapter name: ...lora_A.default.weight -> ...lora_A.weight
            saved_name = module_name.replace(".default", "")
            tensors["grad." + saved_name] = parameter.grad.detach().contiguous()
    save_file(tensors, os.path.join(directory, "golden.safetensors"), metadata={"format": "pt"})
    print(name, {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("grad.")},
          "loss", float(total))


def main():
    if sys.argv[1:] == ["--llama3"]:
        for seed, (name, case) in enumerate(llama3_cases().items()):
            make_case(name, case, 4321 + seed)
        rope_frequencies_fixture()
        return
    for seed, (name, case) in enumerate(CASES.items()):
        make_case(name, case, 1234 + seed)


if __name__ == "__main__":
    main()
