"""The ``code`` checker: run a trace's program against its problem's tests, inside an OS sandbox.

The programs come from model traces, so they are untrusted: any of them may loop, fork, allocate,
write files, open sockets or read secrets. The limits are therefore enforced by the kernel
(namespaces and rlimits around a separate process), never by patching Python inside that process.

**Tests** (``CheckItem.tests``, JSON; a malformed document is an ``error`` verdict, not a crash):

- stdin/stdout: ``{"style": "stdio", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...]}``. Outputs
  match when they are equal after ``\\r\\n`` becomes ``\\n``, trailing whitespace is stripped from each
  line and trailing blank lines are dropped.
- call-based: ``{"style": "function", "fn_name": "add", "cases": [{"args": [1, 2], "expected": 3}]}``.
  A harness imports the program as a module (``__name__`` is not ``"__main__"``), calls ``fn_name``
  (a top-level function, else a method of a top-level ``Solution`` class, as LeetCode-style
  programs write it) with ``*args``, and compares the result with ``==`` after a JSON round trip
  (tuples become lists; sets become lists, in iteration order). Whatever the program prints is
  discarded.
- APPS / TACO: ``{"inputs": [...], "outputs": [...], "fn_name": optional}``. Without ``fn_name`` it is
  stdio (an input or output given as a list of lines is joined with newlines); with it, each input
  is the argument list (a non-list is the only argument) and the expected value is the output or,
  when the output is a one-element list (APPS wraps results so), its element.
- LiveCodeBench: a list ``[{"input": ..., "output": ..., "testtype": "stdin"}, ...]``. Functional
  LiveCodeBench tests carry their function name elsewhere: convert them to the function style.

**Runs.** One run is one program on one case: its own sandbox, its own fresh working directory,
its own wall and CPU budget, so a case that hangs costs only itself and cases cannot pass state to
each other through files. Runs go ``concurrency`` at a time (a thread pool; each run is a process).
The verdict is ``pass`` when every case passes, else ``fail``, with ``score`` the fraction passed
and ``details["cases"]`` one ``{"passed", "reason"}`` per case; reasons are ``wrong_answer``,
``timeout`` (wall or CPU), ``memory``, ``process_limit``, ``output_limit`` and ``runtime_error: <last
line of stderr>``. Verdicts are memoised per (program text, tests JSON). A program that could not be
started (the sandbox broke) is an ``error`` verdict, never a ``fail``.

**The sandbox** is bubblewrap (the ``bubblewrap`` system package: ``apt-get install bubblewrap``,
version 0.8 or newer) with, per run::

    bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
          --uid 65534 --gid 65534 --hostname sandbox
          --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib ...   (each /bin, /sbin,
          /lib* as it is on the host) --ro-bind-try /etc/ld.so.cache /etc/ld.so.cache
          --ro-bind PREFIX PREFIX          (the interpreter's installation, unless it is under /usr)
          --proc /proc --dev /dev --size N --tmpfs /dev/shm --remount-ro /dev
          --size N --tmpfs /sandbox --ro-bind-data FD /sandbox/main.py ...  --remount-ro /
          --chdir /sandbox --clearenv --setenv PATH /usr/bin:/bin --setenv HOME /sandbox
          --setenv TMPDIR /sandbox --setenv LANG C.UTF-8 --setenv PYTHONDONTWRITEBYTECODE 1
          --setenv PYTHONHASHSEED 0 --json-status-fd FD
          -- PYTHON -I -S -B -c LAUNCHER NPROC PYTHON -s -B main.py

``build_command`` returns the exact list. The launcher runs with ``-I -S``; programs run with ``-s -B``
instead: ``-I`` would ignore ``PYTHONHASHSEED`` (fixed so that set ordering, and with it output,
repeats across runs) and ``-S`` would remove ``exit()``, which competitive programs call. The
interpreter's site-packages therefore load, read-only. What that gives:

- New user, pid, network, ipc, uts and cgroup namespaces. The network namespace holds only its own
  loopback: no connection reaches the host or anything else (sockets, ``ctypes`` calls to libc and
  ``curl`` alike). Abstract unix sockets are per network namespace, so the host's are out of reach.
- A filesystem of only read-only ``/usr``, ``/bin``, ``/lib*``, ``/etc/ld.so.cache`` and the
  interpreter's installation prefix (``sys.base_prefix``);
  no ``/work``, ``/home``, ``/root``, ``/tmp`` or ``/etc`` of the host. The root and ``/dev`` are
  read-only; the working directory ``/sandbox`` and ``/dev/shm`` are fresh tmpfs of ``max_file_mb``
  each, so a program can neither fill the host's disk nor its memory with files.
- An environment of exactly the variables above (and ``PWD``). bwrap itself is started with a minimal
  environment too, because ``/proc/1/environ`` in the sandbox is bwrap's own.
- No capabilities, a uid of 65534 inside, and no further user namespaces (``--disable-userns``).
- Per-process rlimits set before bwrap starts (``preexec_fn``, between fork and exec; it only calls
  ``setrlimit`` with values computed beforehand, so the usual thread-safety caveat does not
  bite), inherited by everything in the sandbox: CPU seconds
  (``cpu_s``; SIGXCPU, then SIGKILL one second later), address space (``memory_mb``: allocation fails,
  Python raises MemoryError), file size (``max_file_mb``), 256 open files and no core dumps.
- A process limit (``max_processes``) that counts the sandbox's own tasks only: see below.
- A wall-clock limit (``timeout_s``, setup included): the parent kills bwrap's process group;
  ``--die-with-parent`` then kills the sandbox's pid 1 and with it every process in its pid
  namespace, so nothing survives a run. The same happens when this process dies.
- Output beyond ``max_output_kb`` on stdout ends the run (``output_limit``); stderr keeps its tail.

**The process limit.** RLIMIT_NPROC is checked per (user namespace, uid) and then up the chain of
namespaces against the limit each namespace was created under. Set inside the sandbox's fresh user
namespace, it counts that sandbox's tasks only (threads included, and bwrap's pid 1); set before
bwrap it would count every process of the outside uid on the machine, shared by concurrent runs. So
a launcher (LAUNCHER above: three lines of our Python, run before any program code) sets it as a hard
limit and execs the program. The kernel exempts tasks whose *outside* uid is root from
RLIMIT_NPROC, even inside a user namespace; so when this process runs as root, bwrap is started as
uid 65534 (``subprocess``'s ``user=``), which also means an escape would land as nobody, not root.
A root-owned interpreter that uid 65534 cannot reach (pyenv under ``/root``, mode 0700) is first
bind-mounted, in a private mount namespace of the run (``unshare --mount`` + ``mount --bind``), onto
an empty directory it can reach; ``setpriv`` then drops to uid 65534 and execs bwrap.

**What it does not guarantee:**

- No protection against kernel exploits: there is no seccomp filter and the namespaces rely on the
  kernel being sound. Unprivileged user namespaces must be enabled (``kernel.unprivileged_userns_clone``
  on Debian, ``kernel.apparmor_restrict_unprivileged_userns=0`` on Ubuntu 24.04 unless bwrap has an
  AppArmor profile); when they are not, the checker refuses to run code.
- CPU time is per process: a program that forks up to ``max_processes`` may burn that many times
  ``cpu_s`` of CPU, but never longer than ``timeout_s`` of wall time. Memory is per process too.
- No cgroup: total memory across the sandbox's processes and its I/O bandwidth are not bounded
  beyond the per-process limits and the two small tmpfs.
- The sandbox can read ``/proc`` (host CPU and memory figures, kernel version, bwrap's command line
  with host paths of the interpreter) and whatever is in ``/usr``; it sees the clock and can measure
  timing side channels.
- It protects the host, not the verdict: a program may detect the harness (it runs in the same
  interpreter) and fake a call-based result, or special-case known inputs.
- ``timeout_s`` bounds each run, so a trace with many cases may take ``cases × timeout_s`` divided by
  ``concurrency``.

If bwrap is missing, too old, or a trial run (first use per process) does not show the limits in
force (a fork past a process limit of 4 must fail, the only network interface must be ``lo``, the
environment must hold only the variables above), the checker refuses: every item is ``error`` with
the reason, and no code ever runs outside the sandbox. ``sandbox_status()`` tells callers why in
advance (``None`` when the sandbox works).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from pydantic import Field

from schemas.ids import canonical_json, digest
from stages.checkers.base import Check, CheckItem
from stages.contract import StageConfig

SANDBOX_UID = 65534  # inside the sandbox, and outside when this process is root ("nobody")
WORKDIR = "/sandbox"
NOFILE = 256
_MEMO_LIMIT = 100_000
RESULT_MARKER = "\x1etracefoundry-result\x1e"
# The variables the sandboxed program sees; bwrap itself gets only PATH and LANG.
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
_HOST_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
_BWRAP_NEEDS = ("--size", "--disable-userns", "--json-status-fd", "--ro-bind-data", "--remount-ro")
_STDERR_TAIL = 8192
_GRACE_S = 2.0  # how long pipes may stay open after a kill before the parent stops reading

# Sets the process limit inside the sandbox's user namespace (where it counts only the sandbox's
# tasks), then becomes the program. Runs before any program code; the program cannot raise it back.
LAUNCHER = ("import os,resource,sys;n=int(sys.argv[1]);"
            "resource.setrlimit(resource.RLIMIT_NPROC,(n,n));os.execv(sys.argv[2],sys.argv[2:])")

# The call-based harness: the program's prints go to a buffer, the result to the real stdout after
# a marker, so printing cannot be mistaken for the result.
HARNESS = f"""\
import importlib.util, io, json, os, sys
result_out = os.fdopen(os.dup(1), "w")
with open("case.json") as f:
    case = json.load(f)
