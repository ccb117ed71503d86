"""What the daemon does for each control request: list flows, replay and follow events, expire
flows, reload the policy, report its status.

Replies are generators, so the control server builds them a few items per loop turn; work that
changes the table (expiry) happens in batches as the reply is built, between packet batches.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwemu.adapters.output import Clock
from fwemu.core.conntrack import FlowInfo
from fwemu.core.events import Event
from fwemu.ops.control import Reply
from fwemu.ops.filters import EVERYTHING, Selector
from fwemu.ops.protocol import Request, error_reply, flow_record
from fwemu.policy import Policy, load_policy, load_preset

if TYPE_CHECKING:
    from fwemu.adapters.daemon import Daemon

# Flows expired per reply step, as the daemon's timers expire per handle_timer call
# (daemon.TIMER_BATCH): the control server stops building a reply after TURN_BUDGET, so a step
# must cost little more than that (16 expiries with RSTs: ~1.5 ms, docs/performance.md "Scale").
EXPIRE_BATCH = 16


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where the running policy comes from, so that a reload can read it again."""

    path: str | None  # a policy file, as given
    preset: str | None
    speed: float

    def load(self) -> Policy:
        """The policy, scaled by `speed`; PolicyError (or FwemuError) if it is invalid."""
        policy = load_policy(self.path) if self.path is not None else load_preset(str(self.preset))
        return policy.scaled(self.speed)

    def switched(self, path: str | None, preset: str | None) -> PolicySource:
        """This source, or a new file or preset if one is given."""
        if path is None and preset is None:
            return self
        return PolicySource(path, preset, self.speed)


class Commands:
    """The control socket's handler for one daemon."""

    def __init__(self, daemon: Daemon, status: dict[str, Any]) -> None:
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
            **self._status,
            "pid": os.getpid(),
            "policy": policy.name,
            "origin": policy.origin,
            "flows": len(daemon.engine.table),
            **daemon.counters.as_dict(),
        }

    def _flows(self, selector: Selector) -> Iterator[dict[str, Any]]:
        table = self._daemon.engine.table
        ts = self._daemon.wall(Clock.now())
        # Which worker holds the flow, when `fwemu run --workers` lists several at once.
        queue = self._status.get("queue")
        keys = table.keys()
        count = 0
        for key in keys:
            info = table.info(key, Clock.now())
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
        table = daemon.engine.table
        keys = table.keys()
        expired = resets = injected = 0
        for start in range(0, len(keys), EXPIRE_BATCH):
            now = Clock.now()
            batch = keys[start : start + EXPIRE_BATCH]
            if request.selector != EVERYTHING:
                batch = [key for key in batch if _selected(request.selector, table.info(key, now))]
            effects = daemon.engine.expire(batch, now=now, action=request.action)
            injected += daemon.apply(effects.inject, effects.events)
            for event in effects.events:
                expired += event.kind == "expire"
                resets += event.kind == "reset"
                yield {"event": daemon.reporter.record(event)}
        yield {"ok": True, "expired": expired, "resets": resets, "injected": injected}

    def _reload(self, request: Request) -> dict[str, Any]:
        path = None if request.policy is None else str(Path(request.policy))
        ok, message = self._daemon.reload(path, request.preset)
        return {"ok": True, "message": message} if ok else error_reply(message)


def _event_selected(selector: Selector, event: Event) -> bool:
    """`selector.matches_event` on the event itself: JSON forms are built only for the events
    sent, not for the whole history scanned."""
    flow = event.flow
    return selector.matches(
        {"src": flow.src, "sport": flow.sport, "dst": flow.dst, "dport": flow.dport},
        state=getattr(event, "state", None),
        rule=getattr(event, "rule", None),
        event=event.kind,
    )


def _selected(selector: Selector, info: FlowInfo | None) -> bool:
    if info is None:
        return False
    return selector.matches(flow_record(info), state=info.state, rule=info.rule)
