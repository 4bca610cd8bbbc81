"""Loading a trained student from disk and generating chat answers with it.

``load_student(path)`` loads what ``proxy.student.source.resolve_student(path)`` found on disk
(a merged model, a LoRA adapter on a local base, or a training job directory); an adapter is
merged into its base, so generation costs what the base costs.

Nothing is ever downloaded: every ``from_pretrained`` call is ``local_files_only``.

``Student`` is the generation API that the server, the local training backend and evals share:

    student = load_student("models/job_123")
    prompt = student.encode_chat(messages, tools)          # the tokenizer's chat template
    answer = student.generate(prompt, SamplingParams(max_new_tokens=256))
    answer.text, answer.finish_reason, answer.completion_tokens

``generate`` blocks, so async callers run it in a worker thread; one generation runs at a time
per student (a lock). It stops at the end-of-turn token, at ``SamplingParams.stop`` strings
(which are cut from the text, as OpenAI does) or when ``should_stop()`` turns true (a client
went away); ``on_text`` receives the text as it grows, never a piece of a stop string.

This module imports torch, transformers and peft inside its functions only, and it is itself
imported only by the commands and the app that need it.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from proxy.student.source import StudentLoadError, StudentSource, resolve_student
from proxy.student.toolcalls import held_suffix_length
from proxy.types import JSONObject

logger = logging.getLogger("stillroom.student")

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate. No temperature (or 0) is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """One answer: text without the end-of-turn token or stop string, and token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason  # "length": max_new_tokens ran out before the turn ended


class PromptError(ValueError):
    """The chat template refused the messages (for example roles that must alternate)."""


class StudentModel(Protocol):
    """What the server needs from a student; ``Student`` is the real one, tests fake it."""

    name: str
    context_length: int | None  # max prompt + answer tokens; None when the model says nothing

    def encode_chat(
        self, messages: Sequence[JSONObject], tools: Sequence[JSONObject] | None = None
    ) -> list[int]: ...

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation: ...


def pick_device(device: str) -> str:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one fails."""
    import torch

    has_cuda = bool(torch.cuda.is_available())
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise StudentLoadError("--device cuda: torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise StudentLoadError(f"unknown device {device!r} (auto, cpu or cuda)")
    return device


def load_student(
    path: str | os.PathLike[str] | StudentSource, *, device: str = "auto", name: str | None = None
) -> Student:
    """Load the student at ``path`` (see ``resolve_student``) onto ``device``, ready to answer.

    On the CPU the weights are float32; on a GPU they keep the dtype they were saved in.
    """
    source = path if isinstance(path, StudentSource) else resolve_student(path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    adapter = f" with the adapter {source.adapter_dir}" if source.adapter_dir else ""
    logger.info("loading %s%s on %s", source.model_dir, adapter, device)
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        source.model_dir, dtype=torch.float32 if device == "cpu" else "auto", local_files_only=True
    )
    if source.adapter_dir is not None:
        from peft import PeftModel

        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`.
            warnings.filterwarnings(
                "ignore",
                message="`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            adapted = PeftModel.from_pretrained(model, source.adapter_dir)
        model = adapted.merge_and_unload()
    model.to(device)
    model.eval()
    return Student(model, tokenizer, name=name or source.name, device=device)


class Student:
    """A loaded causal LM and its tokenizer; thread-safe, one generation at a time."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.context_length = _context_length(model, tokenizer)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self._lock = threading.Lock()  # one generation at a time
        # A fast tokenizer is one Rust object: an encode in one thread while another decodes
        # can fail with "Already borrowed", so they take turns.
        self._tokenizer_lock = threading.Lock()

    def encode_chat(
        self, messages: Sequence[JSONObject], tools: Sequence[JSONObject] | None = None
    ) -> list[int]:
        """The prompt's token ids: the chat template with the assistant's turn opened."""
        from jinja2 import TemplateError

        try:
            with self._tokenizer_lock:
                ids = self.tokenizer.apply_chat_template(
                    list(messages),
                    tools=list(tools) if tools else None,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
        except (TemplateError, TypeError) as exc:  # a template's raise_exception, or str + None
            raise PromptError(f"the model's chat template refused the messages: {exc}") from None
        return [int(i) for i in ids]

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Generate an answer to ``prompt`` (blocking; see the module docstring)."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        # Fields left None are filled from the model's own generation_config (top_k,
        # repetition_penalty…) by generate(); the ones set here win. Greedy decoding sets the
        # sampling knobs to their neutral values, or a model whose config suggests sampling
        # would log that they are ignored.
        knobs: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.temperature
            else {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
        )
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=params.max_new_tokens,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=_pad_token_id(self.tokenizer, self.eos_token_ids),
            **knobs,
        )
        decoding = _Decoding(self._decode, params.stop, on_text, should_stop)
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            input_ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=decoding,
                stopping_criteria=StoppingCriteriaList([decoding]),
            )
        ids = decoding.ids
        ended = decoding.stopped or bool(ids and ids[-1] in self.eos_token_ids)
        reason: FinishReason = (
            "length" if len(ids) >= params.max_new_tokens and not ended else "stop"
        )
        return Generation(decoding.text, len(prompt), len(ids), reason)

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            text: str = self.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        return text

    def chat(
        self,
        messages: Sequence[JSONObject],
        params: SamplingParams,
        tools: Sequence[JSONObject] | None = None,
    ) -> Generation:
        """``generate(encode_chat(messages, tools), params)``, for evals and scripts."""
        return self.generate(self.encode_chat(messages, tools), params)


