#!/usr/bin/env python3
"""Checks a model directory written by `redpack export --format hf` against the reference file
`redpack export --reference` writes (the CPU backend's log-probabilities on a probe batch).

Usage: python3 tests/python/check_hf_export.py MODEL_DIR REFERENCE.json [--torch]

Without --torch (numpy only): checks that the directory holds every file, that config.json's
auto_map names the bundled classes, that model.safetensors holds exactly the tensors the config
implies with their shapes, then runs the model written here from the exported layout alone
(config.json + model.safetensors, parsed with numpy) and compares its log-probabilities with the
reference.

With --torch: loads the directory with transformers (AutoModelForCausalLM or
AutoModelForSeq2SeqLM, trust_remote_code=True), scores the probe rows together in one padded
batch and compares with the reference, runs greedy `generate` against a greedy loop over full
forward passes, and a padded batch of prompts against each prompt alone.

Prints `ok: ...` lines; exits 1 with a message on the first disagreement.
"""

import json
import os
import struct
import sys

import numpy as np

FILES = [
    "config.json",
    "configuration_redpack.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_redpack.py",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]
TOLERANCE = 2e-5


def fail(message):
    print(f"check_hf_export.py: {message}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    """name -> float32 array, from the format's spec: u64 header length, JSON header, data."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            fail(f"{path}: {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        array = np.frombuffer(blob[base + start : base + end], dtype="<f4")
        tensors[name] = array.reshape(info["shape"])
    return header.get("__metadata__", {}), tensors


def expected_shapes(c):
    d, f = c["hidden_size"], c["intermediate_size"]
    da = c["num_attention_heads"] * c["head_dim"]
    shapes = {"model.embed_tokens.weight": [c["vocab_size"], d]}

    def layer(prefix, cross):
        shapes[f"{prefix}.input_layernorm.weight"] = [d]
        shapes[f"{prefix}.post_attention_layernorm.weight"] = [d]
        blocks = ["self_attn"] + (["cross_attn"] if cross else [])
        if cross:
            shapes[f"{prefix}.cross_attn_layernorm.weight"] = [d]
        for block in blocks:
            for p in "qkv":
                shapes[f"{prefix}.{block}.{p}_proj.weight"] = [da, d]
            shapes[f"{prefix}.{block}.o_proj.weight"] = [d, da]
        shapes[f"{prefix}.mlp.gate_proj.weight"] = [f, d]
        shapes[f"{prefix}.mlp.up_proj.weight"] = [f, d]
        shapes[f"{prefix}.mlp.down_proj.weight"] = [d, f]

    if c["arch"] == "dec":
        for i in range(c["num_hidden_layers"]):
            layer(f"model.layers.{i}", False)
        shapes["model.norm.weight"] = [d]
    else:
        for i in range(c["num_encoder_layers"]):
            layer(f"model.encoder.layers.{i}", False)
        shapes["model.encoder.norm.weight"] = [d]
        for i in range(c["num_decoder_layers"]):
            layer(f"model.decoder.layers.{i}", True)
        shapes["model.decoder.norm.weight"] = [d]
    return shapes


class NumpyModel:
    """The model from config.json and the exported weights, float32, one row at a time."""

    def __init__(self, config, weights):
        self.c = config
        self.w = weights
        self.eps = np.float32(config["rms_norm_eps"])
        self.heads = config["num_attention_heads"]
        self.hd = config["head_dim"]

    def norm(self, x, gain=None):
        x = x.astype(np.float32)
        inv = np.float32(1.0) / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        y = x * inv
        return y if gain is None else y * gain

    def rope(self, x, positions):
        half = self.hd // 2
        inv_freq = float(self.c["rope_theta"]) ** (-np.arange(half, dtype=np.float64) / half)
        angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def attention(self, p, x, src, q_pos, k_pos, allowed):
        t, tk = x.shape[0], src.shape[0]
        heads = lambda y, n: self.norm(y.reshape(n, self.heads, self.hd))
        q = self.rope(heads(x @ self.w[f"{p}.q_proj.weight"].T, t), q_pos)
        k = self.rope(heads(src @ self.w[f"{p}.k_proj.weight"].T, tk), k_pos)
        v = heads(src @ self.w[f"{p}.v_proj.weight"].T, tk)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(self.hd))
        scores = np.where(allowed[None], scores, -np.inf)
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v)
        if self.c["attention_output_norm"]:
            out = self.norm(out)
        return out.reshape(t, -1) @ self.w[f"{p}.o_proj.weight"].T

    def mlp(self, p, x):
        g = x @ self.w[f"{p}.gate_proj.weight"].T
        u = x @ self.w[f"{p}.up_proj.weight"].T
        return (g / (1 + np.exp(-g)) * u) @ self.w[f"{p}.down_proj.weight"].T

    def layer(self, p, x, pos, allowed, memory=None):
        h = self.norm(x, self.w[f"{p}.input_layernorm.weight"])
        x = x + self.attention(f"{p}.self_attn", h, h, pos, pos, allowed)
        if memory is not None:
            enc, enc_pos = memory
            h = self.norm(x, self.w[f"{p}.cross_attn_layernorm.weight"])
            cross = np.ones((x.shape[0], enc.shape[0]), dtype=bool)
            x = x + self.attention(f"{p}.cross_attn", h, enc, pos, enc_pos, cross)
        h = self.norm(x, self.w[f"{p}.post_attention_layernorm.weight"])
        return x + self.mlp(f"{p}.mlp", h)

    def stack(self, prefix, tokens, pos, allowed, layers, memory=None):
        x = self.w["model.embed_tokens.weight"][np.asarray(tokens)]
        for i in range(layers):
            x = self.layer(f"{prefix}layers.{i}", x, pos, allowed, memory)
        return self.norm(x, self.w[f"{prefix}norm.weight"])

    def logits(self, hidden):
        embed = self.w["model.embed_tokens.weight"]
        return (hidden @ embed.T) * np.float32(self.c["hidden_size"] ** -0.5)

    def logprobs(self, row):
        tokens, k, first = row["tokens"], row["prefix_len"], row["first_target"]
        n = len(tokens)
        if self.c["arch"] == "dec":
            inputs = tokens[: n - 1]
            t = len(inputs)
            idx = np.arange(t)
            allowed = idx[:, None] >= idx[None, :]
            if self.c["bidirectional_prefix"]:
                allowed |= (idx[:, None] < k) & (idx[None, :] < k)
            hidden = self.stack("model.", inputs, idx, allowed, self.c["num_hidden_layers"])
            first_predicted = 1
        else:
            enc_allowed = np.ones((k, k), dtype=bool)
            enc = self.stack(
                "model.encoder.", tokens[:k], np.arange(k), enc_allowed, self.c["num_encoder_layers"]
            )
            inputs = tokens[k - 1 : n - 1]
            t = len(inputs)
            idx = np.arange(t)
            hidden = self.stack(
                "model.decoder.",
                inputs,
                k + idx,
                idx[:, None] >= idx[None, :],
                self.c["num_decoder_layers"],
                memory=(enc, np.arange(k)),
            )
            first_predicted = k
        logits = self.logits(hidden).astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        return [
            logits[i - first_predicted, tokens[i]] - logz[i - first_predicted]
            for i in range(first, n)
        ]