sys.stdout = io.StringIO()
spec = importlib.util.spec_from_file_location("solution", "main.py")
module = importlib.util.module_from_spec(spec)
sys.modules["solution"] = module
spec.loader.exec_module(module)
fn = getattr(module, case["fn_name"], None)
if fn is None and isinstance(getattr(module, "Solution", None), type):
    fn = getattr(module.Solution(), case["fn_name"], None)
if not callable(fn):
    raise SystemExit("no function named " + case["fn_name"])
result = json.dumps(fn(*case["args"]), default=list)
result_out.write("\\n" + {RESULT_MARKER!r} + result + "\\n")
result_out.flush()
"""

# The trial run: forks past a small process limit and reports what it sees.
_TRIAL = """\
import os, socket, time
forks = 0
try:
    for _ in range(8):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        forks += 1
except OSError:
    pass
print(forks, ",".join(sorted(name for _, name in socket.if_nameindex())), ",".join(sorted(os.environ)))
"""
_TRIAL_NPROC = 4
# As root with a hidden interpreter: bind each (source, mount point) pair, then exec the rest.
_STAGE_SCRIPT = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'


class CodeConfig(StageConfig):
    timeout_s: float = Field(10.0, gt=0, description="wall-clock seconds one run (one case) may take")
    cpu_s: float = Field(5.0, gt=0, description="CPU seconds per process of a run (RLIMIT_CPU, rounded up "
                                                "to whole seconds)")
    memory_mb: int = Field(512, ge=64, description="address space per process (RLIMIT_AS), MiB")
    max_processes: int = Field(32, ge=2, description="tasks (processes and threads, the sandbox's pid 1 "
                                                     "included) a run may have at once")
    max_file_mb: int = Field(16, ge=1, description="largest file a run may write, and the size of its "
                                                   "working directory, MiB")
    max_output_kb: int = Field(1024, ge=1, description="stdout a run may write before it is stopped, KiB")
    concurrency: int = Field(2, ge=1, description="runs at once")
    python: str | None = Field(None, description="the interpreter to run programs with (its installation "
                                                 "is bound read-only into the sandbox); default: this "
                                                 "process's base interpreter")
    bwrap: str = Field("bwrap", description="bubblewrap: a command looked up on PATH, or a path")


# ---------------------------------------------------------------------------------------------------------
# Tests


@dataclass(frozen=True)
class Case:
    stdin: str = ""
    output: str | None = None  # stdio: the expected stdout
    args: list[Any] = field(default_factory=list)  # function: the arguments
    expected: tuple[Any, ...] = ()  # function: the results that pass


@dataclass(frozen=True)
class Suite:
    style: Literal["stdio", "function"]
    cases: list[Case]
    fn_name: str | None = None


def parse_tests(text: str) -> Suite:
    """The tests of a problem in one shape, whichever of the accepted shapes they came in.

    Raises ValueError with a short reason: a problem with unusable tests is the problem's fault, and
    the caller turns it into an ``error`` verdict.
    """
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tests are not JSON: {e}") from None
    if isinstance(doc, list):
        return _livecodebench(doc)
    if not isinstance(doc, dict):
        raise ValueError("tests must be a JSON object or list")
    if "style" in doc:
        return _native(doc)
    if "inputs" in doc and "outputs" in doc:
        return _apps(doc)
    raise ValueError("unknown tests shape: expected 'style', or 'inputs' and 'outputs'")


def _native(doc: dict[str, Any]) -> Suite:
    cases = doc.get("cases")
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise ValueError("'cases' must be a list of objects")
    if doc["style"] == "stdio":
        for c in cases:
            if not isinstance(c.get("input", ""), str) or not isinstance(c.get("output"), str):
                raise ValueError("stdio cases need string 'input' and 'output'")
        return Suite("stdio", [Case(stdin=c.get("input", ""), output=c["output"]) for c in cases])
    if doc["style"] == "function":
        name = doc.get("fn_name")
        if not isinstance(name, str) or not name:
            raise ValueError("function tests need 'fn_name'")
        for c in cases:
            if not isinstance(c.get("args", []), list) or "expected" not in c:
                raise ValueError("function cases need a list 'args' and 'expected'")
        return Suite("function", [Case(args=c.get("args", []), expected=(c["expected"],)) for c in cases],
                     fn_name=name)
    raise ValueError(f"unknown tests style {doc['style']!r}: expected 'stdio' or 'function'")


def _apps(doc: dict[str, Any]) -> Suite:
    inputs, outputs, name = doc["inputs"], doc["outputs"], doc.get("fn_name")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("'inputs' and 'outputs' must be lists of the same length")
    if name:
        cases = []
        for given, want in zip(inputs, outputs, strict=True):
            expected = (want, want[0]) if isinstance(want, list) and len(want) == 1 else (want,)
            cases.append(Case(args=given if isinstance(given, list) else [given], expected=expected))
        return Suite("function", cases, fn_name=str(name))
    return Suite("stdio", [Case(stdin=_lines(i), output=_lines(o)) for i, o in zip(inputs, outputs,
                                                                                      strict=True)])


def _livecodebench(doc: list[Any]) -> Suite:
    if not all(isinstance(c, dict) and "input" in c and "output" in c for c in doc):
        raise ValueError("a tests list must hold objects with 'input' and 'output'")
    if any(c.get("testtype", "stdin") != "stdin" for c in doc):
        raise ValueError("functional LiveCodeBench tests need their fn_name: use the function style")
    return Suite("stdio", [Case(stdin=_lines(c["input"]), output=_lines(c["output"])) for c in doc])


def _lines(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def same_output(got: str, want: str) -> bool:
    """Output equality as judges use it: line ends and trailing whitespace never matter."""
    return _normal(got) == _normal(want)


def _normal(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").rstrip().split("\n")]


# ---------------------------------------------------------------------------------------------------------
# The sandbox


@dataclass
class Run:
    """What one sandboxed run did. ``started`` is bwrap's word that the program was launched."""

    started: bool
    exit_code: int | None
    stdout: bytes
    stderr: bytes  # the tail
    killed: Literal["timeout", "output_limit"] | None = None

    def stderr_line(self) -> str:
        lines = [x.strip() for x in self.stderr.decode("utf-8", "replace").splitlines() if x.strip()]
        return lines[-1][:200] if lines else ""


