"""Process backend: vLLM (or any command speaking its API) as a local process, for hosts
without Docker.

The process runs in its own session (so it outlives a gateway restart, as a container would),
writes its output to ``<state_dir>/<profile>.log``, and is recorded in
``<state_dir>/instance.json`` (pid, profile, previous profile, command line) so a restarted
gateway can find it again. A recorded pid is trusted only while ``/proc/<pid>/cmdline`` still
matches the recorded command line (pids are reused). Stopping signals the whole process group:
SIGTERM, then SIGKILL after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from gwproxy import log
from gwproxy.switcher.backend import Instance, Launch

_log = log.get("gwproxy.switcher.process")


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class ProcessBackend:
    name = "process"

    def __init__(self, command: Sequence[str], state_dir: Path, env: Mapping[str, str]) -> None:
        self.command = list(command)
        self.state_dir = state_dir
        self.env = dict(env)
        self._children: dict[int, asyncio.subprocess.Process] = {}

    @property
    def _record(self) -> Path:
        return self.state_dir / "instance.json"

    def log_path(self, profile_id: str) -> Path:
        return self.state_dir / f"{profile_id}.log"

    async def start(self, launch: Launch) -> Instance:
        profile = launch.profile
        argv = [*(profile.command or self.command), *launch.args()]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logfile = self.log_path(profile.id)
        env = {**os.environ, **self.env, **dict(profile.env)}
        with logfile.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        self._children[proc.pid] = proc
        cmdline = _cmdline(proc.pid) or argv
        record = {"pid": proc.pid, "profile": profile.id, "previous": launch.previous, "cmdline": cmdline}
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._record)
        _log.info("process started", profile=profile.id, pid=proc.pid, command=argv[0], log=str(logfile))
        return Instance(profile.id, launch.previous, str(proc.pid), True)

    async def logs(self, instance: Instance) -> AsyncIterator[str]:
        path = self.log_path(instance.profile_id)
        pending = b""
        with path.open("rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode(errors="replace").rstrip("\r")
                    continue
                if not (await self.state(instance)).running:
                    if pending:
                        yield pending.decode(errors="replace")
                    return
                await asyncio.sleep(0.2)

    async def state(self, instance: Instance) -> Instance:
        pid = int(instance.handle)
        child = self._children.get(pid)
        if child is not None:
            code = child.returncode
            running = code is None
        else:  # adopted after a restart: no exit code to be had
            running, code = _alive(pid), None
        return Instance(instance.profile_id, instance.previous, instance.handle, running, code)

    async def stop(self, instance: Instance, grace: float) -> None:
        pid = int(instance.handle)
        child = self._children.pop(pid, None)
        if _alive(pid):
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(pid) and time.monotonic() < deadline:
                if child is not None and child.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            if _alive(pid) and (child is None or child.returncode is None):
                _log.warning("process ignored SIGTERM, killing it", pid=pid, grace=grace)
                self._signal(pid, signal.SIGKILL)
        if child is not None:
            await child.wait()
        self._forget(pid)
        _log.info("process stopped", profile=instance.profile_id, pid=pid)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)  # its own session: the group is the model server and its workers

    def _forget(self, pid: int) -> None:
        try:
            if json.loads(self._record.read_text()).get("pid") == pid:
                self._record.unlink()
        except (OSError, ValueError):
            pass

    async def find(self) -> Instance | None:
        try:
            record = json.loads(self._record.read_text())
            pid, recorded = int(record["pid"]), list(record["cmdline"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _alive(pid) or _cmdline(pid) != recorded:
            _log.info("recorded model process is gone", pid=pid, profile=record.get("profile"))
            self._forget(pid)
            return None
        return Instance(str(record["profile"]), record.get("previous"), str(pid), True)

    async def close(self) -> None:
        return None
