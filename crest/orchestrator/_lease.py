"""The driver's lease on its study, kept fresh by a heartbeat thread.

Only one driver runs a study at a time: it takes the lease before it writes anything else
(:meth:`crest.storage.Store.acquire_lease`), a daemon thread refreshes it, and the driver's
loop stops as soon as :attr:`LeaseKeeper.lost` is set (another driver took a lease that
looked dead to it).
"""

from __future__ import annotations

import logging
import threading

from crest.exceptions import StorageError
from crest.storage import Store

__all__ = ["LeaseKeeper"]

logger = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Takes a study's lease, refreshes it every ``every`` seconds, and gives it back.

    Args:
        store: the database.
        study_id: crest's study id.
        study: the study's name (for messages).
        owner: this driver's lease owner id.
        every: seconds between heartbeats.

    Attributes:
        lost: set when a heartbeat found the lease held by another driver.
    """

    def __init__(self, store: Store, study_id: int, study: str, owner: str, every: float) -> None:
        super().__init__(name="crest-heartbeat", daemon=True)
        self.store, self.study_id, self.study, self.owner, self.every = store, study_id, study, owner, every
        self._stopping = threading.Event()
        self.lost = threading.Event()

    def acquire(self, ttl: float) -> None:
        """Take the lease (raises LeaseError while a live driver holds it) and start beating."""
        self.store.acquire_lease(self.study_id, self.owner, ttl=ttl)
        logger.info("took the lease on study '%s' as %s (ttl %.0f s)", self.study, self.owner, ttl)
        self.start()

    def run(self) -> None:
        while not self._stopping.wait(self.every):
            try:
                held = self.store.heartbeat(self.study_id, self.owner)
            except StorageError as e:
                # transient (a restart, a lock timeout): the lease lives until its TTL, so
                # the next beat may still be in time
                logger.warning("heartbeat of study '%s' failed, retrying in %.1f s: %s", self.study, self.every, e)
                continue
            if not held:
                logger.error("lost the lease on study '%s': another driver holds it", self.study)
                self.lost.set()
                return

    def release(self) -> None:
        """Stop beating and give the lease back (unless another driver holds it now)."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=5)
        if self.lost.is_set():
            return
        self.store.release_lease(self.study_id, self.owner)
        logger.info("released the lease on study '%s'", self.study)
