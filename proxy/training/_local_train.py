"""The training itself, inside the training process: TRL SFT or DPO, LoRA or full fine-tuning.

Follows shared/reference/training.md §b: the data is the dataset's ``hf-prompt-completion``
export (SFT: only the captured answer is trained) or its ``openai-dpo`` export turned into
``{prompt, chosen, rejected}`` rows, loaded with the ``Json()`` feature so Arrow never merges
the keys of different tools' arguments. Examples longer than ``max_length`` tokens are dropped,
never truncated. The base model is a local directory or a GGUF file (de-quantised into a plain
model); a tokenizer whose chat template cannot render tools gets Stillroom's ChatML template.
On a GPU it trains in bf16 (fp16 where bf16 is missing), else on the CPU in fp32.

It writes ``adapter/`` (LoRA only), ``merged/`` (the model to serve), ``metrics.json`` and a
model card ``README.md``; loss and progress go to the job's events as they come. Imported only
by ``proxy.training.worker``: it needs the ``train`` extra.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import time
from pathlib import Path
from typing import Any

from proxy.training import _local_files as files
from proxy.training._local_files import TrainingFailed
from proxy.training.chatml import CHATML_TOOLS_TEMPLATE
from proxy.training.local import HYPERPARAMETERS
from storage.export import hf_message


def train(job_dir: Path, spec: dict[str, Any], events: files.EventLog) -> Path:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    params = _hyperparameters(spec)
    method = spec.get("method", "sft")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    events.add(
        f"loading base model {spec['base_model']} on the {device.upper()}",
        data={"device": device, "hyperparameters": params},
    )
    started = time.monotonic()
    model, tokenizer = _load_base(str(spec["base_model"]), events)
    data = job_dir / files.DATA_DIR
    train_rows, dropped = _rows(data / str(spec["train_file"]), method, tokenizer, params)
    valid_rows: list[dict[str, Any]] = []
    if spec.get("validation_file"):
        valid_rows, dropped_valid = _rows(
            data / str(spec["validation_file"]), method, tokenizer, params
        )
        dropped += dropped_valid
    if dropped:
        events.add(
            f"dropped {dropped} examples longer than {params['max_length']} tokens",
            level="warn",
            data={"dropped": dropped, "max_length": params["max_length"]},
        )
    if not train_rows:
        raise TrainingFailed(
            f"no training example fits in max_length {params['max_length']} tokens",
            code="dataset_empty",
        )
    trainer = _trainer(job_dir, method, model, tokenizer, train_rows, valid_rows, params, spec)
    trainer.add_callback(_progress(events, len(train_rows)))
    events.add(
        f"training {method} on {len(train_rows)} examples ({len(valid_rows)} validation), "
        f"{'LoRA rank ' + str(params['lora_rank']) if params['lora_rank'] else 'full fine-tuning'}",
        data={"train_examples": len(train_rows), "validation_examples": len(valid_rows)},
    )
    result = trainer.train()
    eval_loss = None
    if valid_rows:  # the last epoch's evaluation, or one now if no epoch ended (max_steps)
        logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
        eval_loss = _finite(logged[-1] if logged else trainer.evaluate().get("eval_loss"))
    model_dir = _save(job_dir, trainer, tokenizer, params, events)
    runtime = time.monotonic() - started
    train_seconds = float(result.metrics.get("train_runtime", 0.0))
    metrics = {
        "method": method,
        "train_loss": _finite(result.metrics.get("train_loss")),
        "eval_loss": eval_loss,
        "first_loss": trainer.state.log_history[0].get("loss")
        if trainer.state.log_history
        else None,
        "steps": trainer.state.global_step,
        "train_examples": len(train_rows),
        "validation_examples": len(valid_rows),
        "dropped_examples": dropped,
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": _finite(result.metrics.get("train_samples_per_second")),
        "total_seconds": round(runtime, 3),
        "device": device,
        "peak_memory_bytes": _peak_memory(device),
        "versions": _versions(),
    }
    files.write_json(job_dir / files.METRICS_FILE, metrics)
    (job_dir / files.CARD_FILE).write_text(_card(spec, params, metrics, job_dir), encoding="utf-8")
    events.add(
        f"trained {metrics['steps']} steps in {train_seconds:.1f}s: train loss "
        f"{_show(metrics['train_loss'])}, eval loss {_show(eval_loss)}",
        data={k: metrics[k] for k in ("train_loss", "eval_loss", "steps", "peak_memory_bytes")},
    )
    return model_dir


# -- parameters and data --------------------------------------------------------------------------


def _hyperparameters(spec: dict[str, Any]) -> dict[str, Any]:
    given = spec.get("hyperparameters") or {}
    params = {
        name: given.get(name, default) for name, (_, _, _, default) in HYPERPARAMETERS.items()
    }
    if params["learning_rate"] is None:
        params["learning_rate"] = 2e-4 if params["lora_rank"] else 2e-5
    if params["lora_alpha"] is None:
        params["lora_alpha"] = 2 * int(params["lora_rank"] or 0) or 1
    return params


def _rows(
    path: Path, method: str, tokenizer: Any, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    rows, dropped = [], 0
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.strip():
                continue
            row = json.loads(line)
            if method == "dpo":
                row = _dpo_row(row)
            if _length(tokenizer, row) > params["max_length"]:
                dropped += 1
                continue
            rows.append(row)
    return rows, dropped


def _dpo_row(row: dict[str, Any]) -> dict[str, Any]:
    """An ``openai-dpo`` line as TRL's conversational preference row."""
    prompt = row["input"]
    tools = prompt.get("tools")
    return {
        "prompt": [hf_message(m) for m in prompt["messages"]],
        "chosen": [hf_message(m) for m in row["preferred_output"]],
        "rejected": [hf_message(m) for m in row["non_preferred_output"]],
        "tools": json.dumps(tools) if tools else None,
    }


