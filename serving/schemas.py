"""The OpenAI chat-completions wire format (the part we serve) plus our documented extra field.

Every response carries `routerops` (RouterOpsInfo): which model answered and why. Unknown request
fields are accepted and ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class RoutingLimits(BaseModel):
    """`extra_body={"routerops": {...}}` on a chat request: the request's own limits on the choice
    (model="router"), or the category whose cascade plan runs (model="cascade")."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: float | None = Field(default=None, gt=0.0, description="The most this request may cost, "
                                       "predicted: models whose predicted cost is above it are not considered.")
    min_quality: float | None = Field(default=None, ge=0.0, le=1.0, description="The least predicted "
                                      "P(good answer) a model needs to be considered.")
    models: list[str] | None = Field(default=None, min_length=1, max_length=100,
                                     description="Only these fleet models may answer.")
    category: str | None = Field(default=None, min_length=1, max_length=80, pattern=r"^[^\x00]*$",
                                 description="model='cascade': run this category's plan (ladder and "
                                 "thresholds) instead of the one the prompt's predicted category picks.")

    def limits_given(self) -> bool:
        return self.max_cost_usd is not None or self.min_quality is not None or self.models is not None

    @field_validator("models")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not isinstance(m, str) or not m.strip() for m in v):
            raise ValueError("model names must be non-empty strings")
        return v


class ChatCompletionRequest(BaseModel):
    # strict: JSON types as documented (`max_tokens: true` or `stream: "yes"` is a 400, not coerced)
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    # the OpenAI client's extra_body={"routerops": {...}}: this request's limits (model="router")
    routerops: RoutingLimits | None = None
    # OpenAI's request metadata; routerops reads "category" (the traffic cohort the monitor reports on)
    metadata: dict[str, str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class FailoverInfo(BaseModel):
    from_model: str
    from_role: str
    to_model: str
    to_role: str
    reason: str  # "weak unavailable (ConnectError); served by strong"
    attempts: list[dict[str, Any]]  # the failed attempts: role, model, error, detail, cost_usd


class RouterOpsInfo(BaseModel):
    """The extra field on every response (and in the first and last stream chunks)."""

    model: str  # the model that answered
    strategy: str  # router | cascade | speculative | direct
    p_strong_wins: float | None = None
    alpha: float | None = None
    alpha_source: str | None = None  # settings | router-calibration | an alpha_history source | default
    router_version: str | None = None
    estimated_cost_usd: float = 0.0
    request_id: str
    reason: str
    routing_latency_ms: float | None = None  # time to decide (router strategy)
    escalated: bool | None = None
    probe_score: float | None = None
    speculative: dict[str, float] | None = None
    # set when the chosen backend was unavailable and the other model answered (ROUTEROPS_FAILOVER)
    failover: FailoverInfo | None = None
    # the fleet decision (issue 27): the dial, every candidate's predicted P(good) and cost, whether
    # the request's limits excluded it, and the failover order
    fleet: dict[str, Any] | None = None
    # the cascade's plan (model="cascade"): its category (None: the fallback plan), whether the request
    # gave it ("request") or the classifier predicted it ("predicted", with its probability), its ladder
    cascade: dict[str, Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    routerops: RouterOpsInfo


# PostgreSQL text columns cannot hold NUL: such a value is a 400 here, not a database error later
NO_NUL = r"^[^\x00]*$"


class Preference(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    winner: Literal["a", "b", "tie"]  # a = the logged (served) answer, b = the other answer
    other_model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)  # a String(200)
    other_answer: str | None = Field(default=None, pattern=NO_NUL)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # the routerops request id, or the completion's id ("chatcmpl-<request id>") as clients see it
    request_id: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    preference: Preference | None = None
    thumbs: Literal["up", "down"] | None = None
    # a graded rating of the answer, 0 (useless) .. 1 (perfect): an outcome row of the answering model
    rating: float | None = Field(default=None, ge=0.0, le=1.0)
    comment: str | None = Field(default=None, max_length=2000)

    @field_validator("request_id")
    @classmethod
    def _bare_id(cls, v: str) -> str:
        return v.removeprefix("chatcmpl-") or v


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """An `openapi_extra` documenting a JSON body a route parses itself (for its own error messages
    and size checks): the model's schema with its definitions inlined."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}}}
