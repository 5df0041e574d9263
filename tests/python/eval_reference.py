#!/usr/bin/env python3
"""An independent reference for `redpack eval` over (length, prefix) pairs, with numpy and pyarrow
only: no redpack code.

Usage: python3 tests/python/eval_reference.py CHECKPOINT_DIR CORPUS_DIR --lengths L,... \
           --prefix-len K,... [--max-rows N]

Reads the checkpoint's `model.safetensors` (the format parsed by hand: an 8-byte little-endian
header size, a JSON header, then the raw little-endian tensors) and `checkpoint.json` (the model
config and the run settings: `objective.bidirectional_prefix`, `objective.reset_at_doc_boundaries`),
and the corpus as schemas/README.md describes it. Runs the forward pass of either architecture in
float64:

- a stack: token embedding, residual blocks, a final RMSNorm with gain;
- an attention block: x + O · attn(Q, K, V) with the block input RMS-normed with a gain; Q, K, V
  projections each RMS-normed per head without a gain; Q and K rotated by RoPE (half-split
  pairing, angle pos · base^(-i / (head_dim/2))); softmax(Q Kᵀ / sqrt(head_dim)) over the visible
  keys; for RedLLM each head's output RMS-normed per head before O;
- an FFN block: x + down(silu(gate · n) ⊙ up · n);
- logits: final hidden · Eᵀ / sqrt(d_model) (tied embeddings).

For each pair (L, k) every row (trailing padding dropped when the padding id differs from the
end-of-document id) of at least L tokens is cut to its first L tokens, and the tokens [k, L) are
scored:
- DecLLM reads tokens [0, L-1) at positions 0..L-1, causal; with a bidirectional prefix the
  tokens [0, k) also see each other (DecLLM + BiAttn);
- RedLLM's encoder reads [0, k) at positions 0..k, bidirectional; its decoder reads tokens
  [k-1, L-1) at positions k..L (continuous positions), causal self-attention and
  cross-attention to the encoder output.
With resets at document boundaries, a token (indexed by the row token it reads) attends only
to keys of its own document (a row's documents start at 0 and at each `doc_starts` entry).

Prints one JSON object: per pair the rows scored and skipped, per source the summed loss and
tokens, the token-pooled loss, the mean over sources of the per-source losses and perplexities,
and the mean log-probability per position bucket floor(log2 t).
"""