def compare(name, got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        fail(f"{name}: {got.shape[0]} log-probabilities, the reference has {want.shape[0]}")
    worst = float(np.abs(got - want).max())
    if not worst <= TOLERANCE:
        fail(f"{name}: log-probabilities differ from the reference by up to {worst:.3g}")
    return worst


def check_numpy(model_dir, reference):
    missing = [f for f in FILES if not os.path.isfile(os.path.join(model_dir, f))]
    if missing:
        fail(f"{model_dir}: missing {', '.join(missing)}")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    red = config["arch"] == "red"
    auto = "AutoModelForSeq2SeqLM" if red else "AutoModelForCausalLM"
    cls = "RedpackForSeq2SeqLM" if red else "RedpackForCausalLM"
    if config["auto_map"].get(auto) != f"modeling_redpack.{cls}":
        fail(f"config.json: auto_map {config['auto_map']} does not map {auto} to {cls}")
    if config["arch"] != reference["arch"]:
        fail(f"config.json: arch {config['arch']}, the reference is {reference['arch']}")
    if config["bidirectional_prefix"] != reference["bidirectional_prefix"]:
        fail("config.json: bidirectional_prefix disagrees with the reference")
    metadata, weights = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    if metadata.get("format") != "pt":
        fail(f"model.safetensors: metadata {metadata} lacks format=pt")
    shapes = expected_shapes(config)
    if set(shapes) != set(weights):
        fail(
            "model.safetensors: tensors differ from the config's: missing "
            f"{sorted(set(shapes) - set(weights))}, unexpected {sorted(set(weights) - set(shapes))}"
        )
    for name, shape in shapes.items():
        if list(weights[name].shape) != shape:
            fail(f"model.safetensors: {name} has shape {list(weights[name].shape)}, expected {shape}")
    model = NumpyModel(config, weights)
    worst = 0.0
    for r, row in enumerate(reference["rows"]):
        worst = max(worst, compare(f"numpy row {r}", model.logprobs(row), row["logprobs"]))
    print(f"ok: numpy {config['arch']} forward from the exported layout, worst |diff| {worst:.3g}")


def check_torch(model_dir, reference):
    import torch
    import transformers

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    red = config["arch"] == "red"
    auto = transformers.AutoModelForSeq2SeqLM if red else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, trust_remote_code=True).eval()
    rows = reference["rows"]
    pad = config["pad_token_id"]
    worst = 0.0
    with torch.no_grad():
        if red:
            enc_len = max(r["prefix_len"] for r in rows)
            dec_len = max(len(r["tokens"]) - r["prefix_len"] for r in rows)
            ids = torch.full((len(rows), enc_len), pad)
            mask = torch.zeros_like(ids)
            labels = torch.full((len(rows), dec_len), -100)
            for b, r in enumerate(rows):
                k = r["prefix_len"]
                ids[b, :k] = torch.tensor(r["tokens"][:k])
                mask[b, :k] = 1
                target = r["tokens"][k:]
                labels[b, : len(target)] = torch.tensor(target)
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            logp = torch.log_softmax(logits.double(), -1)
            for b, r in enumerate(rows):
                k, tokens = r["prefix_len"], r["tokens"]
                got = [logp[b, i - k, tokens[i]].item() for i in range(k, len(tokens))]
                worst = max(worst, compare(f"torch row {b}", got, r["logprobs"]))
        else:
            # Left padding, as batched generation uses: positions follow the attention mask.
            width = max(len(r["tokens"]) for r in rows) - 1
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            prefix = []
            for b, r in enumerate(rows):
                inputs = r["tokens"][:-1]
                ids[b, width - len(inputs) :] = torch.tensor(inputs)
                mask[b, width - len(inputs) :] = 1
                prefix.append(width - len(inputs) + r["prefix_len"])
            out = model(input_ids=ids, attention_mask=mask, prefix_lengths=torch.tensor(prefix))
            logp = torch.log_softmax(out.logits.double(), -1)
            for b, r in enumerate(rows):
                tokens, shift = r["tokens"], width - (len(r["tokens"]) - 1)
                got = [
                    logp[b, shift + i - 1, tokens[i]].item()
                    for i in range(r["first_target"], len(tokens))
                ]
                worst = max(worst, compare(f"torch row {b}", got, r["logprobs"]))
        print(f"ok: transformers {config['arch']} logits match the reference, worst |diff| {worst:.3g}")

        # Greedy generation against a greedy loop of full forward passes.
        row = rows[0]
        k, steps = row["prefix_len"], 6
        prompt = torch.tensor([row["tokens"][:k]])
        generated = model.generate(
            prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False
        )
        new = generated[0, -steps:].tolist()
        if red:
            dec = [config["decoder_start_token_id"]]
            for _ in range(steps):
                logits = model(input_ids=prompt, decoder_input_ids=torch.tensor([dec])).logits
                dec.append(int(logits[0, -1].argmax()))
            want = dec[1:]
        else:
            seq = prompt[0].tolist()
            for _ in range(steps):
                logits = model(
                    input_ids=torch.tensor([seq]), prefix_lengths=torch.tensor([k])
                ).logits
                seq.append(int(logits[0, -1].argmax()))
            want = seq[k:]
        if new != want:
            fail(f"generate gave {new}, the greedy loop {want}")
        print(f"ok: transformers generate, {steps} greedy tokens as a full-recompute loop")

        # A padded batch of prompts generates what each prompt generates alone (DecLLM pads on
        # the left, RedLLM on the right, as tokenizer_config.json says).
        prompts = [r["tokens"][: r["prefix_len"]] for r in rows]
        alone = []
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
            alone.append(out[0, -steps:].tolist())
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            at = slice(0, len(p)) if red else slice(width - len(p), width)
            ids[b, at] = torch.tensor(p)
            mask[b, at] = 1
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False
        )
        batched = [row[-steps:] for row in out.tolist()]
        if batched != alone:
            fail(f"a padded batch generated {batched}, the prompts alone {alone}")
        print(f"ok: transformers generate on a padded batch of {len(prompts)} prompts")


def main():
    args = [a for a in sys.argv[1:] if a != "--torch"]
    if len(args) != 2:
        fail("usage: check_hf_export.py MODEL_DIR REFERENCE.json [--torch]")
    with open(args[1]) as f:
        reference = json.load(f)
    if "--torch" in sys.argv[1:]:
        check_torch(args[0], reference)
    else:
        check_numpy(args[0], reference)


if __name__ == "__main__":
    main()
