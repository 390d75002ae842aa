"""The run directory (a local path or any fsspec URL): stage folders, manifests and the run lock."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from stages.io import open_location

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
LOCK = "_lock"


class RunLocked(RuntimeError):
    pass


class RunDir:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root, self.local = open_location(url)

    def path(self, *parts: str) -> str:
        """A path that fsspec, pyarrow and DuckDB all open: plain for local files, a URL otherwise."""
        inner = "/".join([self.root.rstrip("/"), *parts])
        return inner if self.local else self.fs.unstrip_protocol(inner)

    def files(self, stage: str, pattern: str) -> list[str]:
        found = sorted(self.fs.glob("/".join([self.root.rstrip("/"), stage, pattern])))
        return [p if self.local else self.fs.unstrip_protocol(p) for p in found]

    def manifest(self, stage: str) -> dict[str, Any] | None:
        return self.read_json(stage, MANIFEST)

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        path = self.path(*parts)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def manifests(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in sorted(self.fs.glob("/".join([self.root.rstrip("/"), "*", MANIFEST]))):
            with self.fs.open(path, "r") as f:
                data = json.load(f)
            found[data["stage"]] = data
        return found

    def write_json(self, data: dict[str, Any], *parts: str) -> None:
        """Write to a temporary name, then move: a manifest is either whole or absent."""
        path = self.path(*parts)
        tmp = path + ".tmp"
        with self.fs.open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        self.fs.mv(tmp, path)

    def reset(self, stage: str) -> None:
        """Remove whatever an earlier, interrupted attempt left, so parts never mix across attempts."""
        path = self.path(stage)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self.fs.makedirs(path, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str = LOCK) -> Iterator[None]:
        """One run per directory (shard tasks take one lock per shard).

        A lock left by a dead process on this host is taken over.
        """
        self.fs.makedirs(self.root, exist_ok=True)
        path = self.path(name)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now(UTC).isoformat(timespec="seconds")}
        self._acquire(path, me)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)

    def _acquire(self, path: str, me: dict[str, Any]) -> None:
        for _ in range(2):
            if self.local:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as f:
                        json.dump(me, f)
                    return
            elif not self.fs.exists(path):  # object stores have no exclusive create: best effort
                with self.fs.open(path, "w") as f:
                    json.dump(me, f)
                return
            holder = self._holder(path)
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                log.warning("taking over a stale lock of pid %s (no longer running)", holder.get("pid"))
                self.fs.rm(path)
                continue
            raise RunLocked(
                f"{self.url} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')}. If no run is active there, delete {path}."
            )
        raise RunLocked(f"could not take the lock {path}")

    def check_no_shard_tasks(self) -> None:
        """A whole-run task must not run beside shard tasks that write into the same stage folders."""
        me = socket.gethostname()
        for path in self.fs.glob("/".join([self.root.rstrip("/"), LOCK + ".shard-*"])):
            holder = self._holder(path)
            if holder.get("host") == me and not _alive(holder.get("pid")):
                continue
            raise RunLocked(f"{self.url}: a shard task is running (pid {holder.get('pid')} on "
                            f"{holder.get('host')}, lock {path}); wait for it, or delete the lock if it died")

    def check_no_whole_run(self) -> None:
        """A shard task must not run beside a whole-run task, which resets and merges the stage folders."""
        path = self.path(LOCK)
        if not self.fs.exists(path):
            return
        holder = self._holder(path)
        if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            return
        raise RunLocked(f"{self.url}: a whole run is running (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, lock {path}); wait for it, or delete the lock if it died")

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)

    def _holder(self, path: str) -> dict[str, Any]:
        try:
            with self.fs.open(path, "r") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
