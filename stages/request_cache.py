"""The request cache: every teacher completion is stored once, so no completion is paid for twice.

One JSON file per sample under ``<root>/<key[:2]>/<key>.json``, keyed by a hash of (backend, model,
revision, prompt, sampling parameters with base seed, sample index). A file is written whole or not
at all (temporary name, then rename; object stores put whole objects), so a run killed mid-request
loses only the requests in flight, and any number of runs, shards and scheduler tasks can share one
cache (a local folder, NFS, or any fsspec URL such as ``s3://bucket/cache``) without locking: two
writers of one key write the same completion.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from schemas.ids import digest
from stages.io import open_location
from stages.teachers.base import Completion, TeacherInfo


def request_key(info: TeacherInfo, messages: Sequence[Mapping[str, str]], sampling: Mapping[str, Any],
                index: int, choices: Sequence[str] | None = None) -> str:
    """``sampling`` is the teacher's ``output_params``; a constrained request's choices shape its reply."""
    parts = [info.backend, info.model, info.revision, list(messages), dict(sampling), index]
    return digest("request", *parts, *([list(choices)] if choices else []))


class RequestCache:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root, self.local = open_location(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.json"

    def keys(self) -> set[str]:
        """Every key present, from one listing: cheaper than a lookup per request on object stores."""
        if self.local:
            found = set()
            for sub in os.scandir(self.root):
                if sub.is_dir() and len(sub.name) == 2:
                    found.update(e.name[:-5] for e in os.scandir(sub.path) if e.name.endswith(".json"))
            return found
        return {p.rsplit("/", 1)[-1][:-5] for p in self.fs.find(self.root) if p.endswith(".json")}

    def get(self, key: str) -> Completion | None:
        path = self._path(key)
        try:
            with self.fs.open(path, "r", encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:  # an unreadable entry is a miss, never a crash: the request is sent again
            return None
        return Completion(**record["completion"])

    def put(self, key: str, completion: Completion, about: Mapping[str, Any]) -> None:
        """Store one completion; ``about`` (teacher, sampling, index) makes the entry self-describing."""
        record = json.dumps({"key": key, **about, "completion": asdict(completion)}, ensure_ascii=False)
        path = self._path(key)
        if not self.local:
            self.fs.pipe_file(path, record.encode("utf-8"))
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(record)
        os.replace(tmp, path)
