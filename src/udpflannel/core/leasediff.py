"""From listings and watch events to what a backend gets: a Snapshot or a Delta. Pure.

`PeerView` holds every lease seen under <prefix>/subnets (by key, "10.5.3.0-24") and the
verdict of `core.validate.validate` on them:

    reset(listing)    -> Snapshot   all accepted peers (also when there are none)
    put(lease)        -> Delta      the changes this write causes
    delete(key)       -> Delta
    set_context(ctx)  -> Snapshot   our own lease (or the backend) changed: judge all again

A put or delete can change the verdict on the leases it overlaps (an older overlapping
lease deleted lets a younger one in), so the view re-validates the connected group of
overlapping leases around the change -- with the same `validate` -- and diffs the
accepted ones. Our own key is never a peer. A changed value (same key, new PublicIP or
BackendData) is "added" again: backends treat "added" as add-or-replace, as flanneld's do.

Rejections are collected in `new_rejections()` once per (key, reason) for the agent to
log; a key that is accepted or deleted and later rejected again is reported again.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .events import Delta, LeaseEvent, Snapshot
from .netindex import NetIndex
from .subnet import Lease
from .validate import LeaseContext, validate


def diff(old: Mapping[str, Lease], new: Mapping[str, Lease]) -> list[LeaseEvent]:
    """Events that take a backend from `old` to `new` (removals first)."""
    events = [LeaseEvent("removed", lease) for key, lease in old.items() if key not in new]
    events += [LeaseEvent("added", lease) for key, lease in new.items() if old.get(key) != lease]
    return events


class PeerView:
    """Every lease seen, and which of them the backend has (`leases`)."""

    def __init__(self, ctx: LeaseContext):
        self.ctx = ctx
        self.raw: dict[str, Lease] = {}  # every parsed lease, our own included
        self.leases: dict[str, Lease] = {}  # accepted peers: what the backend has
        self.rejected: dict[str, str] = {}  # key -> reason
        self._index = NetIndex()
        self._reported: dict[str, str] = {}
        self._pending: list[tuple[str, str]] = []

    @property
    def own_key(self):
        return self.ctx.own.key if self.ctx.own is not None else None

    # -- updates ----------------------------------------------------------------------
    def reset(self, listing: Iterable[Lease]) -> Snapshot:
        """Replace everything with a full listing (start-up, or after a lost watch)."""
        self.raw = {l.key: l for l in listing}
        self._index = NetIndex((s, k) for k, l in self.raw.items() for s in l.nets)
        return self._judge_all()

    def set_context(self, ctx: LeaseContext) -> Snapshot:
        """Our own lease or the backend changed: every verdict may change."""
        self.ctx = ctx
        return self._judge_all()

    def put(self, lease: Lease) -> Delta:
        key = lease.key
        seeds = self._unindex(key)
        self.raw[key] = lease
        for s in lease.nets:
            self._index.add(s, key)
        return self._judge(seeds)

    def delete(self, key: str) -> Delta:
        if key not in self.raw:
            return Delta()
        seeds = self._unindex(key)
        del self.raw[key]
        return self._judge(seeds)

    def _unindex(self, key: str) -> set[str]:
        """Take `key`'s subnets out of the index; the keys to judge again: it and every
        lease that overlapped them (one may be accepted now)."""
        seeds = {key}
        old = self.raw.get(key)
        for s in old.nets if old is not None else ():
            self._index.remove(s, key)
            seeds |= self._index.overlapping(s)
        return seeds

    def new_rejections(self) -> list[tuple[str, str]]:
        """(key, reason) pairs not reported before; each is returned once."""
        out, self._pending = self._pending, []
        return out

    # -- judging -----------------------------------------------------------------------
    def _peers(self, keys: Iterable[str]) -> list[Lease]:
        own = self.own_key
        return [self.raw[k] for k in keys if k in self.raw and k != own]

    def _judge_all(self) -> Snapshot:
        verdict = validate(self._peers(self.raw), self.ctx)
        self.leases, self.rejected = verdict.accepted, verdict.rejected
        self._note(set(self._reported) | set(self.rejected))
        return Snapshot(tuple(self.leases.values()))

    def _judge(self, seeds: set[str]) -> Delta:
        group = self._group(seeds)
        verdict = validate(self._peers(group), self.ctx)
        before = {k: self.leases.pop(k) for k in group if k in self.leases}
        for k in group:
            self.rejected.pop(k, None)
        self.leases.update(verdict.accepted)
        self.rejected.update(verdict.rejected)
        self._note(group)
        return Delta(tuple(diff(before, verdict.accepted)))

    def _group(self, seeds: set[str]) -> set[str]:
        """`seeds` and every lease connected to them through overlaps."""
        group, todo = set(seeds), list(seeds)
        while todo:
            lease = self.raw.get(todo.pop())
            if lease is None:
                continue
            for s in lease.nets:
                for k in self._index.overlapping(s) - group:
                    group.add(k)
                    todo.append(k)
        return group

    def _note(self, keys: Iterable[str]) -> None:
        for k in keys:
            why = self.rejected.get(k)
            if why is None:
                self._reported.pop(k, None)
            elif self._reported.get(k) != why:
                self._reported[k] = why
                self._pending.append((k, why))
