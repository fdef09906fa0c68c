"""A Docker Engine API for the tests: Podman's compatible service on a temp socket.

No Docker engine runs on the build machines; Podman (installed by ``tests/install-services.sh``)
serves the same API, and aiodocker cannot tell the difference. The service runs with its own
``containers.conf`` (host networking, runc, cgroupfs, no default ulimits), so nothing under /etc
is changed. No registry is reachable, so the simulator image is made locally: a busybox rootfs
imported as an image whose entrypoint ``chroot``s into the host root (bind-mounted read-only at
/host) and runs ``python -m gwproxy sim`` — the vLLM image's role, with the same arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

SIM_IMAGE = "localhost/gwproxy-sim-test:latest"
SIM_FLAGS = ("--startup-delay", "1.5", "--ttft-ms", "10", "--itl-ms", "10")
CONF = """[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


class Podman:
    def __init__(self, own_storage: bool = False) -> None:
        """``own_storage``: containers and images kept apart from every other Podman service
        (another GPU host, as far as the gateway can tell)."""
        binary = shutil.which("podman")
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("the Docker-backend tests run Podman as root (make test as root, as CI does)")
        if binary is None:
            raise RuntimeError("podman not found: run `make test` as root (it installs podman, runc, busybox-static)")
        self.root = Path(tempfile.mkdtemp(prefix="gwproxy-podman-"))
        (self.root / "containers.conf").write_text(CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")}
        self.flags = ["--root", str(self.root / "storage"), "--runroot", str(self.root / "run")] if own_storage else []
        self.socket = self.root / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.log = (self.root / "service.log").open("wb")
        self.service = subprocess.Popen(
            [binary, *self.flags, "system", "service", "--time=0", self.url],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not start:\n{(self.root / 'service.log').read_text()}")
            time.sleep(0.1)
        self.build_sim_image()

    def podman(self, *args: str) -> str:
        out = subprocess.run(["podman", *self.flags, *args], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout

    def build_sim_image(self) -> None:
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox not found: run `make test` as root (it installs busybox-static)")
        tar_path = self.root / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(busybox, "bin/busybox")
            for name in ("sh", "chroot"):
                link = tarfile.TarInfo(f"bin/{name}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
            host = tarfile.TarInfo("host")
            host.type = tarfile.DIRTYPE
            tar.addfile(host)
        entry = ["/bin/chroot", "/host", sys.executable, "-m", "gwproxy", "sim", *SIM_FLAGS]
        change = "ENTRYPOINT [" + ", ".join(f'"{a}"' for a in entry) + "]"
        self.podman("import", "--change", change, str(tar_path), SIM_IMAGE)

    def containers(self, label: str = "gwproxy.managed") -> list[str]:
        return self.podman("ps", "-a", "--filter", f"label={label}=true", "--format", "{{.Names}}").split()

    def remove_managed(self) -> None:
        for name in [*self.containers(), *self.containers("gwproxy.fleet")]:
            subprocess.run(["podman", *self.flags, "rm", "-f", "-t", "0", name], env=self.env, capture_output=True)

    def stop(self) -> None:
        self.remove_managed()
        self.service.terminate()
        try:
            self.service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.service.kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
