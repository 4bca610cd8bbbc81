"""The real local training path, timed on whatever device there is (the GPU check, issue #6).

    bench/gpu_train_check.sh                       # on the lent GPU machine (bench/README.md)
    .venv/bin/python bench/gpu_train_check.py --tiny --examples 64 --max-steps 5 \\
        --runs lora16,full --out /tmp/g.json     # CPU smoke run, about a minute

One run: N captures of the one-tool task (``bench/tool_task.py``) written to a temporary SQLite
store, a dataset built from them (validation 0.1) and exported as ``hf-prompt-completion``
train/validation JSONL, a job directory written by ``LocalBackend._prepare`` itself (the same
``job.json`` a ``stillroom train start --backend local`` writes), then ``python -m
proxy.training.worker JOB_DIR`` in the foreground, once per configuration in ``--runs``
(``lora16``, ``lora8``, ``full``, …; each a fresh process, so each includes CUDA start-up, like
the "1st in process" rows of shared/reference/training.md §b.6).

The base model is ``--model DIR`` (a local Hugging Face directory), or by default random weights
with Qwen2.5-0.5B's shapes (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads, a
151,936-row tied embedding and lm_head, bf16 like the real checkpoint) and a small byte-level
BPE tokenizer trained on the task's text with Stillroom's ChatML template, so step times are
representative without downloading anything; ``--tiny`` uses the CI model of
``tests/_tiny_model.py`` instead. Nothing is downloaded.

Prints a table like §b.6 and writes a JSON summary (``--out``, rewritten after every run, so a
run cut short still leaves the ones before it): device, versions, model shape, data and token
counts, and per run: steps, train seconds, examples/s, tokens/s (mean tokens of a train example,
by the student's tokenizer and chat template, × examples/s), peak memory (``metrics.json``
``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` in the worker on CUDA, peak RSS on
the CPU), first/train/eval loss, and the rate after the first step (from the step events'
times: without CUDA start-up, like the "2nd in process" rows of §b.6). ``train_seconds`` is the
Trainer's ``train_runtime``: it includes the first step and the end-of-epoch evaluation. The
student tokenizer (vocabulary ``--vocab``, 512) splits the task's text about 2.3x finer than
tiktoken, so tokens per example are nearer §b.6's 456 than the captures' ~95 tiktoken tokens;
compare runs by tokens/s. Exit status 0 only when every run succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python bench/gpu_train_check.py` without an install

DATASET = "tooltask"
# Qwen2.5-0.5B(-Instruct)'s config.json, less the weights.
QWEN25_05B: dict[str, Any] = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 32_768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
RUN_NAME = re.compile(r"^(full|lora(\d+))$")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    runs = [(name, _hyperparameters(args, rank)) for name, rank in _runs(args)]
    # A `timeout` (bench/gpu_train_check.sh) ends the run in progress and still writes --out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.require_cuda:
        import torch

        if not torch.cuda.is_available():
            print("error: --require-cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="stillroom-gpucheck-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(args.logs) if args.logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"object": "bench.gpu_train_check", "started_at": time.time()}
    try:
        summary["device"] = _device()
        summary["versions"] = _versions()
        print(f"device: {summary['device']['name']}; versions: {summary['versions']}", flush=True)

        started = time.monotonic()
        data = asyncio.run(_make_data(work, args.examples))
        summary["data"] = {k: v for k, v in data.items() if k not in ("train", "validation")}
        summary["data"]["seconds"] = round(time.monotonic() - started, 3)
        print(
            f"data: {args.examples} captures -> {data['train_examples']} train, "
            f"{data['validation_examples']} validation ({summary['data']['seconds']:.1f}s)",
            flush=True,
        )

        started = time.monotonic()
        model_dir, source = _base_model(args, work, data["train"])
        summary["model"] = _model_info(model_dir, source)
        summary["model"]["build_seconds"] = round(time.monotonic() - started, 3)
        summary["data"]["student_tokens"] = _token_lengths(model_dir, data["train"])
        print(f"model: {summary['model']}", flush=True)
        print(f"tokens (student tokenizer): {summary['data']['student_tokens']}", flush=True)

        summary["runs"] = []
        for name, hyper in runs:
            print(f"\n== run {name}: {hyper}", flush=True)
            summary["runs"].append({"run": name, "status": "cut short", "hyperparameters": hyper})
            result = _run(name, hyper, args, work, model_dir, data, logs)
            summary["runs"].pop()  # the placeholder a cut (SIGTERM) leaves in --out
            mean = summary["data"]["student_tokens"]["mean"]
            for rate in ("", "steady_"):
                if result.get(f"{rate}examples_per_second"):
                    per_second = result[f"{rate}examples_per_second"] * mean
                    result[f"{rate}tokens_per_second"] = round(per_second, 1)
            summary["runs"].append(result)
            _write(args.out, summary)
            print(_line(result), flush=True)
    finally:
        summary["finished_at"] = time.time()
        _write(args.out, summary)
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + _table(summary), flush=True)
    if args.out:
        print(f"summary written to {args.out}", flush=True)
    ok = all(run.get("status") == "succeeded" for run in summary.get("runs", []))
    return 0 if ok and summary.get("runs") else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="a local Hugging Face model directory (default: random "
                       "weights with Qwen2.5-0.5B's shapes)")  # fmt: skip
    model.add_argument("--tiny", action="store_true", help="the tests/_tiny_model.py model (CPU)")
    parser.add_argument("--examples", type=int, default=1000, help="captures to make")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2, help="gradient accumulation steps")
    parser.add_argument("--lora-rank", type=int, default=16, help="0: full fine-tuning")
    parser.add_argument("--runs", help="configurations, one worker each: e.g. lora16,full "
                        "(default: one run with --lora-rank)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--learning-rate", type=float, help="default: 2e-4 LoRA, 2e-5 full")
    parser.add_argument("--max-length", type=int, help="default: the local backend's (2048)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weights of the built Qwen-shaped model")  # fmt: skip
    parser.add_argument("--vocab", type=int, default=512,
                        help="BPE vocabulary trained for the built model's tokenizer")  # fmt: skip
    parser.add_argument("--run-timeout", type=float, default=420.0, help="seconds per run")
    parser.add_argument("--require-cuda", action="store_true", help="fail unless CUDA is seen")
    parser.add_argument("--work", help="working directory (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--logs", help="write each run's worker output to DIR/worker-RUN.log")
    parser.add_argument("--out", help="write the JSON summary here")
    return parser.parse_args(argv)


def _runs(args: argparse.Namespace) -> list[tuple[str, int]]:
    if not args.runs:
        return [("full" if args.lora_rank == 0 else f"lora{args.lora_rank}", args.lora_rank)]
    runs = []
    for name in (part.strip() for part in args.runs.split(",") if part.strip()):
        match = RUN_NAME.match(name)
        if match is None:
            raise SystemExit(f"error: run {name!r}: expected full or lora<rank>, e.g. lora16")
        runs.append((name, int(match.group(2) or 0)))
    return runs


def _hyperparameters(args: argparse.Namespace, rank: int) -> dict[str, Any]:
    from proxy.training.local import LocalJobInvalid, check_hyperparameters

    given: dict[str, Any] = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "lora_rank": rank,
    }
    for name, value in (
        ("max_steps", args.max_steps),
        ("learning_rate", args.learning_rate),
        ("max_length", args.max_length),
    ):
        if value is not None:
            given[name] = value
    try:
        return check_hyperparameters("sft", given)  # the backend's own bounds
    except LocalJobInvalid as exc:
        raise SystemExit(f"error: {exc.message}") from None


# -- data -----------------------------------------------------------------------------------------


async def _make_data(work: Path, count: int) -> dict[str, Any]:
    from bench.tool_task import captures
    from storage.datasets import DatasetSpec, create_dataset
    from storage.export import export_dataset
    from storage.query import CaptureFilter
    from storage.sqlite import SQLiteStore

    exports = work / "export"
    exports.mkdir(exist_ok=True)
    async with SQLiteStore(work / "captures.db") as store:
        await store.migrate()
        records = captures(count)
        for start in range(0, len(records), 500):
            await store.write_batch(records[start : start + 500])
        where = CaptureFilter(tags=(("task", "weather"),))
        dataset = await create_dataset(store, DatasetSpec(DATASET, where=where, validation=0.1))
        if not dataset.counts.get("train"):
            raise SystemExit(f"error: no train examples from {count} captures: {dataset.rejected}")
        paths: dict[str, Path | None] = {}
        for split in ("train", "validation"):
            path = exports / f"{split}.jsonl"
            paths[split] = path if dataset.counts.get(split) else None
            if paths[split] is not None:
                await export_dataset(store, DATASET, "hf-prompt-completion", split, path)
    return {
        "captures": count,
        "dataset_hash": dataset.content_hash,
        "train_examples": dataset.counts.get("train", 0),
        "validation_examples": dataset.counts.get("validation", 0),
        "rejected": dataset.rejected,
        "tiktoken_tokens": {s: t.to_json() for s, t in dataset.tokens.items() if t.examples},
        "train": paths["train"],
        "validation": paths["validation"],
    }


# -- the base model -------------------------------------------------------------------------------


def _base_model(args: argparse.Namespace, work: Path, train: Path) -> tuple[Path, str]:
    if args.model:
        path = Path(args.model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: --model {args.model}: no config.json there")
        return path, f"local directory {path}"
    corpus = train.read_text(encoding="utf-8").splitlines()
    if args.tiny:
        from tests._tiny_model import build_tiny_model

        return build_tiny_model(work / "base-tiny", corpus), "tests/_tiny_model.py (random)"
    out = _build_qwen_shaped(work / "base-qwen2.5-0.5b-shape", corpus, args.vocab, args.dtype)
    return out, f"random weights, Qwen2.5-0.5B shapes, {args.dtype}"


def _build_qwen_shaped(out: Path, corpus: list[str], vocab: int, dtype: str) -> Path:
    """Random weights in Qwen2.5-0.5B's shapes with a BPE tokenizer trained on ``corpus`` (as
    tests/_tiny_model.py does); the config keeps the full vocabulary so the embedding and
    lm_head cost what they cost in the real model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from proxy.training.chatml import CHATML_TOOLS_TEMPLATE, END_OF_TURN, SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, eos_token=END_OF_TURN, pad_token="<pad>"
    )
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    config = Qwen2Config(
        **QWEN25_05B,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        use_sliding_window=False,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 0.5B on a GPU: ~1 s
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _model_info(model_dir: Path, source: str) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    fields = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
    )
    info = {name: getattr(config, name, None) for name in fields}
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return (
        {"source": source, "path": str(model_dir), "parameters": parameters}
        | info
        | {"dtype": str(dtype).removeprefix("torch.") if dtype is not None else None}
    )


