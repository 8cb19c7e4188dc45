"""Build and run the porcupine checker of tools/porcupine (``lease-check``) from the tests.

Rules:
1. The binary is built once per source version into ``.cache/porcupine/lease-check-<hash>`` (git-ignored) and
   reused; the hash covers go.mod, go.sum and every .go file, so an edited model is rebuilt.
2. ``go build`` runs with ``GOFLAGS=-mod=mod`` and the module proxy, so a fresh machine fetches porcupine itself;
   nothing of porcupine is vendored. The build writes to a temp name and renames, so concurrent sessions are safe.
3. ``check`` returns the exit code and the JSON summary; 0 = linearizable, 1 = violation (the visualization is
   written), 2 = bad input, 3 = timed out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CheckResult", "build_lease_check", "check_history"]

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tools" / "porcupine"
CACHE = ROOT / ".cache" / "porcupine"
_BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class CheckResult:
    """What ``lease-check`` said about one history."""

    code: int
    summary: dict[str, Any]
    stderr: str
    history: Path
    visualization: Path

    @property
    def linearizable(self) -> bool:
        return self.code == 0


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([*SOURCE.glob("*.go"), SOURCE / "go.mod", SOURCE / "go.sum"]):
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def build_lease_check() -> Path:
    """The built checker, building it first when this source version has no binary yet (rule 1)."""
    binary = CACHE / f"lease-check-{_source_hash()}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go is needed to build tools/porcupine (apt-get install golang, or https://go.dev/dl)")
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    result = subprocess.run(
        [go, "build", "-o", str(staging), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"go build of tools/porcupine failed:\n{result.stdout}{result.stderr}")
    os.replace(staging, binary)
    return binary


def check_history(
    history: Path, *, ttl_ms: int, visualization: Path, timeout_s: float = 120.0, always_visualize: bool = False
) -> CheckResult:
    """Run the checker on a JSON-lines history (rule 3)."""
    args = [
        str(build_lease_check()),
        "-history",
        str(history),
        "-ttl-ms",
        str(ttl_ms),
        "-visualize",
        str(visualization),
        "-timeout",
        f"{timeout_s:.0f}s",
    ]
    if always_visualize:
        args.append("-visualize-always")
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s * 2 + 60, check=False)
    try:
        summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    except ValueError:
        summary = {"raw": result.stdout}
    return CheckResult(result.returncode, summary, result.stderr, history, visualization)
