"""Ray Serve's request router for the session replicas (emote/serve/ray_app.py): sticky by session id, new sessions where there is room.

Ray's HTTP proxy asks it, per request, which replicas may take it (ranked lists; Ray takes the
one with the fewest requests in flight in the first non-empty rank):

- a request naming a session (the ``serve_multiplexed_model_id`` header: the session id) goes
  to the replica that registered that id (``serve.multiplexed``), and only there. While no
  replica has registered it (Ray learns an id within a second; or its replica has died) any
  replica takes it and answers that the session is not there (4409 / 404): never a wrong
  session's stream;
- a new session (POST /sessions) goes to the replica with the most free session slots, as each
  replica reports them (``record_routing_stats``: its measured limit minus its sessions, those
  being created included), less the sessions this router sent it that the report may not hold
  yet (sent less than 2 s before it);
- anything else (health, readiness, metrics, the page): any replica, at random.

Imported by Ray's proxy by its path (``emote.serve.ray_router:SessionRouter``), so it imports Ray
at the top: only `emote serve --ray` loads it.
"""

from __future__ import annotations

import random
import time

from ray.serve.request_router import FIFOMixin, MultiplexMixin, PendingRequest, RequestRouter, RunningReplica

FREE = "free_slots"  # the routing stat a replica reports
SETTLE = 2.0  # a session sent counts against its replica until a report this much newer (its creation is in it)


class SessionRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._sent: dict = {}  # replica id -> send times of new sessions not yet in its report

    def _free(self, replica: RunningReplica) -> float:
        """The replica's free slots: its report, less the sessions sent since that it may not hold yet
        (and the sends its report already holds are forgotten here)."""
        stats = replica.routing_stats or {}
        reported = stats.get("at", 0.0)
        recent = [t for t in self._sent.get(replica.replica_id, []) if t + SETTLE > reported]
        self._sent[replica.replica_id] = recent
        return float(stats.get(FREE, 0)) - len(recent)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        meta = pending_request.metadata if pending_request is not None else None
        sid = meta.multiplexed_model_id if meta is not None else ""
        if sid:
            holders = self._multiplexed_model_id_to_replica_ids.get(sid, set())
            held = [r for r in candidate_replicas if r.replica_id in holders]
            return [held] if held else [random.sample(candidate_replicas, len(candidate_replicas))]
        if meta is not None and meta.route.rstrip("/").endswith("/sessions"):
            shuffled = random.sample(candidate_replicas, len(candidate_replicas))  # ties: at random
            ranked = sorted(shuffled, key=self._free, reverse=True)
            best = ranked[0]
            self._sent.setdefault(best.replica_id, []).append(time.time())
            return [[best], ranked[1:]]
        return [random.sample(candidate_replicas, len(candidate_replicas))]
