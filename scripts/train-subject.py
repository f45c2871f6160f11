"""Trains a small Qwen3 base model on Python source: the project's second built-in subject.

Why: issue 12 wants the generic detectors measured on a second, different architecture. This
makes one (Qwen3: per-head q/k RMSNorm, no qkv bias, its own head_dim; 6 layers, d_model 256)
with the built-in model's byte-level BPE tokenizer (vocab 8192), trained on the Python files found
on the machine that runs it (the stdlib and site-packages: plenty of real code).

Needs torch, transformers (5.x) and tokenizers; run it where a GPU is (bf16 autocast). Seeded:
with the same files, the same --steps and the same machine kind it gives the same weights up to
GPU non-determinism. --steps 0 (the default) times a few steps first and picks the step count that
fits --minutes (and --deadline-s); the count chosen is printed and written to training.json, so a
re-run can pass it with --steps.

Writes to --out: config.json, generation_config.json, the bf16 safetensors shards (each under
--max-shard-mb) and their index, tokenizer.json + tokenizer_config.json copied from --tokenizer's
folder, training.json (settings, data, losses), and reference.json / reference.safetensors made
the way ../shared/reference/make_subject_reference.py makes them for qwen2-code-16m (from the
saved bf16 checkpoint reloaded in fp32: logits, resid_post after every layer, the same with an
injection, 24-token greedy continuations of three prompts), for the engine's parity test.

Usage (from the repo root):
  PYTHONUNBUFFERED=1 python3 scripts/train-subject.py --out /tmp/qwen3-code \
      --tokenizer models/qwen2-code-16m/tokenizer.json --minutes 5
"""
import argparse, hashlib, json, math, os, random, shutil, sys, sysconfig, time

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default="models/qwen2-code-16m/tokenizer.json")
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=128, help="sequences per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=0, help="0: as many as fit --minutes")
    p.add_argument("--minutes", type=float, default=6.0, help="training time when --steps is 0")
    p.add_argument("--deadline-s", type=float, default=480.0,
                   help="when --steps is 0, training also ends this long after start, less time kept for saving")
    p.add_argument("--max-chars", type=int, default=400_000_000, help="cap on source text read")
    p.add_argument("--read-seconds", type=float, default=60.0, help="stop reading files after this long")
    p.add_argument("--tokenize-seconds", type=float, default=90.0,
                   help="stop tokenizing training files after this long (the count used goes to training.json)")
    p.add_argument("--max-file-bytes", type=int, default=400_000, help="skip larger (generated) files")
    p.add_argument("--heldout-percent", type=int, default=2)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--max-shard-mb", type=int, default=10)
    p.add_argument("--roots", nargs="*", default=None, help="folders to read *.py from (default: stdlib + site-packages)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def source_roots():
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["purelib"], paths["platlib"]}
    for r in sys.path:
        if r.endswith("site-packages") or r.endswith("dist-packages"):
            roots.add(r)
    return sorted(r for r in roots if r and os.path.isdir(r))


def collect_files(args):
    """Every distinct *.py file (by content) under the roots, in a seeded shuffled order, split by path hash."""
    roots = args.roots or source_roots()
    log(f"reading *.py under {roots}")
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for f in filenames:
                if f.endswith(".py"):
                    found.add(os.path.realpath(os.path.join(dirpath, f)))
    files = sorted(found)
    random.Random(args.seed).shuffle(files)
    seen, train, held, chars, t = set(), [], [], 0, time.time()
    for path in files:
        if time.time() - t > args.read_seconds:
            break
        try:
            if os.path.getsize(path) > args.max_file_bytes:
                continue
            with open(path, "rb") as fh:
                raw = fh.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha1(raw).digest()
        if not text.strip() or digest in seen:
            continue
        seen.add(digest)
        # Held out by a hash of the content, so the split does not depend on where files live.
        (held if digest[0] * 100 // 256 < args.heldout_percent else train).append(text)
        chars += len(text)
        if chars >= args.max_chars:
            break
    log(f"{len(found)} files found, {len(train)} train + {len(held)} held-out distinct files, {chars / 1e6:.1f}M chars")
    return train, held


def tokenize(tok, texts, eos, seconds=float("inf")):
    """Token ids of the texts, each followed by EOS; stops after the chunk that passes `seconds`."""
    ids, t, done = [], time.time(), 0
    for i in range(0, len(texts), 1024):
        for enc in tok.encode_batch(texts[i:i + 1024]):
            ids.extend(enc.ids)
            ids.append(eos)
        done = min(len(texts), i + 1024)
        if time.time() - t > seconds:
            break
    log(f"tokenized {done}/{len(texts)} files in {time.time() - t:.0f}s")
    return torch.tensor(ids, dtype=torch.int32)


def build_model(args, vocab, eos):
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=1024, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=None,
        attention_bias=False, use_cache=True,
    )
    torch.manual_seed(args.seed)
    return Qwen3ForCausalLM(config)


