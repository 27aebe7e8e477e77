"""Reference benchmark on a real SFT run: TRL's SFTTrainer + PEFT LoRA (optionally on a bitsandbytes NF4 base) on a
prompt/completion JSONL with completion-only loss, the way its users run it. Prints one JSON line: the trainer's
own runtime for the optimizer steps, the non-padding tokens they consumed, tokens/s, peak memory and the losses.

    python scripts/peers/trl_sft_bench.py --model HF_DIR --data rows.jsonl --steps 20 --batch 4 --max-len 256
            [--quant nf4] [--device cpu|cuda] [--bf16 auto|on|off] [--lr 5e-4] [--r 16 --alpha 32 --dropout 0.05]

Compare with `lapidary train` on the same rows and hyperparameters (r, alpha, dropout, all seven projections,
AdamW, cosine with 3 warmup steps, no packing), in the same session on the same machine.
"""
import argparse, json, resource, tempfile, time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--max-len", type=int, default=256)
ap.add_argument("--quant", choices=["none", "nf4"], default="none")
ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
ap.add_argument("--lr", type=float, default=5e-4)
ap.add_argument("--r", type=int, default=16)
ap.add_argument("--alpha", type=int, default=32)
ap.add_argument("--dropout", type=float, default=0.05)
ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                help="SFTConfig(bf16=...): auto = on for cuda; on a CPU with AVX512-BF16 or AMX it is the fast setting")
a = ap.parse_args()
bf16 = a.bf16 == "on" or (a.bf16 == "auto" and a.device == "cuda")

kw = {"dtype": torch.bfloat16 if a.device == "cuda" else torch.float32}
if a.quant == "nf4":
    kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=kw["dtype"])
    kw["device_map"] = {"": 0 if a.device == "cuda" else "cpu"}
model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
if a.device == "cuda" and a.quant == "none":
    model = model.cuda()
tok = AutoTokenizer.from_pretrained(a.model)
ds = load_dataset("json", data_files=a.data, split="train")
ds = ds.select_columns(["prompt", "completion"])


class Tokens(TrainerCallback):
    """Counts the non-padding tokens of every batch the trainer consumes."""
    n = 0


counter = Tokens()
cfg = SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl-sft-bench-"), max_steps=a.steps, per_device_train_batch_size=a.batch,
                gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=3,
                max_length=a.max_len, packing=False, completion_only_loss=True, logging_steps=1,
                save_strategy="no", report_to=[], bf16=bf16, use_cpu=a.device == "cpu",
                dataloader_num_workers=0, seed=0)
lora = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
orig = trainer.training_step


def counting_step(model, inputs, *args, **kwargs):
    counter.n += int(inputs["attention_mask"].sum())
    return orig(model, inputs, *args, **kwargs)


trainer.training_step = counting_step
if a.device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.time()
out = trainer.train()
wall = time.time() - t0
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
peak = (torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
print(json.dumps({"system": "trl-sft", "quant": a.quant, "bf16": bf16, "steps": a.steps, "batch": a.batch,
                  "train_runtime_s": out.metrics["train_runtime"], "wall_s": wall, "tokens": counter.n,
                  "tokens_per_s": counter.n / out.metrics["train_runtime"], "peak_gib": peak,
                  "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}))
