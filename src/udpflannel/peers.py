"""Peer sync: the other hosts' leases, from etcd to the backend, for as long as the agent runs.

`PeerSync.run()` is the agent's supervised task "peers": it lists the leases under
<prefix>/subnets/, then watches from the listing's revision + 1; a compacted or broken
watch lists again (a watch that fails fast waits a retry interval first). Its first pass
takes the listing the lease acquisition made (`first`), so start-up lists once, not twice.

What it promises:
  - the backend's first update is a Snapshot of the first listing, even an empty one, and
    `listed` is set once the backend has had it; after that a re-listing or a new own lease
    is a Snapshot, a watch event a Delta (core.events);
  - every lease goes through the PeerView (core.leasediff, core.validate) before the
    backend sees it: a rejected one is never handed on, and is logged once per key and
    reason, within a log budget (core.logbudget) so one writer of bad leases cannot flood
    the log;
  - our own key never reaches the backend: a fresh listing without it or with another
    value, or a watch event that changes or deletes it, sets `check_own`, which the lease
    manager waits on (policy.manager.LeaseManager.maintain);
  - a bug (an unexpected exception) on one lease costs that lease, never the others nor
    the watch: the update is handed over again lease by lease, each failure counted in
    `peer_errors` and logged with its traceback; the backend's own errors
    (UdpFlannelError) end run(), which the supervisor restarts, and that lists again.
What it calls: Registry.list_leases() and watch_leases(revision) (core.registry), and
Backend.apply(update) -- nothing else of the backend.
What it owns: the PeerView (the leases the backend has and those rejected), the keys that
are not leases (`malformed`), its counters (metrics()), and a lock that orders its
updates with set_own(), which the agent calls when its lease changes.
It logs as the agent (logger "udpflannel.agent"): its lines are the agent's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from .backends import Backend
from .core.decode import printable
from .core.events import Delta, LeaseEvent, PeerUpdate, Snapshot, peer_log_level
from .core.leasediff import PeerView, diff
from .core.logbudget import LogBudget, held_back_note
from .core.registry import Compacted, Listing, Registry
from .core.validate import Failed, Ignored, LeaseContext
from .errors import RegistryError, UdpFlannelError
from .policy.manager import OwnLease
from .retry import Waiting

log = logging.getLogger("udpflannel.agent")


class PeerSync:
    """The peer leases of one backend. Built once the backend and our first lease exist;
    `set_own()` before `run()`."""

    #: the names metrics() gives (Agent.metrics() and udpflannel_<name> on /metrics)
    METRICS = ("peers", "rejected_leases", "malformed_leases", "peer_errors", "watch_restarts", "etcd_errors")

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        *,
        first: Optional[Listing] = None,
        waiting: Callable[[], Waiting],
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.backend = backend
        self.waiting = waiting
        self.retry_interval = retry_interval
        self.clock = clock
        self.own: Optional[OwnLease] = None
        self.view = PeerView(LeaseContext(()))
        self.malformed: dict[str, str] = {}  # keys under the subnets prefix that are not leases
        self.watch_restarts = 0
        self.etcd_errors = 0
        self.peer_errors = 0  # unexpected errors handling one lease (that lease was skipped)
        self.check_own = asyncio.Event()  # our key changed: the lease manager checks it
        self.listed = asyncio.Event()  # the backend has had its first Snapshot
        self._first = first  # the acquisition's listing, for run()'s first pass
        self._budget = LogBudget(clock=clock)  # rejection lines one writer of bad leases can cause
        self._lock = asyncio.Lock()

    def metrics(self) -> dict[str, int]:
        return {
            "peers": len(self.view.leases),
            "rejected_leases": len(self.view.rejected),
            "malformed_leases": len(self.malformed),
            "peer_errors": self.peer_errors,
            "watch_restarts": self.watch_restarts,
            "etcd_errors": self.etcd_errors,
        }

    async def set_own(self, own: OwnLease, ctx: LeaseContext, *, recheck: bool) -> None:
        """Our lease is now `own`, and leases are judged in `ctx` (which names it). With
        `recheck` (new subnets: every verdict may change) every lease is judged again and,
        once `listed`, the backend gets the resulting Snapshot; without (the same subnets
        and value) only the context is replaced."""
        self.own = own
        async with self._lock:
            if not recheck:
                self.view.ctx = ctx
                return
            before = self.view.leases
            update = self.view.set_context(ctx)
            if self.listed.is_set():  # never a Snapshot before the first listing
                await self._deliver(update, before)

    # -- the task ---------------------------------------------------------------------
    async def run(self) -> None:
        """List, deliver, watch; list again when the watch ends. Returns never; raises
        what the backend raises (UdpFlannelError) and bugs outside one lease's handling."""
        waiting = self.waiting()
        # The listing the acquisition made (just before our lease was written) serves as the
        # first: one listing less at start-up (100,000 leases: seconds and 50 MB). The watch
        # from its revision + 1 then brings our own lease's creation, and whatever followed.
        seeded, self._first = self._first, None
        while True:
            if seeded is not None:
                revision = await self._reset(seeded, fresh=False)
                seeded = None
            else:
                try:
                    listing = await self.registry.list_leases()
                except RegistryError as e:
                    self.etcd_errors += 1
                    waiting.failed("etcd", "listing the leases", e)
                    await asyncio.sleep(self.retry_interval)
                    continue
                waiting.done("listing the leases")
                revision = await self._reset(listing, fresh=True)
                del listing  # the leases live on in the view only
            self.listed.set()
            await self._watch(revision + 1)

    async def _reset(self, listing: Listing, fresh: bool) -> int:
        """The view becomes `listing` and the backend gets the Snapshot; a `fresh` listing
        (not the acquisition's) also checks our own key. Returns the listing's revision."""
        async with self._lock:
            mine = next((l for l in listing.leases if l.key == self.own.key), None)
            if fresh and (mine is None or self._own_changed(mine.lease_id, mine.attrs)):
                self.check_own.set()
            before = self.view.leases
            self.malformed = dict(listing.malformed)
            update = self.view.reset(listing.leases)
            await self._deliver(update, before)
        return listing.revision

    async def _watch(self, start: int) -> None:
        """Follow the watch from revision `start` until it ends (compacted, broken)."""
        started = self.clock()
        try:
            async for ev in self.registry.watch_leases(start):
                async with self._lock:
                    try:
                        await self._on_event(ev)
                    except UdpFlannelError as e:  # the backend's: the task restarts, re-lists
                        e.add_note(f"while handling the {ev.kind} of lease {printable(ev.name)}")
                        raise
                    except Exception as e:  # a bug: it costs this key, not the watch
                        self.peer_errors += 1
                        log.error("handling a %s of lease %s failed (a bug): %s; skipped, the peer watch "
                                  "goes on", ev.kind, printable(ev.name), e, exc_info=True)  # fmt: skip
        except Compacted as e:
            self.watch_restarts += 1
            log.info("%s; re-listing", e)
        except RegistryError as e:
            self.watch_restarts += 1
            self.etcd_errors += 1
            log.warning("lease watch interrupted (%s); re-listing", e)
            if self.clock() - started < self.retry_interval:  # failing fast: don't spin
                await asyncio.sleep(self.retry_interval)

    async def _on_event(self, ev) -> None:
        """One watch event: our own key wakes the manager; a peer's goes through the view."""
        if ev.kind == "put" and ev.lease is None:
            self.malformed[ev.name] = ev.problem
        else:
            self.malformed.pop(ev.name, None)
        if ev.name == self.own.key:
            if ev.kind == "delete" or ev.lease is None or self._own_changed(ev.lease.lease_id, ev.lease.attrs):
                self.check_own.set()
            return
        if ev.kind == "put" and ev.lease is not None:
            update = self.view.put(ev.lease)
        else:  # deleted, or overwritten with something that is not a lease
            update = self.view.delete(ev.name)
        if update.events:
            await self._deliver(update)
        else:
            self._log_rejections()

    def _own_changed(self, lease_id: Optional[int], attrs) -> bool:
        return self.own is None or not self.own.holds(lease_id, attrs)

    # -- to the backend ---------------------------------------------------------------
    async def _deliver(self, update: PeerUpdate, before: Optional[dict] = None) -> None:
        """Log what changes (a Snapshot against `before`, the backend's last set), then hand
        `update` to the backend."""
        self._log_rejections()
        if isinstance(update, Snapshot):
            changes = diff(before or {}, self.view.leases)
        else:
            changes = list(update.events)
        level = peer_log_level(len(changes))
        for ev in changes:
            a = ev.lease.attrs
            log.log(level, "peer %s: %s at %s (%s)", ev.kind, ev.lease.label, a.addresses, a.backend_type or "udp")
        if level == logging.DEBUG:
            added = sum(ev.kind == "added" for ev in changes)
            log.info("peers: %d added or changed, %d removed (%d in all)", added, len(changes) - added,
                     len(self.view.leases))  # fmt: skip
        await self._apply(update, before)

    async def _apply(self, update: PeerUpdate, before: Optional[dict]) -> None:
        """Hand `update` to the backend. Its own errors (BackendError) end the task, which
        restarts and re-lists, as always. Anything else is a bug, and it costs the leases it
        fails on, not the others: the update is handed over again lease by lease (a
        Snapshot as the additions of its leases and the removals of those `before` had)."""
        try:
            await self.backend.apply(update)
            return
        except UdpFlannelError:
            raise
        except Exception as e:
            self.peer_errors += 1
            what = f"a snapshot of {len(update.leases)} peers" if isinstance(update, Snapshot) else "a peer change"
            log.error("the backend failed on %s (a bug): %s; handing it over lease by lease", what, e, exc_info=True)
        if isinstance(update, Snapshot):
            keep = update.by_key()
            events = [LeaseEvent("added", l) for l in update.leases]
            events += [LeaseEvent("removed", l) for k, l in (before or {}).items() if k not in keep]
        else:
            events = list(update.events)
        for ev in events:
            try:
                await self.backend.apply(Delta((ev,)))
            except UdpFlannelError:
                raise
            except Exception as e:
                self.peer_errors += 1
                if (held := self._budget.take()) is not None:
                    log.error("the backend failed on lease %s (%s, a bug): %s; skipped until the next listing%s",
                              ev.lease.key, ev.kind, e, held_back_note(held), exc_info=True)  # fmt: skip

    def _log_rejections(self) -> None:
        for key, why in self.view.new_rejections():
            if isinstance(why, Failed):
                self.peer_errors += 1
            held = self._budget.take()
            if held is None:
                continue
            if isinstance(why, Failed):
                log.error("rejecting lease %s: %s%s", key, why, held_back_note(held), exc_info=why.error)
            elif isinstance(why, Ignored):
                log.info("ignoring lease %s: %s%s", key, why, held_back_note(held))
            else:
                log.warning("rejecting lease %s: %s%s", key, why, held_back_note(held))