def _length(tokenizer: Any, row: dict[str, Any]) -> int:
    tools = json.loads(row["tools"]) if row.get("tools") else None
    answers = [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]]
    longest = 0
    for answer in answers:
        ids = tokenizer.apply_chat_template(row["prompt"] + answer, tools=tools, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        longest = max(longest, len(ids))
    return longest


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset, Features, Json, List, Value

    columns = [name for name in rows[0] if name != "tools"]
    features = Features({name: List(Json()) for name in columns} | {"tools": Value("string")})
    return Dataset.from_list(rows, features=features)


# -- the model ------------------------------------------------------------------------------------


def _load_base(base: str, events: files.EventLog) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(base)
    try:
        if path.suffix.lower() == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            config = quantized.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # a de-quantised copy saves like any model
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
            model.load_state_dict(quantized.state_dict())
            del quantized
            events.add("de-quantised the GGUF weights to a plain model")
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise TrainingFailed(
            f"could not load the base model {base}: {type(exc).__name__}: "
            f"{first[0] if first else ''}"[:500],
            code="base_model_invalid",
        ) from None
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "tools" not in template:
        tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
        events.add("the base model's chat template has no tools: using Stillroom's ChatML one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _trainer(
    job_dir: Path,
    method: str,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    valid_rows: list[dict[str, Any]],
    params: dict[str, Any],
    spec: dict[str, Any],
) -> Any:
    import torch
    from peft import LoraConfig

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    common: dict[str, Any] = {
        "output_dir": str(job_dir / "checkpoints"),
        "num_train_epochs": params["n_epochs"],
        "max_steps": params["max_steps"] or -1,
        "per_device_train_batch_size": params["batch_size"],
        "per_device_eval_batch_size": params["batch_size"],
        "gradient_accumulation_steps": params["gradient_accumulation_steps"],
        "learning_rate": params["learning_rate"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": params["warmup_ratio"],  # a float below 1 is a ratio (transformers 5)
        "max_length": params["max_length"],
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": cuda and not bf16,
        "gradient_checkpointing": False,
        "eval_strategy": "epoch" if valid_rows else "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": spec.get("seed") or 0,
        "disable_tqdm": True,
    }
    peft_config = None
    if params["lora_rank"]:
        peft_config = LoraConfig(
            r=params["lora_rank"],
            lora_alpha=params["lora_alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    train_set = _dataset(train_rows)
    eval_set = _dataset(valid_rows) if valid_rows else None
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(
            model=model,
            args=DPOConfig(beta=params["beta"], **common),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(
        model=model,
        args=SFTConfig(**common),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _progress(events: files.EventLog, examples: int) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Loss and progress as job events, at most about 50 per run (and the last step)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            total = state.max_steps or 1
            every = max(1, total // 50)
            step = state.global_step
            if "eval_loss" in logs:
                events.add(
                    f"epoch {state.epoch:.2f}: eval loss {logs['eval_loss']:.4f}",
                    data={"step": step, "eval_loss": _finite(logs["eval_loss"])},
                )
            elif "loss" in logs and (step % every == 0 or step == total or step == 1):
                events.add(
                    f"step {step}/{total}: loss {logs['loss']:.4f}",
                    data={
                        "step": step,
                        "total_steps": total,
                        "epoch": state.epoch,
                        "loss": _finite(logs["loss"]),
                        "learning_rate": logs.get("learning_rate"),
                    },
                )

    return Progress()


def _save(
    job_dir: Path, trainer: Any, tokenizer: Any, params: dict[str, Any], events: files.EventLog
) -> Path:
    merged = job_dir / files.MERGED_DIR
    model = trainer.model
    if params["lora_rank"]:
        adapter = job_dir / files.ADAPTER_DIR
        trainer.save_model(str(adapter))
        tokenizer.save_pretrained(adapter)
        events.add(f"saved the LoRA adapter to {adapter}")
        model = model.merge_and_unload()
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    events.add(f"saved the merged model to {merged}")
    return merged


# -- the record -----------------------------------------------------------------------------------


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return round(float(value), 6)
    return None


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _versions() -> dict[str, str]:
    import importlib.metadata

    names = ("torch", "transformers", "trl", "peft", "datasets")
    found = {name: importlib.metadata.version(name) for name in names}
    return found | {"python": platform.python_version()}


def _card(
    spec: dict[str, Any], params: dict[str, Any], metrics: dict[str, Any], job_dir: Path
) -> str:
    hyper = "\n".join(f"| {name} | {value} |" for name, value in params.items())
    lora = job_dir / files.ADAPTER_DIR
    vllm = (
        f"vllm serve {spec['base_model']} --enable-lora --lora-modules student={lora} "
        "--enable-auto-tool-choice --tool-call-parser hermes"
        if params["lora_rank"] and not str(spec["base_model"]).lower().endswith(".gguf")
        else f"vllm serve {job_dir / files.MERGED_DIR} --enable-auto-tool-choice "
        "--tool-call-parser hermes"
    )
    kind = "LoRA" if params["lora_rank"] else "full fine-tuning"
    rows = [
        ("dataset", spec["dataset"]),
        ("dataset content hash", f"`{spec['dataset_hash']}`"),
        ("base model", f"`{spec['base_model']}`"),
        ("method", f"{spec['method']}, {kind}"),
        ("train examples", metrics["train_examples"]),
        ("dropped as too long", metrics["dropped_examples"]),
        ("validation examples", metrics["validation_examples"]),
        ("steps", metrics["steps"]),
        ("train loss", _show(metrics["train_loss"])),
        ("eval loss", _show(metrics["eval_loss"])),
        ("device", metrics["device"]),
        ("training time", f"{metrics['train_seconds']} s"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        f"# Student model {spec['id']}\n\nTrained by Stillroom's local backend.\n\n"
        f"| | |\n|---|---|\n{table}\n\n## Hyperparameters\n\n| name | value |\n|---|---|\n"
        f"{hyper}\n\n## Serve it\n\n    stillroom student serve --model "
        f"{job_dir / files.MERGED_DIR}\n\nor with vLLM:\n\n    {vllm}\n"
    )
