"""What the reward server's routes accept and refuse: the request bodies, checked by pydantic, and the one-line
reasons a refused request gets (`rmrouter.serving.server`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rmrouter.serving.groups import CompletionGroups


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote-RM payload, in each of its versions: `query` always; `prompts` and `labels` (the label
    column, e.g. a ground truth: each prompt's reference) in most; `datasources` (each sample's data source: its data
    label here) in some. Without `prompts` each query is its own group, its whole text the response. Other keys
    (`metas`, token ids) are ignored."""

    model_config = ConfigDict(extra="ignore")
    query: list[str]
    prompts: list[str] | None = None
    labels: list[str | None] | None = None
    datasources: list[str | None] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> OpenRLHFRequest:
        columns = {"prompts": self.prompts, "labels": self.labels, "datasources": self.datasources}
        check_lengths(len(self.query), columns, "query")
        return self

    def groups(self) -> CompletionGroups:
        if self.prompts is None:  # nothing says which samples share a prompt: each is its own
            prompts = [f"sample {i}" for i in range(len(self.query))]
            responses = list(self.query)
        else:
            prompts = self.prompts
            responses = [response_of(query, prompt) for query, prompt in zip(self.query, prompts, strict=True)]
        return CompletionGroups.of(prompts, responses, references=self.labels, domains=self.datasources)


class FeedbackRequest(BaseModel):
    """What a trainer reports back for a `/score` request: its loss per prompt group (None: not trained on)."""

    model_config = ConfigDict(extra="forbid")
    routing_id: str
    losses: list[float | None]


class ScoreRequest(BaseModel):
    """The general route's payload: one entry per completion."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str | list[dict[str, str]]]
    completions: list[str]
    domains: list[str | None] | None = None
    references: list[str | None] | None = None
    sources: list[str | None] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> ScoreRequest:
        columns = {"prompts": self.prompts, "domains": self.domains, "references": self.references,
                   "sources": self.sources}  # fmt: skip
        check_lengths(len(self.completions), columns, "completions")
        return self

    def groups(self) -> CompletionGroups:
        return CompletionGroups.of(self.prompts, self.completions, self.references, self.domains, self.sources)


def check_lengths(count: int, columns: dict[str, list | None], name: str) -> None:
    if count == 0:
        raise ValueError(f"{name} is empty: nothing to score")
    for key, column in columns.items():
        if column is not None and len(column) != count:
            raise ValueError(f"{key} has {len(column)} entries for {count} {name}: one each")


def response_of(query: str, prompt: str) -> str:
    """The response in an OpenRLHF query (the prompt and response decoded as one text): what follows the prompt."""
    if prompt and query.startswith(prompt):
        return query[len(prompt) :]
    _, found, tail = query.partition(prompt) if prompt else ("", "", query)
    return tail if found else query


class Refused(Exception):
    """A request answered with `status` and `{"error": reason}`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def read_json(request: Any, model: type[BaseModel], max_bytes: int) -> Any:
    """The request's body as `model`, or `Refused`: 413 past `max_bytes`, 400 for what is not JSON, 422 for JSON
    that is not `model` (the reason names the field)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Refused(413, f"request body is over the limit of {max_bytes} bytes")
    try:
        data = json.loads(body)
    except ValueError as error:
        raise Refused(400, f"the body is not JSON: {error}") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refused(422, f"{where}: {first['msg']}") from None
