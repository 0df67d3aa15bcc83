"""The open-file limit a server needs for its connection cap to be what bounds connections."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Files a server opens besides its clients' connections: pools, logs, listeners, pipes.
SPARE_FILE_DESCRIPTORS = 1024


def allow_file_descriptors(wanted: int, needed_by: str) -> None:
    """Raise the soft limit on open files towards `wanted` (children inherit it), so the
    connection cap, not EMFILE, is what bounds connections; `needed_by` names the settings
    that want them, for the warning when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "only %d open files allowed (hard limit); %s needs about %d", target, needed_by, wanted
        )