def _token_lengths(model_dir: Path, train: Path) -> dict[str, Any]:
    """Tokens per train example as the worker counts them (prompt + completion through the
    chat template, tools included), with the student's tokenizer."""
    from transformers import AutoTokenizer

    from proxy.training._local_train import _length
    from proxy.training.chatml import CHATML_TOOLS_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "tools" not in template:  # as the worker does (_local_train._load_base)
        tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    lengths = [
        _length(tokenizer, json.loads(line))
        for line in train.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return {
        "examples": len(lengths),
        "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "max": max(lengths, default=0),
        "total_per_epoch": sum(lengths),
        "tokenizer_size": len(tokenizer),
    }


# -- one run --------------------------------------------------------------------------------------


def _run(
    name: str,
    hyper: dict[str, Any],
    args: argparse.Namespace,
    work: Path,
    model_dir: Path,
    data: dict[str, Any],
    logs: Path | None,
) -> dict[str, Any]:
    from proxy.training import _local_files as files
    from proxy.training.base import TrainingFiles
    from proxy.training.local import LocalBackend
    from storage.jobs import Job, new_job_id

    now = time.time()
    job = Job(
        id=new_job_id(),
        backend="local",
        status="queued",
        dataset=DATASET,
        dataset_hash=data["dataset_hash"],
        base_model=str(model_dir),
        method="sft",
        hyperparameters=hyper,
        created_at=now,
        updated_at=now,
        suffix=f"gpucheck-{name}",
        seed=0,
    )
    training = TrainingFiles(
        train=data["train"],
        validation=data["validation"],
        train_examples=data["train_examples"],
        validation_examples=data["validation_examples"] if data["validation"] else 0,
    )
    backend = LocalBackend(work / "models")
    job_dir = backend.job_dir(job)
    backend._prepare(job, job_dir, training)  # the job directory exactly as a real launch

    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    log_path = (logs / f"worker-{name}.log") if logs else job_dir / files.LOG_FILE
    command = [sys.executable, "-m", "proxy.training.worker", str(job_dir)]
    result: dict[str, Any] = {"run": name, "job_dir": str(job_dir), "hyperparameters": hyper}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=args.run_timeout,
                check=False,
            )
            result["returncode"] = done.returncode
        except subprocess.TimeoutExpired:
            result["returncode"] = None
            result["error"] = f"the worker ran past --run-timeout {args.run_timeout:g}s"
    result["wall_seconds"] = round(time.monotonic() - started, 3)

    state = files.read_json(job_dir / files.STATE_FILE) or {}
    result["status"] = state.get("status") or "no state"
    if state.get("error"):
        result["error"] = state["error"].get("message")
    metrics = files.read_json(job_dir / files.METRICS_FILE) or {}
    for key in (
        "device",
        "steps",
        "train_examples",
        "validation_examples",
        "dropped_examples",
        "train_seconds",
        "total_seconds",
        "examples_per_second",
        "first_loss",
        "train_loss",
        "eval_loss",
        "peak_memory_bytes",
        "versions",
    ):
        result[key] = metrics.get(key)
    if result["peak_memory_bytes"]:
        result["peak_memory_gib"] = round(result["peak_memory_bytes"] / 2**30, 2)
    events, _ = files.read_events(job_dir)
    result["events"] = [e.message for e in events][-12:]
    result |= _steady(events, hyper)
    if result["status"] != "succeeded":
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        result["log_tail"] = tail[-15:]
        print("\n".join(result["log_tail"]), flush=True)
    if not args.keep:  # the merged model of a 0.5B job is a gigabyte; the numbers are kept
        for heavy in (files.MERGED_DIR, files.ADAPTER_DIR, "checkpoints"):
            shutil.rmtree(job_dir / heavy, ignore_errors=True)
    return result


