#!/usr/bin/env python3
"""Runs an exported model through the lm-evaluation-harness's Hugging Face backend.

Usage: python3 tests/python/check_lm_eval.py MODEL_DIR

Loads MODEL_DIR with `lm_eval.models.huggingface.HFLM` (`backend="seq2seq"` for a RedLLM,
`"causal"` for a DecLLM, `trust_remote_code=True`, batches of 2 so that rows are padded), scores
three log-likelihood requests and compares each with the same continuation scored by one direct
forward call of the model, then runs one `generate_until` request. Needs torch, transformers,
accelerate and lm_eval. Prints `ok: ...`; exits 1 on a disagreement.
"""

import json
import os
import sys

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

REQUESTS = [
    ("The cat sat on", " the mat"),
    ("Question: what is two plus two? Answer:", " four"),
    ("Hello", " world, how are you"),
]


def fail(message):
    print(f"check_lm_eval.py: {message}", file=sys.stderr)
    sys.exit(1)


def direct_logprob(model, tokenizer, seq2seq, context, continuation):
    c = tokenizer(context, add_special_tokens=False).input_ids
    t = tokenizer(continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        if seq2seq:
            logits = model(input_ids=torch.tensor([c]), labels=torch.tensor([t])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            return sum(logp[i, t[i]].item() for i in range(len(t)))
        ids = c + t
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        return sum(logp[len(c) - 1 + i, t[i]].item() for i in range(len(t)))


def main():
    if len(sys.argv) != 2:
        fail("usage: check_lm_eval.py MODEL_DIR")
    model_dir = sys.argv[1]
    with open(os.path.join(model_dir, "config.json")) as f:
        seq2seq = json.load(f)["arch"] == "red"
    lm = HFLM(
        pretrained=model_dir,
        backend="seq2seq" if seq2seq else "causal",
        trust_remote_code=True,
        batch_size=2,
        device="cpu",
    )
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i)
        for i, r in enumerate(REQUESTS)
    ]
    scores = lm.loglikelihood(requests)
    for (context, continuation), (logprob, _) in zip(REQUESTS, scores):
        want = direct_logprob(lm.model, lm.tokenizer, seq2seq, context, continuation)
        if abs(logprob - want) > 1e-3:
            fail(f"{context!r} + {continuation!r}: the harness gives {logprob}, the model {want}")
    generated = lm.generate_until(
        [
            Instance(
                request_type="generate_until",
                doc={},
                arguments=("The cat sat on", {"until": ["\n"], "max_gen_toks": 8}),
                idx=0,
            )
        ]
    )
    if len(generated) != 1 or not isinstance(generated[0], str):
        fail(f"generate_until returned {generated!r}")
    kind = "seq2seq" if seq2seq else "causal"
    print(f"ok: lm-evaluation-harness ({kind}): {len(REQUESTS)} log-likelihoods, generate_until")


if __name__ == "__main__":
    main()