def _context_length(model: Any, tokenizer: Any) -> int | None:
    length = getattr(model.config, "max_position_embeddings", None)
    if isinstance(length, int) and length > 0:
        return length
    length = getattr(tokenizer, "model_max_length", None)  # a huge sentinel when unknown
    return length if isinstance(length, int) and 0 < length < 10_000_000 else None


def _pad_token_id(tokenizer: Any, eos_token_ids: tuple[int, ...]) -> int:
    pad = tokenizer.pad_token_id
    return pad if isinstance(pad, int) else eos_token_ids[0]


def _eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The model's own end tokens, the tokenizer's eos and ``<|im_end|>`` if the vocab has it."""
    found: list[Any] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    found.extend(configured if isinstance(configured, list) else [configured])
    found.append(tokenizer.eos_token_id)
    im_end = tokenizer.get_vocab().get("<|im_end|>")
    found.append(im_end)
    ids = tuple(dict.fromkeys(i for i in found if isinstance(i, int)))
    if not ids:
        raise StudentLoadError(f"{model.name_or_path}: the model has no end-of-sequence token")
    return ids


class _Decoding:
    """Both ``generate``'s streamer and one of its stopping criteria.

    The whole answer is decoded again at each token (cheap next to a forward pass), which keeps
    multi-byte characters and merged spaces right; text that may be the start of a stop string
    is held back until it is known not to be one.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: tuple[str, ...],
        on_text: Callable[[str], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string ended the answer, or should_stop() did
        self._decode = decode
        self._stops = tuple(s for s in stops if s)
        self._on_text = on_text
        self._should_stop = should_stop
        self._prompt_seen = False
        self._sent = 0

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self._decode(self.ids)
        if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the next token
            return
        self.text = text
        for stop in self._stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        self._emit(final=self.stopped)

    def end(self) -> None:
        self._emit(final=True)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if not self.stopped and self._should_stop is not None and self._should_stop():
            self.stopped = True
        size = (input_ids.shape[0],)
        return torch.full(size, self.stopped, dtype=torch.bool, device=input_ids.device)

    def _emit(self, *, final: bool) -> None:
        text = self.text
        end = len(text)
        if not final:
            end -= max((held_suffix_length(text, stop) for stop in self._stops), default=0)
        if end > self._sent:
            piece, self._sent = text[self._sent : end], end
            if self._on_text is not None:
                self._on_text(piece)
