"""Bus users per role with subject permissions, enforced by nats-server itself.

Roles (DESIGN.md "One machine, many machines"):

* ``agent``  publishes proposals, decisions, notes, its own join/leave and LLM usage; asks the ledger;
  reads events. It cannot publish claims or results, nor touch JetStream consumers or acks.
* ``runner`` publishes claims, results, its own join/leave and progress; pulls and acks work items.
  It cannot publish proposals, decisions or notes.
* ``ledger`` reads everything (its own durable consumer) and answers the read API.
* ``admin``  everything (people: ``swarm submit``, ``swarm notebook``, program changes, setup).

:func:`generate` writes an ``authorization`` block for nats-server plus one env file per role holding
``SWARM_NATS_USER``/``SWARM_NATS_PASSWORD`` (mode 0600). Passwords never go into events or logs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bus import events as ev
from bus.logstore import log_permissions
from bus.subjects import (
    API_ALL_RUNS,
    EVENTS_ALL_RUNS,
    LIVE_ALL_RUNS,
    PROGRESS_ALL_RUNS,
    STREAM,
    WORK_ALL_RUNS,
    publish_pattern,
)

ROLES = ("agent", "runner", "ledger", "admin")

_JS_READ = [f"$JS.API.STREAM.INFO.{STREAM}", "$JS.API.INFO"]
_JS_WORK = [
    f"$JS.API.CONSUMER.CREATE.{STREAM}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{STREAM}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.>",
    f"$JS.API.STREAM.MSG.GET.{STREAM}",
    f"$JS.API.DIRECT.GET.{STREAM}.>",
    f"$JS.ACK.{STREAM}.>",
]


@dataclass(frozen=True)
class Permissions:
    publish: list[str]
    subscribe: list[str]
    allow_responses: bool = False


def _publishes(*event_types: type[ev.Event]) -> list[str]:
    """The subject patterns these events go out on (bus.subjects is the one place that knows them)."""
    return list(dict.fromkeys(publish_pattern(t) for t in event_types))


def permissions(role: str) -> Permissions:
    """Subject permissions of a role (subjects from bus.subjects)."""
    if role == "agent":
        return Permissions(
            publish=[
                *_publishes(
                    ev.HypothesisProposed, ev.HypothesisDecided, ev.NoteWritten, ev.AgentJoined, ev.AgentLeft,
                    ev.LlmUsage, ev.ProposalRejected, ev.HypothesisDemoted,
                ),
                API_ALL_RUNS,
                *_JS_READ,
                *log_permissions(write=False),
            ],
            subscribe=["_INBOX.>", EVENTS_ALL_RUNS, WORK_ALL_RUNS, LIVE_ALL_RUNS],
        )
    if role == "runner":
        return Permissions(
            publish=[
                *_publishes(ev.ExperimentClaimed, ev.ExperimentFinished, ev.RunnerJoined, ev.RunnerLeft),
                PROGRESS_ALL_RUNS,
                API_ALL_RUNS,
                *_JS_READ,
                *_JS_WORK,
                *log_permissions(write=True),
            ],
            subscribe=["_INBOX.>", f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.>"],
        )
    if role == "ledger":
        return Permissions(
            publish=["$JS.API.>", f"$JS.ACK.{STREAM}.>", "$JS.FC.>"],
            subscribe=["_INBOX.>", "swarm.>"],
            allow_responses=True,
        )
    if role == "admin":
        return Permissions(publish=[">"], subscribe=[">"])
    raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def authorization_block(passwords: dict[str, str]) -> str:
    """nats-server config text: one user per role with its permissions."""
    users = []
    for role, password in passwords.items():
        p = permissions(role)
        perms = {"publish": {"allow": p.publish}, "subscribe": {"allow": p.subscribe}}
        if p.allow_responses:
            perms["allow_responses"] = True  # type: ignore[assignment]
        # JSON is valid nats-server config syntax for values
        users.append(
            f"    {{ user: {json.dumps(role)}, password: {json.dumps(password)}, permissions: {json.dumps(perms)} }}"
        )
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


def generate(out_dir: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """Write ``auth.conf`` (include it in the server config) and ``<role>.env`` per role, all mode 0600.

    Existing passwords in ``out_dir`` are kept, so running it again changes nothing. Returns role -> password.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    passwords = {}
    for role in roles:
        env_file = out / f"{role}.env"
        password = None
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                if line.startswith("SWARM_NATS_PASSWORD="):
                    password = line.split("=", 1)[1]
        password = password or secrets.token_urlsafe(24)
        passwords[role] = password
        _write_private(env_file, f"SWARM_NATS_USER={role}\nSWARM_NATS_PASSWORD={password}\n")
    _write_private(out / "auth.conf", authorization_block(passwords))
    return passwords


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
