"""The driver's lease on its study, kept fresh by a heartbeat thread.

Only one driver runs a study at a time: it takes the lease before it writes anything else
(:meth:`crest.storage.Store.acquire_lease`, or a new study's row is created holding it),
every later write is fenced on it (:meth:`crest.storage.Store.fence`), a daemon thread
refreshes it, and the driver's loop stops as soon as :attr:`LeaseKeeper.lost` is set
(another driver took a lease that looked dead to it).
"""

from __future__ import annotations

import logging
import threading

from crest.exceptions import StorageError
from crest.storage import Store

__all__ = ["LeaseKeeper"]

logger = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Refreshes a study's lease (already taken) every ``every`` seconds, and gives it back.

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
