#!/usr/bin/env python3
"""PyTorch reference of redpack's two architectures, for the CUDA throughput comparison.

The models follow the CPU reference backend (trainer/src/backend/cpu/) op for op:
- pre-norm residual blocks with RMSNorm (gain, eps 1e-6), SwiGLU FFN, no biases;
- Q, K, V projections each normalized per head (parameter-free RMSNorm), then RoPE on Q and K
  with the half-split ("rotate_half") pairing, theta 10000; attention scaled by head_dim^-0.5;
- RedLLM also normalizes each head's attention output before the output projection;
- tied embedding, logits = final_norm(h) @ E^T * d_model^-0.5; loss = cross-entropy + z-loss
  (1e-4 * logZ^2) over the scored tokens;
- DecLLM: causal over tokens [0, n-1), predicting [1, n). RedLLM: the encoder reads [0, k) at
  positions 0..k (bidirectional), the decoder reads [k-1, n-1) at positions k..n (causal
  self-attention, cross-attention to the encoder output, RoPE on both sides) and predicts [k, n).

Timed: forward + backward (+ zeroing the gradients), bf16 autocast with f32 master weights,
eager and torch.compile (`step_s`, as `cuda_step`'s); then, where torch.optim has Adafactor, the
whole training step (`train_step_s`, as `cuda_step`'s): the same, plus the global gradient norm
(clip_grad_norm_ with an infinite threshold, which also multiplies the gradients by 1) and
torch.optim.Adafactor's update (foreach, run eagerly in both modes), as redpack's resident step
computes the norm and updates on the device.
torch's Adafactor differs from T5X's in details (its step-size rule), not in the work done. Attention
uses F.scaled_dot_product_attention (flash/cuDNN kernels where available), the way a PyTorch
user would write it. Prints one JSON object per line: tokens/s, MFU (FLOPs counted as
trainer/src/flops.rs counts them, against --peak-tflops) and peak memory.

    python3 trainer/benches/torch_ref.py --arch dec,red --modes eager,compile

`--device cpu` runs the same code on the CPU, small enough to smoke-test this script where no GPU
is (its timings mean nothing):

    python3 trainer/benches/torch_ref.py --device cpu --size tiny --rows 2 --seq 64 --vocab 512 \
        --steps 1 --warmup 1
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# d_model, d_ffn, heads, head_dim, DecLLM layers, RedLLM layers per stack (trainer/src/config.rs)
SIZES = {
    "tiny": (64, 256, 2, 32, 2, 2),
    "small": (256, 1024, 4, 64, 4, 2),
    "150m": (1024, 4096, 8, 128, 8, 3),
    "1b": (2048, 8192, 16, 128, 16, 7),
}
EPS = 1e-6


def rms(x, gain=None):
    y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS).to(x.dtype)
    return y * gain if gain is not None else y


class Rope:
    def __init__(self, head_dim, max_pos, device, base=10000.0):
        half = head_dim // 2
        inv = base ** (-torch.arange(half, dtype=torch.float64) / half)
        ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = ang.cos().float().to(device)
        self.sin = ang.sin().float().to(device)

    def __call__(self, x, pos):
        # x: batch x heads x tokens x head_dim; pos: tokens
        half = x.shape[-1] // 2
        c = self.cos[pos].to(x.dtype)
        s = self.sin[pos].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads, head_dim, out_norm, branches):
        super().__init__()
        da = heads * head_dim
        self.heads, self.hd, self.out_norm = heads, head_dim, out_norm
        self.norm = nn.Parameter(torch.ones(d))
        self.q = nn.Linear(d, da, bias=False)
        self.k = nn.Linear(d, da, bias=False)
        self.v = nn.Linear(d, da, bias=False)
        self.o = nn.Linear(da, d, bias=False)
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, std=d ** -0.5)
        nn.init.normal_(self.o.weight, std=da ** -0.5 / math.sqrt(branches))

    def split(self, x):
        b, t, _ = x.shape
        return rms(x.view(b, t, self.heads, self.hd)).transpose(1, 2)

    def forward(self, x, rope, q_pos, causal, kv=None, k_pos=None):
        n = rms(x, self.norm)
        src = n if kv is None else kv
        k_pos = q_pos if k_pos is None else k_pos
        q = rope(self.split(self.q(n)), q_pos)
        k = rope(self.split(self.k(src)), k_pos)
        v = self.split(self.v(src))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if self.out_norm:
            o = rms(o)
        b, _, t, _ = o.shape
        return x + self.o(o.transpose(1, 2).reshape(b, t, self.heads * self.hd))


class Ffn(nn.Module):
    def __init__(self, d, f, branches):
        super().__init__()
        self.norm = nn.Parameter(torch.ones(d))
        self.gate = nn.Linear(d, f, bias=False)
        self.up = nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)
        nn.init.normal_(self.gate.weight, std=d ** -0.5)
        nn.init.normal_(self.up.weight, std=d ** -0.5)
        nn.init.normal_(self.down.weight, std=f ** -0.5 / math.sqrt(branches))

    def forward(self, x):
        n = rms(x, self.norm)
        return x + self.down(F.silu(self.gate(n)) * self.up(n))


def loss_fn(h, embed, targets, z_loss):
    logits = (h @ embed.t()).float() * (embed.shape[1] ** -0.5)
    log_z = torch.logsumexp(logits, dim=-1)
    ce = log_z - logits.gather(-1, targets[..., None]).squeeze(-1)
    return (ce + z_loss * log_z.pow(2)).mean()


class DecLLM(nn.Module):
    def __init__(self, vocab, d, f, heads, hd, layers, seq):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(vocab, d) * d ** -0.5)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(Attention(d, heads, hd, False, 2 * layers))
            self.blocks.append(Ffn(d, f, 2 * layers))
        self.final = nn.Parameter(torch.ones(d))
        self.seq = seq

    def forward(self, tokens, rope, z_loss):
        inp, targets = tokens[:, :-1], tokens[:, 1:]
        pos = torch.arange(inp.shape[1], device=tokens.device)
        x = F.embedding(inp, self.embed)
        for blk in self.blocks:
            x = blk(x, rope, pos, True) if isinstance(blk, Attention) else blk(x)
        return loss_fn(rms(x, self.final), self.embed, targets, z_loss)


class RedLLM(nn.Module):
    def __init__(self, vocab, d, f, heads, hd, layers, seq):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(vocab, d) * d ** -0.5)
        self.enc = nn.ModuleList()
        for _ in range(layers):
            self.enc.append(Attention(d, heads, hd, True, 2 * layers))
            self.enc.append(Ffn(d, f, 2 * layers))
        self.enc_final = nn.Parameter(torch.ones(d))
        self.dec = nn.ModuleList()
        for _ in range(layers):
            self.dec.append(Attention(d, heads, hd, True, 3 * layers))
            self.dec.append(Attention(d, heads, hd, True, 3 * layers))
            self.dec.append(Ffn(d, f, 3 * layers))
        self.dec_final = nn.Parameter(torch.ones(d))

    def forward(self, tokens, rope, z_loss, k):
        n = tokens.shape[1]
        dev = tokens.device
        enc_pos = torch.arange(k, device=dev)
        dec_pos = torch.arange(k, n, device=dev)
        x = F.embedding(tokens[:, :k], self.embed)
        for blk in self.enc:
            x = blk(x, rope, enc_pos, False) if isinstance(blk, Attention) else blk(x)
        enc = rms(x, self.enc_final)
        y = F.embedding(tokens[:, k - 1 : n - 1], self.embed)
        for i, blk in enumerate(self.dec):
            if i % 3 == 0:
                y = blk(y, rope, dec_pos, True)
            elif i % 3 == 1:
                y = blk(y, rope, dec_pos, False, kv=enc, k_pos=enc_pos)
            else:
                y = blk(y)
        return loss_fn(rms(y, self.dec_final), self.embed, tokens[:, k:n], z_loss)


def stack_params(module_list, final):
    return sum(p.numel() for p in module_list.parameters()) + final.numel()


def training_flops(arch, model, rows, seq, vocab, d, da):
    """trainer/src/flops.rs for full rows (RedLLM split at seq/2)."""
    if arch == "dec":
        m = seq - 1
        p_dec = stack_params(model.blocks, model.final)
        layers = len(model.blocks) // 2
        return (6 * p_dec * rows * m + 6 * vocab * d * rows * m
                + 12 * da * layers * rows * m * m)
    k = seq // 2
    m = seq - k
    p_enc = stack_params(model.enc, model.enc_final)
    p_dec = stack_params(model.dec, model.dec_final)
    l_enc, l_dec = len(model.enc) // 2, len(model.dec) // 3
    return (6 * p_enc * rows * k + 6 * p_dec * rows * m + 6 * vocab * d * rows * m
            + 12 * da * (l_enc * rows * k * k + l_dec * rows * (m * m + m * k)))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(arch, mode, args):
    d, f, heads, hd, dec_layers, red_layers = SIZES[args.size]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if arch == "dec":
        model = DecLLM(args.vocab, d, f, heads, hd, dec_layers, args.seq).to(dev)
    else:
        model = RedLLM(args.vocab, d, f, heads, hd, red_layers, args.seq).to(dev)
    rope = Rope(hd, args.seq + 1, dev)
    tokens = torch.randint(0, args.vocab, (args.rows, args.seq), device=dev)
    k = args.seq // 2

    def run(tok):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            if arch == "dec":
                return model(tok, rope, args.z_loss)
            return model(tok, rope, args.z_loss, k)

    fn = torch.compile(run) if mode == "compile" else run

    def step():
        for p in model.parameters():
            p.grad = None
        loss = fn(tokens)
        loss.backward()
        return loss

    first = None
    t0 = time.time()
    for _ in range(args.warmup):
        loss = step()
        if first is None:
            first = float(loss.detach())
    sync(dev)
    warm_s = time.time() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for _ in range(args.steps):
        loss = step()
    sync(dev)
    elapsed = time.time() - start
    step_s = elapsed / args.steps
    peak_bytes = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    train_step_s = whole_train_step(model, step, dev, args)
    flops = training_flops(arch, model, args.rows, args.seq, args.vocab, d, heads * hd)
    scored = args.rows * (args.seq - 1 if arch == "dec" else args.seq - k)
    extra = {}
    if train_step_s is not None:
        extra = {"train_step_s": train_step_s, "update_s": train_step_s - step_s}
    return {
        **extra,
        "impl": "torch",
        "mode": f"{mode}-bf16",
        "arch": arch,
        "size": args.size,
        "params": sum(p.numel() for p in model.parameters()),
        "rows": args.rows,
        "seq": args.seq,
        "vocab": args.vocab,
        "steps": args.steps,
        "step_s": step_s,
        "tokens_per_s": args.rows * args.seq / step_s,
        "scored_tokens_per_s": scored / step_s,
        "flops_per_step": flops,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / (args.peak_tflops * 1e12),
        "peak_bytes": peak_bytes,
        "loss": float(loss.detach()),
        "first_loss": first,
        "warmup_s": warm_s,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def whole_train_step(model, step, dev, args):
    """Seconds per training step with the gradient norm and an Adafactor update, or None where
    this torch has no torch.optim.Adafactor (before 2.5)."""
    adafactor = getattr(torch.optim, "Adafactor", None)
    if adafactor is None:
        return None
    opt = adafactor(model.parameters(), lr=1e-2, foreach=True)
    params = [p for p in model.parameters()]

    def train_step():
        loss = step()
        torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True)
        opt.step()
        return loss

    for _ in range(args.warmup):
        train_step()
    sync(dev)
    start = time.time()
    for _ in range(args.steps):
        train_step()
    sync(dev)
    return (time.time() - start) / args.steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="dec,red")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--size", default="150m", choices=sorted(SIZES))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--z-loss", type=float, default=1e-4)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu, or on a GPU", file=sys.stderr)
        return 1
    status = 0
    for arch in args.arch.split(","):
        for mode in args.modes.split(","):
            try:
                print(json.dumps(bench(arch.strip(), mode.strip(), args)), flush=True)
            except Exception as e:  # report and go on with the next configuration
                print(json.dumps({"impl": "torch", "mode": mode, "arch": arch,
                                  "error": f"{type(e).__name__}: {e}"}), flush=True)
                status = 1
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return status


if __name__ == "__main__":
    sys.exit(main())
