"""The OpenAI API's request bodies (pydantic models) and response shapes, for `orchard serve`.

Requests are validated here, so a wrong type or an out-of-range value becomes a 400 naming the
field before anything reaches the engine. Fields Orchard does not implement are accepted only with
the value that means "off" (a request asking for n=2 or a penalty gets a 400 saying so, rather
than a silently different answer); fields the API does not define are ignored, as clients add their own.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_NUM_DRAFT = 32  # guesses per verification pass; more only costs compute (speculative.DraftLength)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[dict] | None = None  # an assistant's calls (checked where they are rendered)
    tool_call_id: str | None = None  # a tool result's call

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value):
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not supported (only 'text')")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class Speculative(BaseModel):
    """`"speculative": {"num_draft": K}`: speculate, with at most K guesses per pass (Orchard's own
    field, after llama-server's per-request speculative.n_max; `true` / `false` turn it on / off)."""

    model_config = ConfigDict(extra="forbid")
    num_draft: Annotated[int, Field(ge=1, le=MAX_NUM_DRAFT)] | None = None


class Prediction(BaseModel):
    """OpenAI's Predicted Outputs: text the answer is expected to largely repeat."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["content"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Generation(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # not OpenAI's; as vLLM and llama-server take it
    min_p: Annotated[float, Field(ge=0, lt=1)] | None = None
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    speculative: Union[bool, Speculative, None] = None
    prediction: Prediction | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @field_validator("speculative", mode="before")
    @classmethod
    def _speculative_shape(cls, value):
        # Checked here rather than by the union, whose errors would name the boolean alternative.
        if value is None or isinstance(value, bool):
            return value
        if not isinstance(value, dict):
            raise ValueError(f'must be true, false or {{"num_draft": K}}, got {value!r}')
        unknown = sorted(set(value) - {"num_draft"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (the one field is num_draft)")
        k = value.get("num_draft")
        if k is not None and (type(k) is not int or not 1 <= k <= MAX_NUM_DRAFT):
            raise ValueError(f"num_draft must be an integer in 1..{MAX_NUM_DRAFT}, got {k!r}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value):
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_overrides(self) -> dict:
        fields = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                  "min_p": self.min_p, "seed": self.seed}
        return {k: v for k, v in fields.items() if v is not None}


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list | None = None
    tool_choice: Union[Literal["auto", "none", "required"], dict, None] = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value):
        if value is None:
            return value
        kind = value.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError(f"type must be 'text', 'json_object' or 'json_schema', got {kind!r}")
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ValueError("json_schema must be an object with a 'schema' object")
        return value

    def constraint(self):
        """The `constrain.Constraint` that `response_format` asks for, or None."""
        from mlxmodels.constrain import Constraint

        kind = (self.response_format or {}).get("type", "text")
        if kind == "json_object":
            return Constraint.json_object("response_format")
        if kind == "json_schema":
            spec = self.response_format["json_schema"]
            # OpenAI allows a json_schema without a schema: any JSON then.
            return Constraint.json_schema(spec.get("schema", {}), f"response_format ({spec.get('name', 'schema')})")
        return None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generation):
    prompt: Union[str, Annotated[list[int], Field(min_length=1)], Annotated[list[str], Field(min_length=1, max_length=1)]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # the legacy API's limit
    echo: Literal[False] = False
    suffix: None = None
    best_of: Literal[1] | None = None

    def token_limit(self) -> int:
        # The legacy API's default is 16 tokens.
        return self.max_tokens if self.max_tokens is not None else 16

    def logprob_count(self) -> int | None:
        return self.logprobs


# -- responses ------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage_body(usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        **({} if usage.draft_tokens is None else {"completion_tokens_details": {
            # OpenAI's names for guessed tokens the answer kept / did not keep (Predicted Outputs).
            "accepted_prediction_tokens": usage.accepted_tokens,
            "rejected_prediction_tokens": usage.draft_tokens - usage.accepted_tokens}}),
    }


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
