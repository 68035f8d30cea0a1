"""The slow part of test_fresh_vm.py — image, stand-ins, a fresh VM, README's first command —
as a job that can start as soon as pytest has collected the tests, in a thread, while the
rest of the suite runs (conftest.py's ``pytest_collection_finish``): under TCG it takes
about 20 minutes of emulated CPU, which would otherwise come on top of the suite's time.
qemu and the host-side builds run at the lowest CPU priority (``nice 19``), so the other
tests keep the processor when they want it and the VM takes what is left; test_fresh_vm.py
then waits for the result.

Started lazily by the test module itself when pytest runs it alone (``-m vm tests/vm/…``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import images
import standins
from checks import snapshot
from vm import BootedVm, Vm, VmError, accelerator, build_image, missing_host_packages

CHECKOUT = "/root/k8s-sql"
WHEELS = "/var/cache/k8s-sql-wheels"
VM_CA_FILE = "/usr/local/share/ca-certificates/k8s-sql-vm-tests.crt"
STATE_FILE = "/var/lib/k8s-sql/state.json"
PYTHON_REPOSITORY, PYTHON_TAG = "library/python", "3.11-slim-bookworm"
#: The niceness of everything the job starts (qemu included): the lowest priority.
NICE = 19
#: Seconds to wait for SSH and for README's command: generous, since at the lowest priority
#: the VM may get no processor at all while the suite's busiest tests (a Go build) run.
BOOT_TIMEOUT, COMMAND_TIMEOUT = 2700.0, 5400.0


@dataclass
class Result:
    """What test_fresh_vm.py looks at: the stand-in server (``server.requests()``), the
    base image's layer digest, the booted VM, README's command line and its result, the
    snapshots before and after it, and the paths k8s-sql recorded as created."""

    server: object
    python_layer: str
    booted: BootedVm
    command: str
    res: object
    before: list[str]
    after: list[str]
    created: set[str]
    timings: list[tuple[str, float]] = field(default_factory=list)


class MainJob:
    """The flow of the module doc in a daemon thread; :meth:`result` waits for it and
    raises what it raised; :meth:`stop` powers the VM off and stops the server."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.timings: list[tuple[str, float]] = []
        self._result: Result | None = None
        self._error: str | None = None
        self._vm: Vm | None = None
        self._server = None
        self._thread = threading.Thread(target=self._run, name="k8s-sql-main-job", daemon=True)

    def start(self) -> "MainJob":
        self._thread.start()
        return self

    def result(self, timeout: float = 7200) -> Result:
        """The result; raises VmError with the job's traceback if it failed or did not end
        within ``timeout`` seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise VmError(f"the fresh-VM job did not end within {timeout:.0f} s (see {self.workdir})")
        if self._error is not None:
            raise VmError(self._error)
        return self._result

    def stop(self) -> None:
        if self._vm is not None:
            start = time.monotonic()
            self._vm.stop()
            self._time("shutdown", start)
            self._vm = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _time(self, name: str, start: float) -> None:
        self.timings.append((name, time.monotonic() - start))

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)  # this thread and what it starts
        try:
            self._result = self._flow()
        except BaseException:  # noqa: BLE001 - handed to the test through result()
            self._error = f"the fresh-VM job failed (its files: {self.workdir}):\n{traceback.format_exc()}"

    def _flow(self) -> Result:
        missing = missing_host_packages()
        if missing:
            raise VmError(f"the VM tests need the host packages {', '.join(missing)}: "
                          f"apt-get install --no-install-recommends {' '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        image, _ = build_image(self.workdir / "build-image.log")
        self._time("image (build or cache)", start)

        start = time.monotonic()
        edge = self.workdir / "edge"
        edge.mkdir(exist_ok=True)
        server = self._server = standins.build_repos(edge)
        built: dict[str, float] = {}
        layer = images.python_base_layer(built)
        images.registry_layout(edge / "www", PYTHON_REPOSITORY, PYTHON_TAG, layer, images.PYTHON_CONFIG)
        wheels = standins.wheelhouse(edge / "wheels")
        disk = standins.checkout_tar(edge / "checkout.disk", CHECKOUT.lstrip("/"), {WHEELS.lstrip("/"): wheels})
        self.timings += list(built.items())
        self._time("stand-ins, wheelhouse, checkout disk", start)

        vm = self._vm = Vm(image, self.workdir / "vm", guestfwd=[(standins.REPO_IP, 443, server.port)],
                           drives=[disk])
        start = time.monotonic()
        accel_name, _ = accelerator(image.kernel)
        self._time(f"accelerator probe ({accel_name})", start)
        vm.start(ssh_timeout=BOOT_TIMEOUT)
        self.timings.append(("boot to SSH", vm.boot_seconds))
        vm.put(VM_CA_FILE, server.tls.ca_pem)
        vm.ssh(f"""set -e
echo '{standins.REPO_IP} {" ".join(standins.NAMES)}' >>/etc/hosts
if command -v update-ca-certificates >/dev/null; then update-ca-certificates >/dev/null; fi
tar -xf /dev/vdb -C /
printf '[global]\\nno-index = true\\nfind-links = {WHEELS}\\n' >/etc/pip.conf
""", timeout=600)

        command = standins.readme_first_command()
        before = snapshot(vm)
        start = time.monotonic()
        res = vm.ssh(f"cd {CHECKOUT} && {command}", check=False, timeout=COMMAND_TIMEOUT)
        self._time("README's first command", start)
        (vm.workdir / "readme.log").write_text(f"$ {command}\nexit {res.returncode}\n--- stdout\n{res.stdout}\n"
                                               f"--- stderr\n{res.stderr}\n")
        record = vm.ssh(f"cat {STATE_FILE}", check=False).stdout
        created = {e["path"] for e in json.loads(record)["entries"]} if record.strip() else set()
        return Result(server, "sha256:" + images.sha256_file(layer), BootedVm(vm.ssh_port, vm.key, vm.known_hosts, vm),
                      command, res, before, snapshot(vm), created)
