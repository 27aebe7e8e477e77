"""Reference benchmark: QLoRA training throughput and peak memory of Hugging Face transformers + PEFT + bitsandbytes.

This is the reference stack lapidary's `bench` is compared with, on the same GPU, in the same session. It trains a Gemma
model of a real shape (random weights: only speed and memory are measured) with the setup most users copy:
NF4 double-quant base in bf16 compute, prepare_model_for_kbit_training, LoRA r=16 alpha=32 on every linear,
AdamW lr 2e-4, sdpa attention, optional gradient checkpointing. One JSON line per run on stdout.

    PYTHONPATH=DIR/site python3 scripts/peers/hf_qlora_bench.py --model gemma-2b --seq 1024 --batch 4 --gc
(DIR from scripts/peers/fetch_bnb.sh; the GPU machine already has torch, transformers, peft, accelerate.)
On a CPU (`--device cpu`) it runs in f32, with `--quant nf4` (bitsandbytes' CPU path) or `--quant none`;
peak memory is then the process's maximum resident set.
"""
import argparse, json, resource, tempfile, time

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GemmaConfig, Gemma2Config, Gemma3TextConfig
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

SHAPES = {  # published configs of the real checkpoints
    "gemma-2b": (GemmaConfig, dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                                   num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000)),
    "gemma-7b": (GemmaConfig, dict(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                                   num_attention_heads=16, num_key_value_heads=16, head_dim=256, vocab_size=256000)),
    "gemma2-2b": (Gemma2Config, dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000)),
    "gemma3-1b": (Gemma3TextConfig, dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                         vocab_size=262144, sliding_window=512)),
    "gemma3-270m": (Gemma3TextConfig, dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                           num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                           vocab_size=262144, sliding_window=512)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-2b", choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--autocast", default="auto", choices=["auto", "bf16", "off"],
                    help="bf16 autocast around the forward (auto: on for cuda; on CPUs with AVX512-BF16 or AMX, "
                         "bf16 is how users run torch fast: HF Trainer with bf16=True)")
    a = ap.parse_args()
    cuda = a.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    autocast = a.autocast == "bf16" or (a.autocast == "auto" and cuda)

    cls, kw = SHAPES[a.model]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = AutoModelForCausalLM.from_config(cls(**kw, attn_implementation="sdpa"), dtype=dtype)
        base.save_pretrained(tmp)
        del base
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype) if a.quant == "nf4" else None
        model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, dtype=dtype, attn_implementation="sdpa",
                                                     device_map={"": 0 if cuda else "cpu"})
    if q is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gc)
    elif a.gc:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(3, kw["vocab_size"], (a.batch, a.seq), device=a.device)

    def step():
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"system": "hf-peft-bnb", "model": a.model, "seq": a.seq, "batch": a.batch, "gc": a.gc,
                      "rank": a.rank, "quant": a.quant, "autocast": autocast, "tokens_per_s": round(a.steps * a.batch * a.seq / dt, 1),
                      "peak_gib": round(peak / 2**30, 2), "loss": round(loss.item(), 4),
                      "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
                      "versions": {m.__name__: m.__version__ for m in (torch, __import__("transformers"),
                                                                       __import__("peft"), __import__("bitsandbytes"))}}),
          flush=True)


if __name__ == "__main__":
    main()
