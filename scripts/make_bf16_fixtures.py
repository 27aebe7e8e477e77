"""bf16 references for the tiny Gemma 1/2/3 fixtures (tests/fixtures/tiny/GEN, made by make_fixtures.py):
transformers run in bfloat16 (eager attention, CPU) on each fixture's reference input_ids, as a QLoRA user's
`bnb_4bit_compute_dtype=torch.bfloat16` model computes. Writes tests/fixtures/tiny/GEN/reference_bf16.safetensors:

- `logits` [2, 20, vocab]: the bf16 logits, upcast to f32;
- `nll_sum` [1]: Σ −log softmax(logits.float())[next token] over both rows, f64 upcast of transformers' own
  loss path (logits cast to f32 before the log-softmax);
- `logits_f32_ref` [2, 20, vocab]: the same model in f32. On these tiny random models bf16 rounding moves the
  logits by ~3-4% of their scale (and transformers' own eager and sdpa bf16 paths differ from each other by
  as much), so the logits of two bf16 implementations can only be compared to within that spread; the loss,
  a sum over many logits, agrees far more closely.

usage: python scripts/make_bf16_fixtures.py   (PyTorch + transformers, see scripts/requirements.txt)
"""
import pathlib

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"


def load(d, dtype, attn="eager"):
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, attn_implementation=attn, device_map="cpu")
    m.eval()
    return m


@torch.no_grad()
def main():
    for gen in ["gemma1", "gemma2", "gemma3"]:
        d = TINY / gen
        ids = load_file(str(d / "reference.safetensors"))["input_ids"]
        bf16 = load(d, torch.bfloat16)
        logits = bf16(input_ids=ids).logits
        assert logits.dtype == torch.bfloat16
        logp = torch.log_softmax(logits.float(), dim=-1)
        nll = -logp[:, :-1].gather(2, ids[:, 1:, None]).double().sum()
        f32 = load(d, torch.float32)(input_ids=ids).logits.float()
        rel = ((logits.float() - f32).abs().max() / f32.abs().max()).item()
        print(f"{gen}: nll_sum {nll.item():.6f}, bf16 vs f32 logits {rel:.2e} of scale")
        assert rel > 1e-4, "bf16 and f32 logits should differ measurably"
        save_file(
            {
                "logits": logits.float().contiguous(),
                "nll_sum": nll.reshape(1).float(),
                "logits_f32_ref": f32.contiguous(),
            },
            str(d / "reference_bf16.safetensors"),
        )


if __name__ == "__main__":
    main()