class Sandbox:
    """Builds and runs bwrap command lines for one config; ``status`` says whether it may be used.

    Everything that can be decided without running code (bwrap present and recent enough, the
    interpreter, what must be bound, whether the interpreter needs staging) is decided here once.
    """

    def __init__(self, config: CodeConfig) -> None:
        self.config = config
        self.problem: str | None = None  # why the sandbox cannot work, found without running anything
        self.as_root = os.geteuid() == 0
        self.bwrap = _which(config.bwrap)
        self.python = os.path.realpath(config.python or sys.executable)
        self._stage_dir: str | None = None
        self._staged: list[tuple[str, str]] = []  # (host source, staging mount point)
        self._tools: dict[str, str] = {}
        if self.bwrap is None:
            self.problem = f"{config.bwrap} not found; install bubblewrap (apt-get install bubblewrap)"
        elif missing := [o for o in _BWRAP_NEEDS if o not in _bwrap_help(self.bwrap)]:
            self.problem = (f"{self.bwrap} is too old (no {', '.join(missing)}); "
                            "install bubblewrap 0.8 or newer")
        elif not os.access(self.python, os.X_OK):
            self.problem = f"interpreter {self.python} not found"
        self.prefixes = self._prefixes()
        if self.problem is None and self.as_root:
            self._plan_staging()

    def _prefixes(self) -> list[str]:
        """Installation prefixes the interpreter needs, outside what every sandbox gets anyway."""
        candidates = [os.path.dirname(os.path.dirname(self.python))]
        if self.config.python is None:
            candidates.append(os.path.realpath(sys.base_prefix))
        prefixes: list[str] = []
        for p in candidates:
            if p in ("/", "") or _under(p, "/usr") or any(_under(p, q) for q in prefixes):
                continue
            prefixes = [q for q in prefixes if not _under(q, p)] + [p]
        if "/" in candidates and self.problem is None:
            self.problem = f"interpreter {self.python} is installed at / and cannot be bound alone"
        return prefixes

    def _plan_staging(self) -> None:
        """As root, bwrap runs as uid 65534 (see the module docstring), which may not reach the prefix."""
        hidden = [p for p in self.prefixes if not _reachable_by_others(p)]
        if not hidden:
            return
        for tool in ("unshare", "mount", "setpriv", "sh"):
            path = shutil.which(tool, path=_HOST_ENV["PATH"])
            if path is None:
                self.problem = (f"the interpreter's installation {hidden[0]} is not readable by uid "
                                f"{SANDBOX_UID} and {tool} (util-linux) is missing to stage it")
                return
            self._tools[tool] = path
        self._stage_dir = tempfile.mkdtemp(prefix="tracefoundry-code-stage-")
        os.chmod(self._stage_dir, 0o711)
        for i, source in enumerate(hidden):
            target = os.path.join(self._stage_dir, str(i))
            os.mkdir(target)
            os.chmod(target, 0o755)
            self._staged.append((source, target))

    def close(self) -> None:
        if self._stage_dir is not None:
            shutil.rmtree(self._stage_dir, ignore_errors=True)  # empty mount points; mounts were private
            self._stage_dir = None

    # -- command lines -----------------------------------------------------------------------------------

    def build_command(self, files: Sequence[tuple[int, str]], status_fd: int, argv: Sequence[str],
                      nproc: int) -> list[str]:
        """The full command of one run: ``files`` are (fd, name in the working dir) to copy in."""
        size = str(self.config.max_file_mb << 20)
        staged = dict(self._staged)
        cmd = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
               "--new-session", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
               "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                cmd += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                cmd += ["--ro-bind", top, top]
        cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for prefix in self.prefixes:
            cmd += ["--ro-bind", staged.get(prefix, prefix), prefix]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm",
                "--remount-ro", "/dev", "--size", size, "--tmpfs", WORKDIR]
        for fd, name in files:
            cmd += ["--ro-bind-data", str(fd), f"{WORKDIR}/{name}"]
        cmd += ["--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        for key, value in SANDBOX_ENV.items():
            cmd += ["--setenv", key, value]
        cmd += ["--json-status-fd", str(status_fd), "--",
                self.python, "-I", "-S", "-B", "-c", LAUNCHER, str(nproc), self.python, "-s", "-B", *argv]
        if self._staged:
            mounts = [x for pair in self._staged for x in pair]
            cmd = [self._tools["unshare"], "--mount", "--propagation", "private", "--",
                   self._tools["sh"], "-c", _STAGE_SCRIPT, "sh", *mounts, "--",
                   self._tools["setpriv"], f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                   "--clear-groups", "--", *cmd]
        return cmd

    def _preexec(self) -> Callable[[], None]:
        """Per-process limits, set in the child between fork and exec; values computed beforehand."""
        cpu = max(1, math.ceil(self.config.cpu_s))
        memory = self.config.memory_mb << 20
        fsize = self.config.max_file_mb << 20

        def within_hard(which: int, soft: int, hard: int) -> tuple[int, int]:
            """A user under hard ulimits (Slurm, CI) cannot raise them: stay within, never fail."""
            ceiling = resource.getrlimit(which)[1]
            if ceiling == resource.RLIM_INFINITY:
                return soft, hard
            return min(soft, ceiling), min(hard, ceiling)

        limits = [(which, within_hard(which, *value)) for which, value in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
            (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_NOFILE, (NOFILE, NOFILE)),
            (resource.RLIMIT_CORE, (0, 0)))]

        def apply() -> None:
            for which, value in limits:
                resource.setrlimit(which, value)

        return apply

    # -- running -----------------------------------------------------------------------------------------

    def run(self, files: dict[str, bytes], argv: Sequence[str], stdin: bytes, *,
            nproc: int | None = None, timeout_s: float | None = None) -> Run:
        """Run ``argv`` (after the interpreter) in a fresh sandbox holding ``files``; never raises."""
        fds: list[int] = []
        status_r = -1
        try:
            bound = []
            for name, data in files.items():
                fd = os.memfd_create(f"tracefoundry-{name}")
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.lseek(fd, 0, os.SEEK_SET)
                bound.append((fd, name))
            status_r, status_w = os.pipe()
            fds.append(status_w)
            cmd = self.build_command(bound, status_w, argv, nproc or self.config.max_processes)
            user: dict[str, Any] = {}
            if self.as_root and not self._staged:
                user = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
            pipe = subprocess.PIPE
            proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=pipe, pass_fds=fds, env=_HOST_ENV,
                                    start_new_session=True, preexec_fn=self._preexec(), **user)
        except (OSError, subprocess.SubprocessError) as e:  # SubprocessError: the limits could not be set
            for fd in [*fds, status_r]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return Run(False, None, b"", f"cannot start bwrap: {e}".encode())
        for fd in fds:
            os.close(fd)
        with os.fdopen(status_r, "rb") as status:
            return self._communicate(proc, stdin, status, timeout_s or self.config.timeout_s)

    def _communicate(self, proc: subprocess.Popen[bytes], stdin: bytes, status: BinaryIO,
                     timeout_s: float) -> Run:
        """Feed stdin, collect stdout (capped) and a stderr tail, and enforce the wall-clock limit."""
        cap = self.config.max_output_kb << 10
        deadline = time.monotonic() + timeout_s
        out, err, info = bytearray(), bytearray(), bytearray()
        killed: Literal["timeout", "output_limit"] | None = None
        sel = selectors.DefaultSelector()
        assert proc.stdin and proc.stdout and proc.stderr
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        sel.register(status, selectors.EVENT_READ, info)
        pending = memoryview(stdin)
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, None)
        else:
            proc.stdin.close()
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if killed is not None:
                        break  # killed, yet something holds a pipe open: stop listening
                    killed = "timeout"
                    _kill(proc)
                    deadline = time.monotonic() + _GRACE_S
                    continue
                for key, _ in sel.select(remaining):
                    if key.data is None:  # stdin is writable
                        try:
                            pending = pending[os.write(key.fd, pending[:65536]):]
                        except BlockingIOError:
                            continue
                        except OSError:  # the program stopped reading: the rest is not its input
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(key.fileobj)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buffer: bytearray = key.data
                    if buffer is out and len(out) > cap:
                        continue  # past the cap: drain until the kill closes the pipe, keep nothing
                    buffer += chunk
                    if buffer is err and len(err) > 2 * _STDERR_TAIL:
                        del err[:-_STDERR_TAIL]
                    if buffer is out and len(out) > cap and killed is None:
                        killed = "output_limit"
                        _kill(proc)
                        deadline = time.monotonic() + _GRACE_S
        finally:
            sel.close()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
            try:
                proc.wait(_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
        started, exit_code = False, None
        for line in info.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                started = started or "child-pid" in record
                exit_code = record.get("exit-code", exit_code)
        if exit_code is None and proc.returncode is not None and proc.returncode >= 0 and started:
            exit_code = proc.returncode
        return Run(started, exit_code, bytes(out[:cap]), bytes(err[-_STDERR_TAIL:]), killed)

    # -- status ------------------------------------------------------------------------------------------

    def status(self) -> str | None:
        """None when the sandbox works, else why not.

        The trial runs once per process and config when it succeeds; a failure is retried after a
        minute, so one overloaded moment does not refuse code for the rest of a run.
        """
        if self.problem is not None:
            return f"sandbox unavailable: {self.problem}"
        key = (canonical_json(self.config.model_dump(exclude={"concurrency"})), self.as_root,
               tuple(self.prefixes), bool(self._staged))
        with _STATUS_LOCK:
            found, when = _STATUS.get(key, ("never tried", -math.inf))
            if found is not None and time.monotonic() - when > _RETRY_S:
                found = self._trial()
                _STATUS[key] = (found, time.monotonic())
        return None if found is None else f"sandbox unavailable: {found}"

    def _trial(self) -> str | None:
        """Run a probe through the real command line and check that the limits are in force."""
        run = self.run({"main.py": _TRIAL.encode()}, ["main.py"], b"", nproc=_TRIAL_NPROC,
                       timeout_s=max(10.0, self.config.timeout_s))
        if not run.started:
            detail = run.stderr_line() or "no output"
            hint = ""
            if any(s in detail for s in ("uid map", "ermission denied", "ot permitted", "No space left")):
                hint = (" (user namespaces disabled? see kernel.unprivileged_userns_clone, "
                        "kernel.apparmor_restrict_unprivileged_userns, user.max_user_namespaces)")
            return f"trial run failed: {detail}{hint}"
        fields = run.stdout.decode("utf-8", "replace").split()
        if run.exit_code != 0 or len(fields) != 3:
            return f"trial run failed (exit {run.exit_code}): {run.stderr_line() or run.stdout[:200]!r}"
        forks, interfaces, names = fields
        if int(forks) >= 8:
            return ("the process limit is not enforced (RLIMIT_NPROC ignored: does bwrap run as root, "
                    "or with CAP_SYS_RESOURCE?)")
        if interfaces != "lo":
            return f"the sandbox sees network interfaces {interfaces!r}"
        if set(names.split(",")) - {*SANDBOX_ENV, "PWD"}:  # bwrap's --chdir sets PWD
            return f"the sandbox's environment is not clean: {names}"
        return None


_STATUS: dict[tuple[Any, ...], tuple[str | None, float]] = {}  # -> (problem, when found)
_RETRY_S = 60.0  # a failed trial (a slow machine, say) is tried again this long after
_STATUS_LOCK = threading.Lock()
_HELP: dict[str, str] = {}


def sandbox_status(config: CodeConfig | None = None) -> str | None:
    """None when programs can run sandboxed under ``config``, else why not ("sandbox unavailable: ...")."""
    sandbox = Sandbox(config or CodeConfig())
    try:
        return sandbox.status()
    finally:
        sandbox.close()


def _which(command: str) -> str | None:
    path = command if os.sep in command else shutil.which(command)
    return os.path.realpath(path) if path and os.access(path, os.X_OK) else None


def _bwrap_help(bwrap: str) -> str:
    if bwrap not in _HELP:
        try:
            done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10,
                                  env=_HOST_ENV)
            _HELP[bwrap] = done.stdout + done.stderr
        except (OSError, subprocess.SubprocessError):
            _HELP[bwrap] = ""
    return _HELP[bwrap]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _reachable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owners may traverse to ``path`` and list it."""
    parts = path.strip("/").split("/")
    for i in range(len(parts) + 1):
        p = "/" + "/".join(parts[:i])
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH or (p == path and not mode & stat.S_IROTH):
            return False
    return True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill bwrap's process group; its pid 1 follows (die-with-parent) and takes the pid namespace down."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# ---------------------------------------------------------------------------------------------------------
# The checker


@dataclass(frozen=True)
class CaseResult:
    passed: bool
    reason: str | None = None


def judge(run: Run, tests: Suite, case: Case) -> CaseResult:
    """A case's result from its run: the first limit that ended it, else the comparison."""
    if run.killed == "output_limit":
        return CaseResult(False, "output_limit")
    if not run.started or (run.exit_code == 1 and run.stderr.startswith(b"bwrap: ")):
        # bwrap reports the pid before the child sets up its mounts; their failures say "bwrap: "
        if run.killed and not run.started:
            return CaseResult(False, "timeout")
        return CaseResult(False, f"sandbox_error: {run.stderr_line()}")
    if run.killed == "timeout" or run.exit_code == 128 + signal.SIGXCPU:
        return CaseResult(False, "timeout")
    stderr = run.stderr.decode("utf-8", "replace")
    if run.exit_code != 0:
        if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
            return CaseResult(False, "memory")
        if any(s in stderr for s in ("BlockingIOError", "Resource temporarily unavailable",
                                     "can't start new thread")):
            return CaseResult(False, "process_limit")
        if run.exit_code is not None and run.exit_code > 128:
            with contextlib.suppress(ValueError):
                name = signal.Signals(run.exit_code - 128).name
                return CaseResult(False, f"runtime_error: killed by {name}")
        return CaseResult(False, f"runtime_error: {run.stderr_line() or f'exit code {run.exit_code}'}")
    stdout = run.stdout.decode("utf-8", "replace")
    if tests.style == "stdio":
        passed = same_output(stdout, case.output or "")
        return CaseResult(True) if passed else CaseResult(False, "wrong_answer")
    at = stdout.rfind(RESULT_MARKER)
    if at < 0:
        return CaseResult(False, "runtime_error: no result (the program exited before the call returned)")
    try:
        result = json.loads(stdout[at + len(RESULT_MARKER):].strip())
    except ValueError:
        return CaseResult(False, "runtime_error: unreadable result")
    expected = [json.loads(json.dumps(e)) for e in case.expected]
    return CaseResult(True) if result in expected else CaseResult(False, "wrong_answer")