def batches(data, args, gen):
    """Random windows of seq_len + 1 tokens from the packed stream (files separated by EOS)."""
    n = data.numel() - args.seq_len - 1
    offs = torch.arange(args.seq_len + 1, device=data.device)
    while True:
        starts = torch.randint(0, n, (args.batch,), generator=gen, device=data.device)
        w = data[starts[:, None] + offs].long()
        yield w[:, :-1], w[:, 1:]


def loss_of(model, x, y, device):
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
        logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def heldout_loss(model, data, args, device):
    """Mean next-token loss over fixed, evenly spaced held-out windows."""
    model.eval()
    n = data.numel() - args.seq_len - 1
    count = min(args.eval_batches * args.batch, max(1, n // args.seq_len))
    starts = torch.linspace(0, n - 1, count).long().to(data.device)
    offs = torch.arange(args.seq_len + 1, device=data.device)
    total = 0.0
    for i in range(0, count, args.batch):
        w = data[starts[i:i + args.batch, None] + offs].long()
        total += loss_of(model, w[:, :-1], w[:, 1:], device).item() * w.shape[0]
    model.train()
    return total / count


def train(model, train_ids, held_ids, args):
    device = args.device
    model.to(device).train()
    data = train_ids.to(device)
    held = held_ids.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device != "cpu")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    stream = batches(data, args, gen)
    steps = args.steps
    history = []
    step, t_start = 0, time.time()
    tokens_per_step = args.batch * args.seq_len

    def lr_at(s, total):
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        prog = min(1.0, (s - args.warmup) / max(1, total - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))  # cosine to 10% of peak

    timing = (10, 40)  # steps timed to size the run (after the first ones' warm-up)
    t_timing = 0.0
    while True:
        if steps == 0 and step in timing:
            if device != "cpu":
                torch.cuda.synchronize()
            if step == timing[0]:
                t_timing = time.time()
            else:
                per_step = (time.time() - t_timing) / (timing[1] - timing[0])
                budget = min(args.minutes * 60, args.deadline_s - (time.time() - T0) - 60) - (time.time() - t_start)
                steps = step + max(1, int(budget / per_step))
                log(f"{per_step * 1000:.1f} ms/step: training {steps} steps ({steps * tokens_per_step / 1e6:.0f}M tokens)")
        total = steps if steps else 10 ** 9
        if step >= total:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total if steps else 10 ** 6)
        x, y = next(stream)
        loss = loss_of(model, x, y, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == 1 or step == total:
            lv = loss.item()
            history.append({"step": step, "loss": round(lv, 4)})
            log(f"step {step}/{steps or '?'} loss {lv:.4f} lr {opt.param_groups[0]['lr']:.2e}")
        if step % 1000 == 0:
            hl = heldout_loss(model, held, args, device)
            history.append({"step": step, "heldout_loss": round(hl, 4)})
            log(f"step {step} held-out loss {hl:.4f}")
    train_s = time.time() - t_start
    final = heldout_loss(model, held, args, device)
    log(f"trained {step} steps ({step * tokens_per_step / 1e6:.0f}M tokens) in {train_s:.0f}s; held-out loss {final:.4f} "
        f"(perplexity {math.exp(final):.2f})")
    return {"steps": step, "tokens": step * tokens_per_step, "train_seconds": round(train_s, 1),
            "heldout_loss": round(final, 4), "history": history}


# The same outputs as ../shared/reference/make_subject_reference.py (which made qwen2-code-16m's).
PROMPTS = ["import numpy as np\n\ndef ", "class Config:\n    def __init__(self, path):\n        self.",
           "# Parse the socket address\n"]


def make_reference(ckpt):
    tok = Tokenizer.from_file(os.path.join(ckpt, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    layers = model.model.layers
    D = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    vec = torch.randn(D, generator=g)
    vec = vec / vec.norm()
    inj_layer, alpha = len(layers) // 2 - 1, 8.0

    def run(ids, inject):
        seen, hs = {}, []
        for i, layer in enumerate(layers):
            def hook(m, a, out, i=i):
                h = out[0] if isinstance(out, tuple) else out
                if inject and i == inj_layer:
                    h = h + alpha * vec
                    out = (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
                seen[i] = h.detach().clone()
                return out
            hs.append(layer.register_forward_hook(hook))
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        for h in hs:
            h.remove()
        return logits[0], [seen[i][0] for i in range(len(layers))]

    tensors = {"inject_vector": vec}
    meta = {"injection": {"layer": inj_layer, "alpha": alpha,
                          "where": "added to the output of decoder layer `layer` (resid_post), every position"},
            "prompts": []}
    for p, text in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(text).ids])
        logits, resid = run(ids, False)
        logits_i, resid_i = run(ids, True)
        tensors[f"p{p}.input_ids"] = ids[0]
        tensors[f"p{p}.logits"] = logits
        tensors[f"p{p}.logits_injected"] = logits_i
        for i in range(len(layers)):
            tensors[f"p{p}.resid_post.{i}"] = resid[i]
            tensors[f"p{p}.resid_post_injected.{i}"] = resid_i[i]
        cont, cur = [], ids
        with torch.no_grad():
            for _ in range(24):
                nxt = model(input_ids=cur).logits[0, -1].argmax().item()
                cont.append(nxt)
                cur = torch.cat([cur, torch.tensor([[nxt]])], 1)
        meta["prompts"].append({"text": text, "input_ids": ids[0].tolist(), "greedy_continuation": cont,
                                "greedy_text": tok.decode(cont)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ckpt, "reference.safetensors"))
    with open(os.path.join(ckpt, "reference.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    for pr in meta["prompts"]:
        log(f"greedy {pr['text']!r} -> {pr['greedy_text']!r}")


def main():
    args = parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tok = Tokenizer.from_file(args.tokenizer)
    eos = tok.token_to_id("<|endoftext|>")
    vocab = tok.get_vocab_size()
    log(f"torch {torch.__version__}, device {args.device}, vocab {vocab}, eos {eos}")
    train_texts, held_texts = collect_files(args)
    held_ids = tokenize(tok, held_texts, eos)
    train_ids = tokenize(tok, train_texts, eos, args.tokenize_seconds)
    del train_texts, held_texts
    log(f"tokens: {train_ids.numel() / 1e6:.1f}M train, {held_ids.numel() / 1e6:.2f}M held-out")
    model = build_model(args, vocab, eos)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"Qwen3ForCausalLM: {n_params / 1e6:.2f}M parameters")
    result = train(model, train_ids, held_ids, args)

    os.makedirs(args.out, exist_ok=True)
    model = model.to("cpu", dtype=torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(args.out, max_shard_size=f"{args.max_shard_mb}MB")
    tok_dir = os.path.dirname(os.path.abspath(args.tokenizer))
    shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    if os.path.exists(os.path.join(tok_dir, "tokenizer_config.json")):
        shutil.copy(os.path.join(tok_dir, "tokenizer_config.json"), os.path.join(args.out, "tokenizer_config.json"))
    info = {"script": "scripts/train-subject.py", "argv": sys.argv[1:], "settings": vars(args),
            "parameters": n_params, "train_tokens_available": train_ids.numel(),
            "heldout_tokens": held_ids.numel(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu", **result}
    with open(os.path.join(args.out, "training.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    log(f"saved to {args.out}: {sorted(os.listdir(args.out))}")
    make_reference(args.out)
    log("done")


if __name__ == "__main__":
    main()
