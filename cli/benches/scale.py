#!/usr/bin/env python3
"""Scale benchmark of `redpack build-corpus`: peak memory and throughput against corpus size.

Generates synthetic corpora (`redpack synth-corpus`: short prose documents with planted exact
and near duplicate clusters spanning files) of each size given, builds each one in a child
process, and prints one row per size: documents, text MB, seconds, docs/s, MB/s of text, the
child's peak resident memory and the dedup keys spilled to the work directory, then the ratios of
the largest to the smallest size. Linear time shows as a time ratio near the size ratio; flat
memory as an RSS ratio near 1.

Uses the release binary and builds nothing itself; first run, from the repository root:

    cargo build --release
    python3 cli/benches/scale.py --docs 1000000 10000000

`--stages-only scan,dedup` runs the build stage by stage with `--stage` (plan, then each stage up
to the last one named) and reports each stage on its own row, so the dedup memory can be shown at
sizes whose tokenize stage (about 300K tokens/s per core) would take too long. `--memory-limit`
is passed to build-corpus (default: build-corpus's own, 4GiB); a small one such as 256MiB shows
the external sorters spilling to keep memory under it.

Peak RSS is that of the child alone: `os.wait4` returns the rusage of the one process it reaps
(ru_maxrss, KiB on Linux), so each run's figure is its own maximum, not the running maximum
that `resource.getrusage(RUSAGE_CHILDREN)` keeps over all children. Python 3 standard library
only; Linux (or any Unix with wait4).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "redpack"
STAGES = ["plan", "scan", "dedup", "tokenize", "finish"]
MIB = 1024 * 1024


def run(argv, label):
    """Runs argv to completion; returns (stdout text, seconds, peak RSS in MiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        sys.exit(f"{label} failed (exit {child.returncode}): {' '.join(map(str, argv))}\n{stderr}")
    return stdout, seconds, usage.ru_maxrss / 1024


def generate(directory, docs, args):
    """Writes (or reuses) a synthetic corpus of `docs` documents; returns its synth.json."""
    summary = directory / "synth.json"
    if summary.exists() and not args.regenerate:
        truth = json.loads(summary.read_text())
        if truth["docs"] == docs and truth["seed"] == args.seed:
            print(f"reusing {directory} ({docs} documents)", file=sys.stderr)
            return truth, None
    argv = [BINARY, "synth-corpus", "--out", directory, "--docs", str(docs),
            "--seed", str(args.seed), "--json"]
    stdout, seconds, rss = run(argv, "synth-corpus")
    truth = json.loads(stdout)
    print(f"generated {docs} documents in {seconds:.1f} s ({docs / seconds:,.0f} docs/s, "
          f"{truth['bytes'] / 1e6:.0f} MB on disk, peak RSS {rss:.0f} MiB)", file=sys.stderr)
    return truth, {"seconds": seconds, "rss": rss}


def build_args(corpus, out, args):
    argv = [BINARY, "build-corpus", "--input", corpus, "--out", out,
            "--tokenizer", args.tokenizer, "--json"]
    if args.memory_limit:
        argv += ["--memory-limit", args.memory_limit]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def key_bytes(out):
    """Bytes of dedup keys (fingerprints, band keys, signatures) the scan left in the work dir."""
    scan = Path(out) / ".redpack-work" / "scan"
    if not scan.is_dir():
        return 0
    return sum(p.stat().st_size for p in scan.iterdir() if p.suffix in (".fp", ".band", ".sig"))


def measure(docs, args):
    """Generates and builds one size; returns its rows (one, or one per stage)."""
    corpus = args.work / f"synth-{docs}"
    truth, _ = generate(corpus, docs, args)
    out = args.work / f"out-{docs}"
    shutil.rmtree(out, ignore_errors=True)
    text_mb = truth["text_bytes"] / 1e6
    rows = []
    if args.stages_only:
        last = max(STAGES.index(s) for s in args.stages_only)
        keys = 0
        for stage in STAGES[: last + 1]:
            _, seconds, rss = run(build_args(corpus, out, args) + ["--stage", stage],
                                  f"stage {stage}")
            keys = max(keys, key_bytes(out))
            rows.append({"docs": docs, "stage": stage, "text_mb": text_mb, "seconds": seconds,
                         "rss": rss, "keys_mib": keys / MIB})
        counts = None
    else:
        stdout, seconds, rss = run(build_args(corpus, out, args), "build-corpus")
        report = json.loads(stdout)
        counts = report["counts"]
        rows.append({"docs": docs, "stage": "all", "text_mb": text_mb, "seconds": seconds,
                     "rss": rss, "keys_mib": report["dedup_work_bytes"] / MIB,
                     "tokens": counts["tokens"]})
        print(f"{docs} documents: {counts['exact_duplicates']} exact duplicates removed "
              f"(planted {truth['exact_duplicates']}), {counts['near_duplicates']} near "
              f"(planted {truth['near_duplicates']}), {counts['kept']} kept, "
              f"{counts['tokens']} tokens", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def table(rows):
    head = ["docs", "stage", "text MB", "seconds", "docs/s", "MB/s", "peak RSS MiB",
            "dedup keys MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['docs']:,}", r["stage"], f"{r['text_mb']:.0f}", f"{r['seconds']:.1f}",
                 f"{r['docs'] / r['seconds']:,.0f}", f"{r['text_mb'] / r['seconds']:.1f}",
                 f"{r['rss']:.0f}", f"{r['keys_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows, sizes):
    """Largest over smallest size, per stage: (docs ratio, time ratio, RSS ratio)."""
    small, large = min(sizes), max(sizes)
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pick = {r["docs"]: r for r in rows if r["stage"] == stage}
        if small in pick and large in pick and small != large:
            a, b = pick[small], pick[large]
            out.append(f"{stage}: {large:,}/{small:,} documents = {large / small:.0f}x; "
                       f"time {b['seconds'] / a['seconds']:.2f}x, "
                       f"peak RSS {b['rss'] / a['rss']:.2f}x")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="corpus sizes in documents (default: 1000000 10000000)")
    parser.add_argument("--work", type=Path, default=ROOT / "target" / "scale",
                        help="where corpora and builds go (default: target/scale); generated "
                             "corpora are kept there and reused")
    parser.add_argument("--tokenizer", default=str(ROOT / "tests" / "fixtures" /
                                                   "tokenizers" / "gpt2.json"))
    parser.add_argument("--memory-limit", help="passed to build-corpus (e.g. 256MiB)")
    parser.add_argument("--threads", type=int, help="passed to build-corpus")
    parser.add_argument("--stages-only", type=lambda s: [x for x in s.split(",") if x],
                        help="comma-separated stages (e.g. scan,dedup): run plan and each stage "
                             "up to the last named with --stage, one row per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regenerate", action="store_true", help="do not reuse corpora")
    parser.add_argument("--keep", action="store_true", help="keep the built corpora")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    if not BINARY.exists():
        sys.exit(f"{BINARY} not found: run `cargo build --release` first")
    for stage in args.stages_only or []:
        if stage not in STAGES:
            sys.exit(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for docs in args.docs:
        rows += measure(docs, args)
    print(f"memory limit: {args.memory_limit or 'default (4GiB)'}; "
          f"{os.cpu_count()} CPUs; binary {BINARY}")
    print(table(rows))
    for line in ratios(rows, args.docs):
        print(line)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
