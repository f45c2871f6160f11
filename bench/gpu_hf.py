"""Hugging Face transformers on the same GPU, for bench/gpu.ts (which starts it where torch exists).

For each shape: a Qwen2ForCausalLM with random weights (transformers' own initializer, std 0.02,
seed 0), saved with save_pretrained (bf16 safetensors) for the engine to build from, then eager bf16
`generate` timings on the GPU: prefill (one forward over the prompt) and greedy decode (generate of
N+1 tokens minus generate of 1, over N). Also the card's memory bandwidth (device-to-device copy,
bytes read + written). Prints one JSON object on the last line of stdout, and writes it to --json.
--prompts: prefill alone at more prompt lengths too (one forward each with the last position's logits
only, as the engine's prompt pass; medians; prefill_tok_s_by_prompt).

  python3 bench/gpu_hf.py --work /tmp/lw-gpu --shapes 0.5b,7b [--prompt 128] [--prompts 128,512,2048] [--decode 64] --json FILE
"""
import argparse
import json
import os
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    # Qwen2.5-0.5B and Qwen2.5-7B (their config.json shapes).
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
}


def checkpoint(work: str, name: str) -> tuple[str, Qwen2ForCausalLM]:
    path = os.path.join(work, f"qwen2.5-{name}-random")
    cfg = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, initializer_range=0.02, use_sliding_window=False, attn_implementation="eager")
    if os.path.exists(os.path.join(path, "config.json")):
        model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").cuda()
    else:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(cfg)
        model = model.to(torch.bfloat16)
        model.save_pretrained(path, safe_serialization=True, max_shard_size="4GB")
        # For a caller that starts building from the checkpoint while the timings run.
        open(f"{path}.done", "w").close()
        print(f"gpu_hf: {name} checkpoint written in {time.perf_counter() - t0:.1f}s", flush=True)
    return path, model.eval()


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.inference_mode()
def bench(model: Qwen2ForCausalLM, prompt: int, decode: int, runs: int, prompts: list[int]) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=g).cuda()
    gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    gen(8)  # warm-up
    prefill, decode_s = [], []
    for _ in range(runs):
        prefill.append(timed(lambda: model(ids)))
        one = timed(lambda: gen(1))
        full = timed(lambda: gen(decode + 1))
        decode_s.append((full - one) / decode)
    prefill.sort()
    decode_s.sort()
    # Prefill alone at each length: a warm-up forward (kernels for the shape), then `runs` timed ones.
    # Logits of the last position only, as generate's prompt pass and the engine's (the plain
    # prefill_tok_s above computes them at every position: 2.2 TFLOP more at 2048 tokens on 7B).
    by_prompt = {}
    for n in prompts:
        long_ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g).cuda()
        model(long_ids, logits_to_keep=1)
        t = sorted(timed(lambda: model(long_ids, logits_to_keep=1)) for _ in range(runs))
        by_prompt[str(n)] = n / t[len(t) // 2]
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if model.config.tie_word_embeddings:
        weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return {
        "prefill_tok_s": prompt / prefill[len(prefill) // 2],
        "prefill_tok_s_by_prompt": by_prompt,
        "decode_tok_s": 1 / decode_s[len(decode_s) // 2],
        "weight_bytes_per_token": weight_bytes,
        "runs": runs,
        "attn_implementation": model.config._attn_implementation,
        "dtype": str(next(model.parameters()).dtype),
    }


def bandwidth() -> float:
    """Device-to-device copy of 4 GiB: bytes read + written per second (GB/s)."""
    a = torch.empty(1 << 30, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(timed(lambda: b.copy_(a)) for _ in range(10))
    return 2 * a.numel() * 4 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--shapes", default="0.5b,7b")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--prompts", default="", help="comma-separated prompt lengths timed for prefill alone")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    import transformers

    out = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "copy_bandwidth_gb_s": bandwidth(),
        "shapes": {},
    }
    # Every checkpoint first (a caller may build from them meanwhile), then the timings.
    models = {name: checkpoint(a.work, name) for name in a.shapes.split(",")}
    for name, (path, model) in models.items():
        r = bench(model, a.prompt, a.decode, a.runs, [int(n) for n in a.prompts.split(",") if n])
        r["checkpoint"] = path
        out["shapes"][name] = r
        by = ", ".join(f"{n}: {v:.0f}" for n, v in r["prefill_tok_s_by_prompt"].items())
        print(f"gpu_hf: {name} eager bf16 prefill {r['prefill_tok_s']:.0f} tok/s ({by}), decode {r['decode_tok_s']:.1f} tok/s", flush=True)
        del model
        models[name] = None
        torch.cuda.empty_cache()
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
