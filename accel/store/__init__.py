"""Run store: every result is a SQLite row plus an artifact folder, so runs are cached, listed, reopened and shared.

SQLite runs in WAL mode with a busy timeout and one connection per call, so several dashboard sessions (threads)
and processes can write at once. Artifacts are written into a temporary folder that is renamed into place before
the row is committed: a writer killed at any moment leaves either a complete run or no run, never half of one.
Each run folder carries a manifest.json with everything its row holds, so a lost or damaged index is rebuilt from
the folders (`RunStore.rebuild`, `convlens store rebuild`) and is never silently re-created empty beside them.
Every run has an owner (the signed-in user, or "local") and a private flag: a run opens for anyone holding its id
(its link is a capability) unless its owner made it private; only the owner deletes it or changes its privacy.
Methods that take `user=` enforce this; `user=None` is the operator (CLI, scripts) who can read the files anyway.
The root is `$CONVLENS_STORE`, else `platformdirs.user_data_dir("convlens")/store`.

Rooms: `folders` (the store on disk, errors), `keys` (request keys), `rows` (index rows, StoredRun), `index`
(SQLite plumbing), `runstore` (RunStore), `repair` (check, rebuild), `exports` (HTML, zip), `uploads`; how a
Result is written into and read from its folder is the codec in `accel.result`.
"""

from __future__ import annotations

from .folders import ENV_STORE, StoreError, default_root
from .index import SCHEMA_VERSION
from .keys import image_key, request_key
from .repair import RebuildReport, StoreReport
from .rows import LOCAL_OWNER, RunFacts, RunFilter, StoredRun
from .runstore import RunStore, forget_opened
from .uploads import ENV_MAX_UPLOAD_MB, UPLOAD_SUFFIXES, save_upload_to

__all__ = [
    "ENV_MAX_UPLOAD_MB",
    "ENV_STORE",
    "LOCAL_OWNER",
    "SCHEMA_VERSION",
    "UPLOAD_SUFFIXES",
    "RebuildReport",
    "RunFacts",
    "RunFilter",
    "RunStore",
    "StoreError",
    "StoreReport",
    "StoredRun",
    "default_root",
    "forget_opened",
    "image_key",
    "request_key",
    "save_upload_to",
]
