"""The router's wire shapes: OpenAI chat requests (what is supported, a 400 for what is not), answers, admin bodies."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# OpenAI request fields the router does not implement: asking for them is a 400 naming the field, never a silent
# answer that ignored them. A field sent with its neutral value (tools=[], logprobs=false, ...) passes.
UNSUPPORTED = {
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "logprobs": "logprobs are not returned",
    "top_logprobs": "logprobs are not returned",
    "logit_bias": "`logit_bias` is not supported",
    "presence_penalty": "penalties are not supported",
    "frequency_penalty": "penalties are not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
}
_NEUTRAL: tuple[Any, ...] = (None, False, 0, 0.0, [], {}, "none", "auto", ["text"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(max_length=32768)

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, v: str) -> str:
        return "system" if v == "developer" else v  # newer clients call the system prompt "developer"

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        """Content as a list of parts (newer clients): text parts joined; any other part is a 400."""
        if not isinstance(v, list):
            return v
        kinds = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in v]
        if any(k != "text" for k in kinds):
            raise ValueError(f"only text content parts are supported; got parts of type {kinds!r}")
        return "".join(str(p.get("text", "")) for p in v)


class ChatRequest(BaseModel):
    """One chat completion request; fields an OpenAI client sends that change nothing here are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=64, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)
    user: str | None = Field(default=None, max_length=128)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    response_format: dict[str, Any] | None = None
    # declared only to be refused when asked for (a 400 naming the field), see UNSUPPORTED
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_unsupported(cls, v: Any, info: ValidationInfo) -> Any:
        if v not in _NEUTRAL:
            raise ValueError(f"{UNSUPPORTED[str(info.field_name)]}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _openai_spellings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if isinstance(data.get("stop"), str):
                data = {**data, "stop": [data["stop"]]}
            if data.get("max_completion_tokens") is not None and "max_tokens" not in data:
                data = {**data, "max_tokens": data["max_completion_tokens"]}
        return data

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError(f"every stop sequence must be non-empty; got {v!r}")
        return v

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"only n=1 is supported; got {v}")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "text") != "text":
            raise ValueError(f"only text responses are supported; got {v.get('type')!r}")
        return v

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


@dataclass(frozen=True)
class Sampling:
    """How to sample one answer, the same on every backend."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    """One finished answer from a backend."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Stamp:
    """What the router adds to every answer: which version produced it, under which routing, and the token."""

    response_id: str
    model: str
    adapter_version: str | None
    generation: int
    feedback_token: str
    created: int

    def fields(self) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "adapter_version": self.adapter_version,
            "feedback_token": self.feedback_token,
            "routing_generation": self.generation,
        }


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop sequence (not included), and whether one was found (OpenAI's semantics)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def chat_answer(stamp: Stamp, out: Completion) -> dict[str, Any]:
    return {
        "id": stamp.response_id,
        "object": "chat.completion",
        "created": stamp.created,
        "model": stamp.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}
        ],
        "usage": usage(out),
        **stamp.fields(),
    }


def usage(out: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    }


def chunk_event(
    stamp: Stamp,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
    choices: bool = True,
) -> str:
    """One server-sent event of a streamed answer; every chunk names the version and carries the token."""
    body: dict[str, Any] = {
        "id": stamp.response_id,
        "object": "chat.completion.chunk",
        "created": stamp.created,
        "model": stamp.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if choices else [],
        **stamp.fields(),
    }
    if usage_ is not None:
        body["usage"] = usage_
    return f"data: {json.dumps(body)}\n\n"


DONE_EVENT = "data: [DONE]\n\n"


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param}}


def model_entry(
    model_id: str, *, created: int | None = None, parent: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created or int(time.time()),
        "owned_by": "alignloop",
        "parent": parent,
        **extra,
    }


# ---------------------------------------------------------------- admin bodies
class AdminMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)  # who acts is the admin token's name, never a field of the body


class PromoteBody(AdminMove):
    version: str | None = None


class CanaryBody(AdminMove):
    version: str
    share: float = Field(gt=0.0, le=1.0)


class RollbackBody(AdminMove):
    to: str | None = None
