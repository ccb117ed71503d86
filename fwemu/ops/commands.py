"""What the daemon does for each control request: list flows, replay and follow events, expire
flows, reload the policy, report its status.

Replies are generators, so the control server builds them a few items per loop turn; work that
changes the table (expiry) happens in batches as the reply is built, between packet batches.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from fwemu.clock import Clock
from fwemu.core.conntrack import FlowInfo
from fwemu.core.engine import Engine
from fwemu.core.events import Event
from fwemu.ops.control import Reply
from fwemu.ops.filters import EVERYTHING, Selector
from fwemu.ops.protocol import PROTOCOL_VERSION, Request, error_reply, flow_record

# Flows expired per reply step, as the daemon's timers expire per handle_timer call
# (daemon.TIMER_BATCH): the control server stops building a reply after TURN_BUDGET, so a step
# must cost little more than that (16 expiries with RSTs: ~1.5 ms, docs/performance.md "Scale").
EXPIRE_BATCH = 16


class Counted(Protocol):
    def as_dict(self) -> dict[str, int]: ...


class Recorder(Protocol):
    def record(self, event: Event) -> dict[str, Any]: ...


class Served(Protocol):
    """What the commands need of the loop that serves them (fwemu.adapters.daemon.Daemon)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def counters(self) -> Counted: ...

    @property
    def reporter(self) -> Recorder: ...

    def wall(self, now: float) -> float: ...

    def apply(self, inject: tuple[bytes, ...], events: Iterable[Event]) -> int: ...

    def reload(self, path: str | None = None, preset: str | None = None) -> tuple[bool, str]: ...


class Commands:
    """The control socket's handler for one daemon."""

    def __init__(self, daemon: Served, status: dict[str, Any]) -> None:
        self._daemon = daemon
        self._status = status  # what never changes: pid, queue, netns, control path, ...

    def handle(self, request: Request, history: deque[Event]) -> Reply:
        if request.command == "flows":
            return Reply(self._flows(request.selector))
        if request.command == "events":
            return self._events(request, history)
        if request.command == "expire":
            return Reply(self._expire(request))
        if request.command == "reload":
            return Reply(iter([self._reload(request)]))
        return Reply(iter([self.status()]))

    def status(self) -> dict[str, Any]:
        daemon = self._daemon
        policy = daemon.engine.policy
        return {
            "ok": True,
            "version": PROTOCOL_VERSION,
            **self._status,
            "pid": os.getpid(),
            "policy": policy.name,
            "origin": policy.origin,
            "flows": len(daemon.engine),
            **daemon.counters.as_dict(),
            "limits": [usage._asdict() for usage in daemon.engine.limits(now=Clock.now())],
            "defences": daemon.engine.defences(),
        }

    def _flows(self, selector: Selector) -> Iterator[dict[str, Any]]:
        engine = self._daemon.engine
        ts = self._daemon.wall(Clock.now())
        # Which worker holds the flow, when `fwemu run --workers` lists several at once.
        queue = self._status.get("queue")
        keys = engine.keys()
        count = 0
        for key in keys:
            info = engine.info(key, now=Clock.now())
            if info is None:  # gone since the listing started
                continue
            record = flow_record(info)
            if selector.matches(record, state=info.state, rule=info.rule):
                count += 1
                yield {"flow": {**record, "queue": queue}}
        yield {"ok": True, "ts": ts, "count": count, "total": len(keys)}

    def _events(self, request: Request, history: deque[Event]) -> Reply:
        selector = request.selector
        matching = [event for event in history if _event_selected(selector, event)]
        recent = matching[max(len(matching) - request.history, 0) :] if request.history else []
        done: dict[str, Any] = {"ok": True, "count": len(recent), "follow": request.follow}
        # JSON forms built as the client reads them, a turn's worth at a time.
        record = self._daemon.reporter.record
        items = itertools.chain(({"event": record(event)} for event in recent), [done])
        return Reply(items, follow=selector if request.follow else None)

    def _expire(self, request: Request) -> Iterator[dict[str, Any]]:
        daemon = self._daemon
        engine = daemon.engine
        keys = engine.keys()
        expired = resets = injected = retimed = 0
        for start in range(0, len(keys), EXPIRE_BATCH):
            now = Clock.now()
            batch = keys[start : start + EXPIRE_BATCH]
            if request.selector != EVERYTHING:
                batch = [
                    key for key in batch if _selected(request.selector, engine.info(key, now=now))
                ]
            if request.seconds is not None:
                for key in engine.retime(batch, now=now, seconds=request.seconds):
                    if (info := engine.info(key, now=now)) is not None:
                        retimed += 1
                        yield {"flow": flow_record(info)}
                continue
            effects = daemon.engine.expire(batch, now=now, action=request.action)
            injected += daemon.apply(effects.inject, effects.events)
            for event in effects.events:
                expired += event.kind == "expire"
                resets += event.kind == "reset"
                yield {"event": daemon.reporter.record(event)}
        if request.seconds is not None:
            yield {"ok": True, "retimed": retimed, "in": request.seconds}
            return
        yield {"ok": True, "expired": expired, "resets": resets, "injected": injected}

    def _reload(self, request: Request) -> dict[str, Any]:
        path = None if request.policy is None else str(Path(request.policy))
        ok, message = self._daemon.reload(path, request.preset)
        return {"ok": True, "message": message} if ok else error_reply(message)


def _event_selected(selector: Selector, event: Event) -> bool:
    """`selector.matches_event` on the event itself: JSON forms are built only for the events
    sent, not for the whole history scanned."""
    return selector.matches(
        event.flow.to_dict(),
        state=getattr(event, "state", None),
        rule=getattr(event, "rule", None),
        event=event.kind,
    )


def _selected(selector: Selector, info: FlowInfo | None) -> bool:
    if info is None:
        return False
    return selector.matches(flow_record(info), state=info.state, rule=info.rule)