def _steady(events: list[Any], hyper: dict[str, Any]) -> dict[str, Any]:
    """Examples/s from the first logged step to the last, from the events' times: the rate
    without the first step (CUDA start-up, kernel choice); the last step may be partial."""
    steps = [
        (e.data["step"], e.created_at)
        for e in events
        if e.data and "loss" in e.data and isinstance(e.data.get("step"), int)
    ]
    if len(steps) < 2 or steps[-1][0] <= steps[0][0] or steps[-1][1] <= steps[0][1]:
        return {}
    (first, t0), (last, t1) = steps[0], steps[-1]
    per_step = hyper["batch_size"] * hyper["gradient_accumulation_steps"]
    return {
        "steady_from_step": first,
        "steady_seconds": round(t1 - t0, 3),
        "steady_examples_per_second": round((last - first) * per_step / (t1 - t0), 3),
    }


# -- the record -----------------------------------------------------------------------------------


def _device() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "memory_bytes": props.total_memory,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "cpus": os.cpu_count()}


def _versions() -> dict[str, str]:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "datasets": datasets.__version__,
    }


def _write(out: str | None, summary: dict[str, Any]) -> None:
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _show(value: object, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _line(run: dict[str, Any]) -> str:
    if run.get("status") != "succeeded":
        return f"run {run['run']}: {run.get('status')}: {run.get('error')}"
    return (
        f"run {run['run']}: {run['steps']} steps in {run['train_seconds']:.1f}s on "
        f"{run['device']}, {_show(run.get('examples_per_second'), '.1f')} examples/s, "
        f"{_show(run.get('tokens_per_second'), ',.0f')} tokens/s, peak "
        f"{_show(run.get('peak_memory_gib'), '.2f')} GiB, loss {_show(run['first_loss'], '.3f')}"
        f" -> {_show(run['train_loss'], '.3f')} (eval {_show(run['eval_loss'], '.3f')}); "
        f"worker {run['wall_seconds']:.1f}s wall"
    )


def _table(summary: dict[str, Any]) -> str:
    model = summary.get("model", {})
    tokens = summary.get("data", {}).get("student_tokens", {})
    head = (
        f"{summary.get('device', {}).get('name')} | {model.get('source')} "
        f"({_show(model.get('parameters'), ',')} parameters) | "
        f"{summary.get('data', {}).get('train_examples')} train examples, mean "
        f"{tokens.get('mean')} tokens"
    )
    rows = [
        head,
        "",
        "| run | steps | train s | examples/s | tokens/s | tokens/s after step 1 | peak mem GiB "
        "| first loss | train loss | eval loss | worker wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in summary.get("runs", []):
        if run.get("status") != "succeeded":
            rows.append(f"| {run['run']} | {run.get('status')}: {run.get('error')} |")
            continue
        rows.append(
            f"| {run['run']} | {run['steps']} | {run['train_seconds']:.1f} "
            f"| {_show(run.get('examples_per_second'), '.1f')} "
            f"| {_show(run.get('tokens_per_second'), ',.0f')} "
            f"| {_show(run.get('steady_tokens_per_second'), ',.0f')} "
            f"| {_show(run.get('peak_memory_gib'), '.2f')} | {_show(run['first_loss'], '.3f')} "
            f"| {_show(run['train_loss'], '.3f')} | {_show(run['eval_loss'], '.3f')} "
            f"| {run['wall_seconds']:.1f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