import argparse
import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import pyarrow.ipc
except ImportError as e:  # the test fails with this line rather than skipping
    print(
        f"eval_reference.py: {e}; install the test requirements: "
        "python3 -m pip install -r tests/python/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(2)

MAGIC = b"RPTOKENS"
HEADER = struct.Struct("<8sIIQ8s")


def fail(message):
    print(f"eval_reference.py: {message}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size].decode("utf-8"))
    base = 8 + size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            fail(f"{path}: tensor {name} has dtype {entry['dtype']}, expected F32")
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype="<f4")
        tensors[name] = array.reshape(entry["shape"]).astype(np.float64)
    return tensors


def read_rows(directory):
    """Every example in corpus order: (tokens, source, doc_starts)."""
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    dtype = {"u16": "<u2", "u32": "<u4"}[manifest["token_dtype"]]
    tok = manifest["tokenizer"]
    trim = tok["pad_id"] != tok["eod_id"]
    rows = []
    for entry in manifest["shards"]:
        path = os.path.join(directory, entry["tokens_file"])
        with open(path, "rb") as f:
            magic, _version, _width, count, _reserved = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC:
            fail(f"{path}: wrong magic")
        tokens = np.fromfile(path, dtype=dtype, offset=manifest["header_bytes"], count=count)
        with pyarrow.ipc.open_file(os.path.join(directory, entry["index_file"])) as reader:
            table = reader.read_all()
        cols = [table.column(n).to_pylist() for n in ("offset", "length", "source", "doc_starts")]
        for offset, length, source, doc_starts in zip(*cols):
            row = tokens[offset : offset + length].astype(np.int64)
            if trim:
                n = len(row)
                while n > 0 and row[n - 1] == tok["pad_id"]:
                    n -= 1
                row = row[:n]
            if len(row) == 0:
                continue
            rows.append((row, source, list(doc_starts or [])))
    return rows, manifest


class Model:
    def __init__(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "checkpoint.json"), encoding="utf-8") as f:
            meta = json.load(f)
        self.config = meta["model"]
        objective = (meta.get("settings") or {}).get("objective") or {}
        self.arch = self.config["arch"]
        self.bidirectional = self.arch == "dec" and bool(objective.get("bidirectional_prefix"))
        self.reset = bool(objective.get("reset_at_doc_boundaries"))
        self.w = read_safetensors(os.path.join(checkpoint_dir, "model.safetensors"))
        c = self.config
        self.d, self.heads, self.hd = c["d_model"], c["n_heads"], c["head_dim"]
        self.eps = float(c["norm_eps"])
        half = self.hd // 2
        self.inv_freq = float(c["rope_base"]) ** (-np.arange(half, dtype=np.float64) / half)

    def rmsnorm(self, x, gain=None):
        width = x.shape[-1]
        y = x / np.sqrt((x * x).sum(-1, keepdims=True) / width + self.eps)
        return y if gain is None else y * gain

    def heads_norm(self, x):
        return self.rmsnorm(x.reshape(len(x), self.heads, self.hd)).reshape(len(x), -1)

    def rope(self, x, positions):
        half = self.hd // 2
        angle = np.asarray(positions, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        h = x.reshape(len(x), self.heads, self.hd)
        a, b = h[..., :half], h[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1).reshape(len(x), -1)

    def attention(self, x, prefix, src, q_pos, k_pos, mask, out_norm):
        """One attention block; `src` is None for self-attention (keys from the normed input)."""
        w = self.w
        n = self.rmsnorm(x, w[prefix + "_norm.weight"])
        kv = n if src is None else src
        q = self.rope(self.heads_norm(n @ w[prefix + ".q_proj.weight"].T), q_pos)
        k = self.rope(self.heads_norm(kv @ w[prefix + ".k_proj.weight"].T), k_pos)
        v = self.heads_norm(kv @ w[prefix + ".v_proj.weight"].T)
        out = np.zeros_like(q)
        for h in range(self.heads):
            cols = slice(h * self.hd, (h + 1) * self.hd)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(self.hd)
            s = np.where(mask, s, -np.inf)
            seen = mask.any(1)
            m = np.where(seen, s.max(1, initial=-np.inf, where=mask), 0.0)
            p = np.where(mask, np.exp(s - m[:, None]), 0.0)
            total = p.sum(1)
            p = p / np.where(seen, total, 1.0)[:, None]
            out[:, cols] = p @ v[:, cols]
        if out_norm:
            out = self.heads_norm(out)
        return x + out @ w[prefix + ".o_proj.weight"].T

    def ffn(self, x, prefix):
        w = self.w
        n = self.rmsnorm(x, w[prefix + "_norm.weight"])
        g = n @ w[prefix + ".gate_proj.weight"].T
        u = n @ w[prefix + ".up_proj.weight"].T
        return x + (g / (1.0 + np.exp(-g)) * u) @ w[prefix + ".down_proj.weight"].T

    def token_losses(self, row, doc_starts, k):
        """Cross-entropy of each token [k, L) of `row` (L = len(row))."""
        c, w = self.config, self.w
        length = len(row)
        starts = sorted(s for s in doc_starts if s < length)
        doc = np.searchsorted(np.asarray(starts, dtype=np.int64), np.arange(length), side="right")

        def same_doc(q_idx, k_idx):
            if not self.reset:
                return np.ones((len(q_idx), len(k_idx)), dtype=bool)
            return doc[q_idx][:, None] == doc[k_idx][None, :]

        if self.arch == "dec":
            idx = np.arange(length - 1)
            i, j = idx[:, None], idx[None, :]
            mask = j <= i
            if self.bidirectional:
                mask = mask | ((i < k) & (j < k))
            mask = mask & same_doc(idx, idx)
            x = w["embed_tokens.weight"][row[idx]]
            for layer in range(c["layers"]):
                p = f"layers.{layer}"
                x = self.attention(x, p + ".attn", None, idx, idx, mask, False)
                x = self.ffn(x, p + ".mlp")
            hidden = self.rmsnorm(x, w["final_norm.weight"])[k - 1 :]
        else:
            enc_idx = np.arange(k)
            enc_mask = same_doc(enc_idx, enc_idx)
            e = w["embed_tokens.weight"][row[enc_idx]]
            for layer in range(c["encoder_layers"]):
                p = f"encoder.layers.{layer}"
                e = self.attention(e, p + ".attn", None, enc_idx, enc_idx, enc_mask, True)
                e = self.ffn(e, p + ".mlp")
            e = self.rmsnorm(e, w["encoder.final_norm.weight"])
            dec_idx = np.arange(k - 1, length - 1)
            dec_pos = dec_idx + 1
            n = len(dec_idx)
            self_mask = (np.arange(n)[None, :] <= np.arange(n)[:, None]) & same_doc(dec_idx, dec_idx)
            cross_mask = same_doc(dec_idx, enc_idx)
            x = w["embed_tokens.weight"][row[dec_idx]]
            for layer in range(c["decoder_layers"]):
                p = f"decoder.layers.{layer}"
                x = self.attention(x, p + ".self_attn", None, dec_pos, dec_pos, self_mask, True)
                x = self.attention(x, p + ".cross_attn", e, dec_pos, enc_idx, cross_mask, True)
                x = self.ffn(x, p + ".mlp")
            hidden = self.rmsnorm(x, w["decoder.final_norm.weight"])
        logits = hidden @ w["embed_tokens.weight"].T / math.sqrt(self.d)
        top = logits.max(1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        targets = row[k:length]
        return log_z - logits[np.arange(len(targets)), targets]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("corpus")
    parser.add_argument("--lengths", required=True)
    parser.add_argument("--prefix-len", required=True)
    parser.add_argument("--max-rows", type=int)
    args = parser.parse_args()
    lengths = sorted({int(v) for v in args.lengths.split(",")})
    prefixes = sorted({int(v) for v in args.prefix_len.split(",")})
    model = Model(args.checkpoint)
    rows, _manifest = read_rows(args.corpus)
    if args.max_rows is not None:
        rows = rows[: args.max_rows]
    results = []
    for length in lengths:
        for k in prefixes:
            if not 1 <= k < length:
                fail(f"prefix {k} is not in [1, {length})")
            sources, buckets, scored, skipped = {}, {}, 0, 0
            for row, source, doc_starts in rows:
                if len(row) < length:
                    skipped += 1
                    continue
                ce = model.token_losses(row[:length], doc_starts, k)
                entry = sources.setdefault(source, {"loss_sum": 0.0, "tokens": 0, "rows": 0})
                entry["loss_sum"] += float(ce.sum())
                entry["tokens"] += len(ce)
                entry["rows"] += 1
                for i, value in enumerate(ce):
                    t = k + i
                    b = t.bit_length() - 1
                    slot = buckets.setdefault(b, [0.0, 0])
                    slot[0] -= float(value)
                    slot[1] += 1
                scored += 1
            for entry in sources.values():
                entry["loss"] = entry["loss_sum"] / entry["tokens"]
            total = sum(e["loss_sum"] for e in sources.values())
            tokens = sum(e["tokens"] for e in sources.values())
            losses = [e["loss"] for e in sources.values()]
            results.append(
                {
                    "length": length,
                    "prefix_len": k,
                    "rows": scored,
                    "skipped_short": skipped,
                    "loss": total / tokens if tokens else None,
                    "source_average_loss": sum(losses) / len(losses) if losses else None,
                    "source_average_ppl": sum(math.exp(v) for v in losses) / len(losses)
                    if losses
                    else None,
                    "sources": sources,
                    "positions": [
                        {"bucket": b, "tokens": n, "mean_logprob": s / n}
                        for b, (s, n) in sorted(buckets.items())
                    ],
                }
            )
    json.dump({"arch": model.arch, "bidirectional_prefix": model.bidirectional, "results": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
