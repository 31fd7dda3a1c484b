"""Options of an agent, from command-line flags or a per-agent config file (TOML), checked in one place.

A config file lists agents and the defaults they share; every key is optional::

    [defaults]                      # for every agent of the file and every --spec on the command line
    timeout = 600                   # seconds per HTTP request to the model server

    [[agent]]
    spec = "openai:qwen2.5-coder:7b@http://127.0.0.1:11434/v1"
    name = "qwen-local"
    tool_choice = "auto"            # the server refuses "required"
    max_tokens = 4096
    temperature = 0.7
    headers = { "X-Api-Key" = "${PROXY_KEY}" }     # $VAR / ${VAR} are read from the environment
    prices = { "qwen2.5-coder:7b" = [0.0, 0.0] }   # dollars per million tokens, input and output

Precedence: the file's ``[defaults]``, then its ``[[agent]]`` entry, then the command line's flags.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from agents.errors import SpecError
from agents.pricing import parse_price


class AgentOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Everything an agent can be told; ``None`` (or empty) means "not given here"."""

    spec: str | None = None
    name: str | None = None
    # the model server (LLM agents)
    timeout: float | None = None  # seconds per HTTP request
    max_tokens: int | None = None
    temperature: float | None = None
    tool_choice: Literal["required", "auto"] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    prices: dict[str, tuple[float, float]] = msgspec.field(default_factory=dict)
    api_key_env: str | None = None  # the environment variable holding the key (never the key itself)
    attempts: int | None = None  # tries per call (one retry policy; the SDK's own retries are off)
    backoff: float | None = None
    call_seconds: float | None = None  # total cap of one call, retries included
    # the research loop
    hw_class: str | None = None
    validate_class: str | None = None  # promoted results are re-run there ("" or "none": no promotion)
    max_experiments: int | None = None
    max_waves: int | None = None
    max_cost_usd: float | None = None
    max_empty_waves: int | None = None
    wave_llm_seconds: float | None = None  # total cap of the model's time per wave
    breaker_failures: int | None = None
    breaker_cooldown: float | None = None
    write_notes: bool | None = None
    seed: int | None = None


# AgentOptions fields that go to LlmSettings / AgentConfig (the rest: spec, name, api_key_env, seed)
LLM_FIELDS = ("timeout", "max_tokens", "temperature", "tool_choice", "headers", "prices", "attempts", "backoff",
              "call_seconds")  # fmt: skip
LOOP_FIELDS = ("hw_class", "validate_class", "max_experiments", "max_waves", "max_cost_usd", "max_empty_waves", "wave_llm_seconds",
               "breaker_failures", "breaker_cooldown", "write_notes")  # fmt: skip


class AgentFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    defaults: AgentOptions = msgspec.field(default_factory=AgentOptions)
    agent: list[AgentOptions] = msgspec.field(default_factory=list)


def merge(*layers: AgentOptions) -> AgentOptions:
    """Later layers win, field by field; headers and prices merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in msgspec.structs.asdict(layer).items():
            if k in ("headers", "prices"):
                out[k] = {**out.get(k, {}), **v}
            elif v is not None:
                out[k] = v
    return AgentOptions(**out)


def load_agent_file(path: Path) -> AgentFile:
    """Read and check a per-agent config file; :class:`SpecError` says what is wrong and where."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read the agent config file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from e
    try:
        f = msgspec.convert(raw, AgentFile)
    except msgspec.ValidationError as e:
        raise SpecError(
            f"{path}: {e} (an agent takes: {', '.join(f for f in AgentOptions.__struct_fields__)})"
        ) from e
    for i, a in enumerate(f.agent):
        if not a.spec:
            raise SpecError(f"{path}: [[agent]] number {i + 1} has no spec (e.g. spec = \"openai:gpt-5\")")
    return f


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value`` (or ``Name=value``) -> (name, value)."""
    sep = ":" if ":" in text else "="
    name, ok, value = text.partition(sep)
    if not ok or not name.strip():
        raise SpecError(f"bad header {text!r}: use 'Name: value', e.g. 'X-Api-Key: $PROXY_KEY'")
    return name.strip(), value.strip()


def cli_options(
    *,
    timeout: float | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    tool_choice: str | None = None,
    headers: tuple[str, ...] = (),
    prices: tuple[str, ...] = (),
    **loop: Any,
) -> AgentOptions:
    """The command line's flags as an options layer (raises :class:`SpecError` on a bad one)."""
    try:
        parsed_prices = dict(parse_price(p) for p in prices)
    except ValueError as e:
        raise SpecError(str(e)) from e
    try:
        return msgspec.convert(
            {
                "timeout": timeout, "max_tokens": max_tokens, "temperature": temperature, "tool_choice": tool_choice,
                "headers": dict(parse_header(h) for h in headers), "prices": parsed_prices,
                **{k: v for k, v in loop.items() if v is not None},
            },
            AgentOptions,
        )  # fmt: skip
    except msgspec.ValidationError as e:
        raise SpecError(f"bad agent option: {e}") from e


def llm_kwargs(opts: AgentOptions) -> dict[str, Any]:
    """LlmSettings keyword arguments: header values expanded from the environment, the key from
    ``api_key_env``."""
    out = {k: getattr(opts, k) for k in LLM_FIELDS if getattr(opts, k) not in (None, {})}
    if "headers" in out:
        out["headers"] = {k: os.path.expandvars(v) for k, v in out["headers"].items()}
    if opts.api_key_env:
        key = os.environ.get(opts.api_key_env)
        if not key:
            raise SpecError(f"api_key_env = {opts.api_key_env!r}, but that environment variable is not set")
        out["api_key"] = key
    return out


def loop_kwargs(opts: AgentOptions) -> dict[str, Any]:
    """AgentConfig keyword arguments the options set."""
    out = {k: getattr(opts, k) for k in LOOP_FIELDS if getattr(opts, k) is not None}
    if out.get("validate_class") == "none":
        out["validate_class"] = ""  # no promotion
    return out


def summary(opts: AgentOptions) -> dict[str, Any]:
    """What AgentJoined may record: the options without secrets (header names only, never values)."""
    out: dict[str, Any] = {k: v for k, v in msgspec.structs.asdict(opts).items() if v not in (None, {}, "")}
    out.pop("spec", None)
    if "headers" in out:
        out["headers"] = sorted(out["headers"])
    if "prices" in out:
        out["prices"] = {m: list(p) for m, p in out["prices"].items()}
    return out
