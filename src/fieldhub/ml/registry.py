"""The model registry: versions on disk, the active one, activation history and rollback.

No torch. Layout, below a root (a data dir's `models/`):

  <root>/<name>/<version>/     a version directory (runtime.py): model.onnx, weights.pt,
                               golden.json, manifest.json
  <root>/<name>/ACTIVE         the active version's number, replaced atomically (temp + rename)
  <root>/<name>/history.jsonl  one line per activation:
                               {"version", "at_us", "by", "action", "previous"}

A version is activated only after `validate` passed: every file's sha256 is the manifest's, the
manifest's schema holds, and ONNX Runtime reproduces golden.json within 1e-4. A version that
fails raises and the active one stays.

Rollback undoes the latest activation still in effect: it activates the version that was active
before it (from history.jsonl), not the manifest's `parent`. The parent is lineage, what training
started from; it may never have served (a candidate refused by a guard), so "go back" means "go
back to what was running". Rolling back twice undoes two activations.

One process (`fieldhub up`) owns a registry; a lock serialises activations within it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fieldhub.clock import Clock, SystemClock
from fieldhub.errors import Conflict, Invalid, NotFound
from fieldhub.ml.runtime import MODEL_NAME_PATTERN, Manifest, WindowModel, read_manifest
from fieldhub.security.files import secure_tree

log = logging.getLogger("fieldhub.ml")

ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "history.jsonl"
# Where a data dir keeps its registry, and the shipped default's source.
MODELS_DIRNAME = "models"
DEFAULT_MODELS = Path(__file__).resolve().parent / "default_models"
DEFAULT_MODEL_NAME = "window"
DEFAULT_MODEL_VERSION = 1

Action = Literal["activate", "rollback", "default"]


@dataclass(frozen=True, slots=True)
class Activation:
    """One line of history.jsonl: `version` became active at `at_us`, asked by `by`."""

    version: int
    at_us: int
    by: str
    action: Action
    previous: int | None

    def to_json(self) -> str:
        """The history line, without its newline."""
        return json.dumps(
            {
                "version": self.version,
                "at_us": self.at_us,
                "by": self.by,
                "action": self.action,
                "previous": self.previous,
            },
            separators=(",", ":"),
        )


def _is_version_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and str(int(path.name)) == path.name


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary sibling, fsyncs it and renames it over `path`: a reader sees
    the old content or the new, never half of either."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class Registry:
    """Model versions below `root`, one directory per model name."""

    def __init__(self, root: Path, *, clock: Clock | None = None) -> None:
        self.root = root
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()

    def model_dir(self, name: str) -> Path:
        """`<root>/<name>`; Invalid for a name that is not a safe directory name."""
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            raise Invalid(
                f"model name {name!r} must match {MODEL_NAME_PATTERN}", code="invalid_model_name"
            )
        return self.root / name

    def version_dir(self, name: str, version: int) -> Path:
        """`<root>/<name>/<version>`, whether or not it exists."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise Invalid(
                f"model version must be an integer >= 1, got {version!r}",
                code="invalid_model_version",
            )
        return self.model_dir(name) / str(version)

    def versions(self, name: str) -> list[Manifest]:
        """The readable versions' manifests, oldest first. A directory whose manifest is missing
        or invalid is left out with a warning (it can never be activated)."""
        directory = self.model_dir(name)
        if not directory.is_dir():
            return []
        manifests = []
        for path in sorted(
            (p for p in directory.iterdir() if _is_version_dir(p)), key=lambda p: int(p.name)
        ):
            try:
                manifest = read_manifest(path)
            except (Invalid, NotFound) as error:
                log.warning("model %s: skipping %s: %s", name, path, error.message)
                continue
            if manifest.name != name or manifest.version != int(path.name):
                log.warning(
                    "model %s: skipping %s: its manifest says %s v%d",
                    name,
                    path,
                    manifest.name,
                    manifest.version,
                )
                continue
            manifests.append(manifest)
        return manifests

    def next_version(self, name: str) -> int:
        """One more than the highest version directory (readable or not): numbers are never
        reused."""
        directory = self.model_dir(name)
        if not directory.is_dir():
            return 1
        numbers = [int(p.name) for p in directory.iterdir() if _is_version_dir(p)]
        return max(numbers, default=0) + 1

    def active(self, name: str) -> int | None:
        """The active version's number, None when none was activated. Invalid when the ACTIVE
        file holds something else than a version number."""
        path = self.model_dir(name) / ACTIVE_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        if not (text.isdigit() and int(text) >= 1):
            raise Invalid(
                f"{path} holds {text[:40]!r}, not a version number", code="invalid_model_registry"
            )
        return int(text)

    def history(self, name: str) -> list[Activation]:
        """Every activation, oldest first. A last line cut short (a crash while appending) is
        ignored; any other unreadable line is Invalid, naming it."""
        path = self.model_dir(name) / HISTORY_FILE
        try:
            lines = path.read_text().split("\n")
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                data = json.loads(line)
                entries.append(
                    Activation(
                        version=int(data["version"]),
                        at_us=int(data["at_us"]),
                        by=str(data["by"]),
                        action=data["action"],
                        previous=None if data["previous"] is None else int(data["previous"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines):  # no newline after it: an interrupted append
                    log.warning("model %s: ignoring a cut-short last line of %s", name, path)
                    continue
                raise Invalid(f"{path}:{number}: {error}", code="invalid_model_registry") from None
        return entries

    def validate(self, name: str, version: int) -> Manifest:
        """Checks a version without activating it: the manifest's schema and its name and
        version, every file's sha256, and ONNX Runtime's outputs on golden.json within 1e-4.
        NotFound when there is no such version; Invalid with a `code` saying why otherwise
        (`invalid_model_manifest`, `model_file_missing`, `model_checksum_mismatch`,
        `model_load_failed`, `model_signature_mismatch`, `invalid_model_golden`,
        `model_golden_mismatch`)."""
        directory = self.version_dir(name, version)
        if not directory.is_dir():
            raise NotFound(f"model {name} has no version {version}", code="model_version_not_found")
        manifest = read_manifest(directory)
        if manifest.name != name or manifest.version != version:
            raise Invalid(
                f"{directory}: the manifest says {manifest.name} v{manifest.version}",
                code="invalid_model_manifest",
            )
        WindowModel.load(directory).check_golden()
        return manifest

    def activate(self, name: str, version: int, *, by: str = "system") -> Manifest:
        """Validates `version` and makes it the active one, recording who asked. Raises what
        `validate` raises, and then the active version stays as it was."""
        with self._lock:
            return self._activate(name, version, by=by, action="activate")

    def rollback(self, name: str, *, by: str = "system") -> Manifest:
        """Activates the version that was active before the current one's activation (after
        validating it). Conflict (`no_model_to_roll_back_to`) when none was."""
        with self._lock:
            current = self.active(name)
            if current is None:
                raise Conflict(
                    f"model {name} has no active version", code="no_model_to_roll_back_to"
                )
            stack = self._stack(name)
            if not stack or stack[-1] != current:
                stack.append(current)  # ACTIVE written, history append lost: ACTIVE is the truth
            if len(stack) < 2:
                raise Conflict(
                    f"model {name} v{current} was the first activated: nothing to roll back to",
                    code="no_model_to_roll_back_to",
                )
            return self._activate(name, stack[-2], by=by, action="rollback")

    def install_first(self, name: str, source_dir: Path) -> int | None:
        """Copies the version directory `source_dir` in as `name`'s first version, validates and
        activates it; None (nothing done) when `name` already has any version directory."""
        with self._lock:
            directory = self.model_dir(name)
            if directory.is_dir() and any(_is_version_dir(p) for p in directory.iterdir()):
                return None
            manifest = read_manifest(source_dir)
            target = self.version_dir(name, manifest.version)
            directory.mkdir(parents=True, exist_ok=True)
            staging = directory / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source_dir, staging)
            # copytree copies the package's modes (0644, 0755): the data dir is fieldhub's alone.
            secure_tree(staging)
            os.replace(staging, target)
            try:
                self._activate(name, manifest.version, by="default", action="default")
            except (Invalid, NotFound):
                shutil.rmtree(target, ignore_errors=True)
                raise
            return manifest.version

    def load_active(self, name: str) -> WindowModel | None:
        """The active version, loaded (checksums checked); None when none is active."""
        version = self.active(name)
        if version is None:
            return None
        return WindowModel.load(self.version_dir(name, version))

    def _stack(self, name: str) -> list[int]:
        """Replays history: an activation pushes its version, a rollback pops the version it
        undid. The top is the active version, the one below it is what rollback restores."""
        stack: list[int] = []
        for entry in self.history(name):
            if entry.action == "rollback" and stack:
                stack.pop()
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        return stack

    def _activate(self, name: str, version: int, *, by: str, action: Action) -> Manifest:
        manifest = self.validate(name, version)
        directory = self.model_dir(name)
        previous = self.active(name)
        entry = Activation(
            version=version, at_us=self.clock.now_us(), by=by, action=action, previous=previous
        )
        # ACTIVE first: it is what serving reads. A crash before the history line leaves the
        # history one activation short, which rollback detects (ACTIVE is not its top).
        _write_atomically(directory / ACTIVE_FILE, f"{version}\n".encode())
        with open(directory / HISTORY_FILE, "a") as history:
            history.write(entry.to_json() + "\n")
            history.flush()
            os.fsync(history.fileno())
        log.info("model %s: v%d active (%s by %s, was %s)", name, version, action, by, previous)
        return manifest


def install_default(
    registry: Registry, *, name: str = DEFAULT_MODEL_NAME, source: Path | None = None
) -> int | None:
    """At first start: when `registry` has no version directory of `name` at all, copies the
    shipped default version into it, validates and activates it (`by`/`action` "default"), and
    returns its version. Does nothing (None) when any version directory exists, valid or not:
    the registry is not empty. A copy that fails validation is removed again and the error
    raised. `source` replaces the shipped directory (tests)."""
    source_dir = (
        source if source is not None else DEFAULT_MODELS / name / str(DEFAULT_MODEL_VERSION)
    )
    return registry.install_first(name, source_dir)
