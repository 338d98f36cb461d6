"""A real headless Chromium for tests that look at HTML the way a browser does (tests/test_analytics_report.py).

scripts/setup.sh unpacks Debian's ``chromium-headless-shell`` (and ``chromium-common``, whose ICU data and
V8 snapshot it loads, and the library packages this machine lacks) into ``.cache/chromium``; the binary
runs from there with ``LD_LIBRARY_PATH`` pointing at the unpacked libraries. A ``chromium-headless-shell``
on PATH (a system install) is used otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_DIR = REPO / ".cache/chromium"
MISSING = "chromium-headless-shell not found: run scripts/setup.sh (it unpacks Debian's chromium-headless-shell into .cache/chromium)"


@dataclass(frozen=True)
class Chromium:
    binary: Path
    env: dict[str, str]

    def run(self, profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """Run it headless once, with its own profile folder; raises when it fails."""
        profile.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary),
            "--headless",
            "--no-sandbox",  # root in a container: the setuid/namespace sandbox is not available
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            *args,
        ]
        env = {**self.env, "HOME": str(profile)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def dump_dom(self, url: str, profile: Path, *, budget_ms: int = 5000) -> str:
        """The DOM after the page loaded (and its scripts, if any may run, ran), serialised."""
        return self.run(profile, f"--virtual-time-budget={budget_ms}", "--run-all-compositor-stages-before-draw", "--dump-dom", url).stdout

    def screenshot(self, url: str, png: Path, profile: Path, *, width: int = 1280, height: int = 4000) -> Path:
        self.run(profile, f"--window-size={width},{height}", "--run-all-compositor-stages-before-draw", f"--screenshot={png}", url)
        return png


def library_dirs(prefix: Path) -> list[Path]:
    """The unpacked packages' library folders (Debian puts some under lib/, pulseaudio's in a subfolder)."""
    patterns = ("usr/lib/*-linux-gnu", "lib/*-linux-gnu", "usr/lib/*-linux-gnu/pulseaudio")
    return sorted(d for pattern in patterns for d in prefix.glob(pattern) if d.is_dir())


def find_chromium(prefix: Path = CHROMIUM_DIR) -> Chromium | None:
    """The unpacked chromium-headless-shell and the environment it runs in, else one on PATH, else None."""
    binary = prefix / "usr/lib/chromium/chromium-headless-shell"
    if binary.is_file() and os.access(binary, os.X_OK):
        env = dict(os.environ)
        paths = [str(d) for d in library_dirs(prefix)]
        if env.get("LD_LIBRARY_PATH"):
            paths.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        return Chromium(binary, env)
    found = shutil.which("chromium-headless-shell")
    return Chromium(Path(found), dict(os.environ)) if found else None