class CodeChecker:
    """Programs against tests in bubblewrap sandboxes, one run per case, memoised per (program, tests).

    ``stats`` counts ``items``, ``memo_hits`` and ``runs`` for the stage's manifest and for tests.
    """

    name = "code"
    version = "1"

    def __init__(self, config: CodeConfig | None = None) -> None:
        self.config = config or CodeConfig()
        self.sandbox = Sandbox(self.config)
        self._memo: dict[str, Check] = {}  # by digest(program, tests): test documents can be megabytes
        self._pool: ThreadPoolExecutor | None = None
        self.stats: dict[str, int] = dict.fromkeys(("items", "memo_hits", "runs"), 0)

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        try:
            return self._check(items)
        except Exception as e:  # never raise: a bug here must not stop a run
            reason = f"checker error: {type(e).__name__}: {e}"[:200]
            return [Check("error", 0.0, reason) for _ in items]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.sandbox.close()

    def _check(self, items: Sequence[CheckItem]) -> list[Check]:
        self.stats["items"] += len(items)
        checks: list[Check | None] = [None] * len(items)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            if not item.tests or not item.tests.strip():
                checks[i] = Check("error", 0.0, "no tests")
            elif not item.prediction or not item.prediction.strip():
                checks[i] = Check("fail", 0.0, "no program (no code block in the answer)")
            elif (key := (item.prediction, item.tests)) and digest(*key) in self._memo:
                self.stats["memo_hits"] += 1
                checks[i] = self._memo[digest(*key)]
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            for key, check in self._run_all(list(todo)).items():
                for i in todo[key]:
                    checks[i] = check
        return [c if c is not None else Check("error", 0.0, "not checked") for c in checks]

    def _run_all(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Check]:
        problem = self.sandbox.status()
        if problem is not None:  # refuse: never run untrusted code outside the sandbox
            return {key: Check("error", 0.0, problem) for key in keys}
        done: dict[tuple[str, str], Check] = {}
        jobs: list[tuple[tuple[str, str], Suite, int]] = []
        suites: dict[str, Suite | str] = {}  # each test document parsed once, however many programs
        for key in keys:
            if key[1] not in suites:
                try:
                    suites[key[1]] = parse_tests(key[1])
                except ValueError as e:
                    suites[key[1]] = f"bad tests: {e}"[:200]
            tests = suites[key[1]]
            if isinstance(tests, str) or not tests.cases:
                done[key] = self._remember(key, Check("error", 0.0, tests if isinstance(tests, str)
                                                      else "no test cases"))
                continue
            jobs += [(key, tests, j) for j in range(len(tests.cases))]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="code-sandbox")
        self.stats["runs"] += len(jobs)
        futures = [self._pool.submit(self._run_case, key[0], tests, j) for key, tests, j in jobs]
        results: dict[tuple[str, str], list[CaseResult]] = {}
        for (key, _, _), future in zip(jobs, futures, strict=True):
            results.setdefault(key, []).append(future.result())
        for key, cases in results.items():
            done[key] = _summary(cases)
            if not any((c.reason or "").startswith("sandbox_error") for c in cases):
                self._remember(key, done[key])
        return done

    def _remember(self, key: tuple[str, str], check: Check) -> Check:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[digest(*key)] = check
        return check

    def _run_case(self, program: str, tests: Suite, j: int) -> CaseResult:
        case = tests.cases[j]
        if tests.style == "stdio":
            run = self.sandbox.run({"main.py": program.encode()}, ["main.py"], case.stdin.encode())
        else:
            call = json.dumps({"fn_name": tests.fn_name, "args": case.args}).encode()
            run = self.sandbox.run({"main.py": program.encode(), "harness.py": HARNESS.encode(),
                                    "case.json": call}, ["harness.py"], b"")
        return judge(run, tests, case)


def _summary(cases: list[CaseResult]) -> Check:
    passed = sum(c.passed for c in cases)
    details = {"passed": passed, "total": len(cases),
               "cases": [{"passed": c.passed, "reason": c.reason} for c in cases]}
    if passed == len(cases):
        return Check("pass", 1.0, None, details)
    first = next(j for j, c in enumerate(cases) if not c.passed)
    reason = f"{passed}/{len(cases)} cases passed; case {first}: {cases[first].reason}"
    verdict = "error" if any((c.reason or "").startswith("sandbox_error") for c in cases) else "fail"
    return Check(verdict, passed / len(cases), reason, details)
