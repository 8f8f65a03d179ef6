"""``rlimpact supervise``: run the services as children, restart what exits, stop them all.

The supervisor runs in the foreground (``rlimpact up`` starts it detached). Each instance of a
service is ``python -m services.<name>`` with ``RLIMPACT_INSTANCE`` set (0, 1, … per service),
its output appended to ``$DATA_DIR/logs/<label>.log`` and its pid in ``$DATA_DIR/run/<label>.pid``
(the label is the service's name for instance 0, ``<name>-<i>`` for the others). A child that
exits is started again after a capped, jittered, doubling delay (:class:`Child`). On SIGTERM,
SIGINT or SIGHUP every child gets SIGTERM, then SIGKILL (its whole process group) after the
grace period; the supervisor reaps them and exits.

No process is left behind: the children get SIGTERM if the supervisor dies
(``PR_SET_PDEATHSIG``), and the supervisor is a child subreaper, so the orphaned descendants
of a killed service (the parser's worker processes) become its children, to be reaped, and
killed at the end. ``run/supervisor.json`` holds each instance's pid and restart count, for
``rlimpact status``; ``run/prometheus-targets.json`` lists every instance's ``/metrics``
address in Prometheus's ``file_sd`` format.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.cli.instances import (
    STATE_FILE,
    SUPERVISOR,
    TARGETS_FILE,
    Instance,
    instance_environment,
    parse_scale,
    parse_services,
    pid_file,
    plan,
    prometheus_targets,
    read_pid,
    service_command,
    write_atomically,
)
from shared import process
from shared.backoff import Backoff
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings

IDLE_WAKE_SECONDS = 1.0
logger = logging.getLogger(SUPERVISOR)


def register(commands: argparse._SubParsersAction) -> None:
    supervise = commands.add_parser(
        "supervise",
        help="run the services in the foreground, restarting any that exits",
        description=(
            "Run each service instance as a child process (python -m services.<name>, with "
            "RLIMPACT_INSTANCE), restart one that exits with a capped, jittered backoff, and "
            "stop them all on SIGTERM or Ctrl-C. Logs in $DATA_DIR/logs, pids in $DATA_DIR/run."
        ),
    )
    add_scale_arguments(supervise)
    supervise.set_defaults(func=cmd_supervise)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale", type=parse_scale, default={},
        help="instances per service, e.g. parser=2,scorer=2 (default 1 each)",
    )  # fmt: skip
    parser.add_argument(
        "--services", type=parse_services, default=list(SERVICE_NAMES),
        help=f"which services to run (default all: {','.join(SERVICE_NAMES)})",
    )  # fmt: skip


def cmd_supervise(args: argparse.Namespace, settings: Settings) -> int:
    try:
        instances = plan(args.services, args.scale)
    except ValueError as error:
        raise SystemExit(f"rlimpact: {error}") from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(levelname)s: %(message)s"
    )
    return Supervisor(settings, instances).run()


# ---------------------------------------------------------------- restarts


@dataclass
class Child:
    """One instance's process, and when to start it again after it exits.

    The delay starts at ``initial`` seconds and doubles, jittered, up to ``maximum``; a child
    that ran for ``healthy_seconds`` before exiting starts over from ``initial``.
    """

    instance: Instance
    backoff: Backoff
    healthy_seconds: float
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0  # monotonic time of the next start; None while running
    restarts: int = 0
    last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def started(self, popen: subprocess.Popen[bytes], now: float) -> None:
        if self.last_exit is not None:
            self.restarts += 1
        self.popen, self.started_at, self.restart_at = popen, now, None

    def exited(self, exit_code: int, now: float) -> float:
        """Record the exit (a negative code: killed by that signal); return the delay."""
        if now - self.started_at >= self.healthy_seconds:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self.last_exit, self.popen, self.restart_at = exit_code, None, now + delay
        return delay

    def due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ---------------------------------------------------------------- the supervisor


@dataclass
class Supervisor:
    settings: Settings
    instances: list[Instance]
    command: Callable[[Instance], list[str]] = service_command
    log: Callable[[str], None] = logger.info
    children: list[Child] = field(default_factory=list)
    stopping: int | None = None  # the signal that asked to stop

    def run(self) -> int:
        run_dir, log_dir = self.settings.run_dir, self.settings.log_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive(run_dir) as mine:
            if not mine:
                other = read_pid(pid_file(run_dir, SUPERVISOR))
                self.log(f"a supervisor already runs (pid {other})")
                return 1
            process.become_subreaper()
            write_atomically(pid_file(run_dir, SUPERVISOR), f"{os.getpid()}\n")
            write_atomically(
                run_dir / TARGETS_FILE,
                json.dumps(prometheus_targets(self.settings, self.instances), indent=1) + "\n",
            )
            self.children = [self._child(instance) for instance in self.instances]
            with self._signals() as wake:
                self.log(f"supervising {', '.join(i.label for i in self.instances)}")
                try:
                    while self.stopping is None:
                        self._start_due(time.monotonic())
                        self._wait(wake)
                        self._reap()
                finally:  # on a signal, or on an error of the supervisor's own
                    why = signal.Signals(self.stopping).name if self.stopping else "an error"
                    self.log(f"stopping on {why}")
                    self.stopping = self.stopping or signal.SIGTERM
                    self._stop_children()
            self._remove_pid_files()
        self.log("stopped")
        return 0

    def _child(self, instance: Instance) -> Child:
        backoff = Backoff(
            self.settings.supervisor_backoff_max_seconds,
            self.settings.supervisor_backoff_initial_seconds,
        )
        return Child(instance, backoff, self.settings.supervisor_healthy_seconds)

    @contextlib.contextmanager
    def _exclusive(self, run_dir: Path) -> Iterator[bool]:
        """Hold ``run/supervisor.lock`` (released by the kernel however this process ends)."""
        with (run_dir / "supervisor.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[int]:
        """Stop on SIGTERM/SIGINT/SIGHUP; any signal (SIGCHLD too) wakes the loop at once."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.getsignal(sig) for sig in (*stop_signals, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_write)
        try:
            for sig in stop_signals:
                signal.signal(sig, self._ask_to_stop)
            signal.signal(signal.SIGCHLD, lambda *_: None)
            yield wake_read
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_read)
            os.close(wake_write)

    def _ask_to_stop(self, signum: int, _frame: object) -> None:
        if self.stopping is None:
            self.stopping = signum

    def _wait(self, wake: int) -> None:
        now = time.monotonic()
        due = [c.restart_at - now for c in self.children if c.restart_at is not None]
        timeout = max(0.0, min([IDLE_WAKE_SECONDS, *due]))
        with contextlib.suppress(InterruptedError):
            select.select([wake], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake, 512):
                pass

    # ------------------------------------------------------------ starting and reaping

    def _start_due(self, now: float) -> None:
        for child in self.children:
            if child.due(now):
                self._start(child, now)

    def _start(self, child: Child, now: float) -> None:
        instance = child.instance
        parent_pid = os.getpid()
        log_path = self.settings.log_dir / f"{instance.label}.log"
        try:
            with log_path.open("ab") as log:
                popen = subprocess.Popen(
                    self.command(instance),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                    env={**os.environ, **instance_environment(self.settings, instance)},
                    process_group=0,  # a group of its own: SIGKILL reaches its workers too
                    preexec_fn=lambda: process.die_with_parent(parent_pid, signal.SIGTERM),
                )
        except (OSError, subprocess.SubprocessError) as error:
            child.started_at = now
            delay = child.exited(127, now)
            self.log(f"{instance.label}: cannot start ({error}); retrying in {delay:.1f} s")
            self._write_state()
            return
        restart = child.last_exit is not None
        child.started(popen, now)
        write_atomically(pid_file(self.settings.run_dir, instance.label), f"{popen.pid}\n")
        what = f"restarted (restart {child.restarts})" if restart else "started"
        port = self.settings.metrics_port(instance.service, instance.index)
        self.log(f"{instance.label}: {what}, pid {popen.pid}, metrics :{port}, log {log_path}")
        self._write_state()

    def _reap(self) -> None:
        """Collect every child that exited: an instance (to restart) or an adopted orphan."""
        by_pid = {child.pid: child for child in self.children if child.pid is not None}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            child = by_pid.get(pid)
            if child is None:
                self.log(f"reaped pid {pid}, an orphan of a service ({describe_exit(code)})")
                continue
            self._exited(child, code)

    def _exited(self, child: Child, code: int) -> None:
        popen, now = child.popen, time.monotonic()
        assert popen is not None
        popen.returncode = code  # reaped here: Popen must not wait for the pid again
        ran = now - child.started_at
        pid_file(self.settings.run_dir, child.instance.label).unlink(missing_ok=True)
        delay = child.exited(code, now)
        what = f"{child.instance.label} (pid {popen.pid}) {describe_exit(code)} after {ran:.1f} s"
        if self.stopping is None:
            self.log(f"{what}; restart {child.restarts + 1} in {delay:.1f} s")
        else:
            child.restart_at = None
            self.log(what)
        self._write_state()

    # ------------------------------------------------------------ stopping

    def _stop_children(self) -> None:
        running = [c for c in self.children if c.popen is not None]
        for child in self.children:
            child.restart_at = None
        for child in running:
            process.signal_quietly(child.popen.pid, signal.SIGTERM)  # type: ignore[union-attr]
        self._reap_until(self.settings.supervisor_stop_grace_seconds)
        for child in self.children:
            if child.popen is not None:
                self.log(f"{child.instance.label} still runs after the grace period: SIGKILL")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                process.signal_quietly(child.popen.pid, signal.SIGKILL)
        self._reap_until(5.0)
        self._stop_orphans()

    def _reap_until(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while any(c.popen is not None for c in self.children) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._reap()

    def _stop_orphans(self) -> None:
        """Descendants adopted from dead services: SIGTERM, then SIGKILL, then reap them all."""
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            orphans = [pid for pid in process.children(os.getpid()) if process.alive(pid)]
            if not orphans:
                break
            self.log(f"{signal.Signals(sig).name} to {len(orphans)} orphaned processes")
            for pid in orphans:
                process.signal_quietly(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(
                process.alive(pid) for pid in process.children(os.getpid())
            ):
                self._reap()
                time.sleep(0.05)
        self._reap()

    def _remove_pid_files(self) -> None:
        run_dir = self.settings.run_dir
        for child in self.children:
            pid_file(run_dir, child.instance.label).unlink(missing_ok=True)
        self._write_state()
        pid_file(run_dir, SUPERVISOR).unlink(missing_ok=True)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stopping": self.stopping is not None,
            "instances": [
                {
                    "label": child.instance.label,
                    "service": child.instance.service,
                    "index": child.instance.index,
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "metrics_port": self.settings.metrics_port(
                        child.instance.service, child.instance.index
                    ),
                }
                for child in self.children
            ],
        }
        write_atomically(self.settings.run_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")
