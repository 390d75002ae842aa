"""The code checker's sandbox and the format checker.

The sandbox tests fail, never skip, when bubblewrap cannot run here: a checker that silently does not
check would let every hostile program through CI. Hostile programs run once, together, in a module
fixture (concurrently, so the slow ones overlap); each test then asserts on its own part.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stages.checkers.base import CheckItem
from stages.checkers.code_sandbox import CodeChecker, CodeConfig, parse_tests, same_output, sandbox_status
from stages.checkers.format_check import FormatChecker, FormatConfig

CONFIG = CodeConfig(timeout_s=4, cpu_s=2, memory_mb=256, max_processes=16, concurrency=8)
ADD_STDIO = json.dumps({"style": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"},
                                                    {"input": "5 7\n", "output": "12"},
                                                    {"input": "-4 4\n", "output": "0\n"}]})
ADD_FUNCTION = json.dumps({"style": "function", "fn_name": "add",
                           "cases": [{"args": [1, 2], "expected": 3},
                                     {"args": [[1], [2]], "expected": [1, 2]}]})
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
NEVER = json.dumps({"style": "stdio", "cases": [{"input": "", "output": "never printed"}]})
SECRET = "s3cr3t"
TOKEN = "tf-sandbox-test-token"  # in the command lines of the fork bombs' children, for the stray scan


@pytest.fixture(scope="module")
def checker():
    c = CodeChecker(CONFIG)
    yield c
    c.close()


def check(checker: CodeChecker, program: str | None, tests: str | None = ADD_STDIO):
    return checker.check([CheckItem(prediction=program, gold=None, tests=tests)])[0]


def test_sandbox_is_available_here():
    assert sandbox_status() is None
    assert sandbox_status(CONFIG) is None


# -- correctness ---------------------------------------------------------------------------------------


def test_correct_stdio_program_passes(checker):
    c = check(checker, ADD_PROGRAM)
    assert (c.verdict, c.score, c.reason) == ("pass", 1.0, None)
    assert c.details["cases"] == [{"passed": True, "reason": None}] * 3


def test_wrong_program_fails_with_wrong_answer(checker):
    c = check(checker, "print(42)")
    assert (c.verdict, c.score) == ("fail", 0.0)
    assert {x["reason"] for x in c.details["cases"]} == {"wrong_answer"}
    assert c.reason.startswith("0/3 cases passed; case 0: wrong_answer")


def test_partial_credit(checker):
    c = check(checker, "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n")
    assert c.verdict == "fail" and c.score == pytest.approx(2 / 3)
    assert [x["passed"] for x in c.details["cases"]] == [True, False, True]


def test_function_style_pass_and_fail(checker):
    good = "def add(a, b):\n    print('noise is not the result')\n    return a + b\n"
    method = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    bad = "def add(a, b):\n    return a - b if isinstance(a, int) else a + b\n"
    missing = "def plus(a, b):\n    return a + b\n"
    checks = checker.check([CheckItem(p, None, tests=ADD_FUNCTION) for p in (good, method, bad, missing)])
    assert [c.verdict for c in checks] == ["pass", "pass", "fail", "fail"]
    assert checks[2].score == 0.5 and checks[2].details["cases"][0]["reason"] == "wrong_answer"
    assert checks[3].details["cases"][0]["reason"] == "runtime_error: no function named add"


def test_syntax_error_is_a_runtime_error(checker):
    c = check(checker, "def broken(:\n    pass\n")
    assert c.verdict == "fail"
    assert c.details["cases"][0]["reason"].startswith("runtime_error: SyntaxError")


def test_common_program_habits_work(checker):
    """exit(), sys.stdin, a temp file and a thread: ordinary programs must not trip on the sandbox."""
    program = (
        "import sys, tempfile, threading\n"
        "data = sys.stdin.read().split()\n"
        "with tempfile.TemporaryFile() as f:\n"
        "    f.write(b'x')\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(int(data[0]) + int(data[1])))\n"
        "t.start(); t.join()\n"
        "print(box[0])\n"
        "exit(0)\n"
    )
    assert check(checker, program).verdict == "pass"


def test_apps_and_livecodebench_shapes(checker):
    apps_stdio = json.dumps({"inputs": ["1 2\n", ["5 7"]], "outputs": ["3\n", ["12"]]})
    apps_call = json.dumps({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], 7]})
    lcb = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
    program = ADD_PROGRAM + "def add(a, b):\n    return a + b\n"
    guarded = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n" + "".join(
        "    " + line + "\n" for line in ADD_PROGRAM.splitlines())
    checks = checker.check([CheckItem(ADD_PROGRAM, None, tests=apps_stdio),
                            CheckItem(guarded, None, tests=apps_call),
                            CheckItem(program, None, tests=lcb)])
    assert [c.verdict for c in checks] == ["pass", "pass", "pass"]
    assert parse_tests(apps_call).cases[0].expected == ([3], 3)


def test_missing_program_or_tests(checker):
    assert check(checker, None).verdict == "fail"
    assert check(checker, "   ").reason.startswith("no program")
    assert check(checker, ADD_PROGRAM, None).verdict == "error"
    assert check(checker, ADD_PROGRAM, "{not json").reason.startswith("bad tests")
    assert check(checker, ADD_PROGRAM, json.dumps({"style": "stdio", "cases": []})).reason == "no test cases"


def test_memo_runs_each_program_once(checker):
    program = "a, b = map(int, input().split())\nprint(a + b)  # memo\n"
    before = dict(checker.stats)
    checks = checker.check([CheckItem(program, None, tests=ADD_STDIO)] * 3)
    again = check(checker, program)
    assert {c.verdict for c in [*checks, again]} == {"pass"}
    assert checker.stats["runs"] - before["runs"] == 3  # three cases, one program
    assert checker.stats["memo_hits"] - before["memo_hits"] == 1


def test_command_line_exposes_nothing_writable_from_the_host(checker):
    cmd = checker.sandbox.build_command([(5, "main.py")], 7, ["main.py"], 16)
    bwrap = cmd[cmd.index(checker.sandbox.bwrap):]
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
                 "--disable-userns"):
        assert flag in bwrap
    assert "--bind" not in bwrap and "--dev-bind" not in bwrap and "--share-net" not in bwrap
    allowed = {"/usr", "/etc/ld.so.cache", *checker.sandbox.prefixes}
    mounted = [bwrap[i + 2] for i, arg in enumerate(bwrap) if arg in ("--ro-bind", "--ro-bind-try")]
    assert set(mounted) <= allowed, mounted
    # beyond the interpreter's own install (which may live under /home with pyenv or uv), nothing of
    # the host's working folders
    others = [p for p in mounted if p not in checker.sandbox.prefixes]
    assert not [p for p in others if p.startswith(("/work", "/home", "/tmp", "/root"))]


def test_system_interpreter(checker):
    """The other way to start bwrap as root: no staging, ``subprocess``'s ``user=`` (CI interpreters)."""
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3")
    config = CONFIG.model_copy(update={"python": "/usr/bin/python3"})
    assert sandbox_status(config) is None
    other = CodeChecker(config)
    try:
        assert check(other, ADD_PROGRAM).verdict == "pass"
        assert check(other, "import os\nwhile True:\n    os.fork()\n").reason.endswith("process_limit")
    finally:
        other.close()


def test_process_limit_counts_only_the_sandbox(checker):
    """Other processes of the uid bwrap runs as, and concurrent runs, do not use up a run's limit."""
    outside = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    sleepers = [subprocess.Popen(["sleep", "30"], **outside) for _ in range(CONFIG.max_processes + 8)]
    program = ("import subprocess, sys\n"
               "children = [subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(0.5)'])"
               f" for _ in range({CONFIG.max_processes // 2})]\n"
               "print(sum(c.wait() for c in children))\n")
    tests = json.dumps({"style": "stdio", "cases": [{"input": "", "output": "0"}] * 2})
    patient = CodeChecker(CONFIG.model_copy(update={"timeout_s": 30, "cpu_s": 20}))  # CI machines are slow
    try:
        checks = patient.check([CheckItem(program + f"# {i}\n", None, tests=tests) for i in range(2)])
    finally:
        patient.close()
        for p in sleepers:
            p.kill()
            p.wait()
    assert [c.verdict for c in checks] == ["pass", "pass"], checks


def test_output_comparison():
    assert same_output("3  \r\n4\n\n\n", "3\n4")
    assert not same_output("3 4", "3\n4")
    assert not same_output(" 3", "3")


# -- hostile programs ----------------------------------------------------------------------------------


class Listener:
    """A TCP and a UDP socket on one 127.0.0.1 port, counting whatever reaches them."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self.received: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for sock, kind in ((self.tcp, "tcp"), (self.udp, "udp")):
                try:
                    if kind == "tcp":
                        conn, peer = sock.accept()
                        conn.close()
                    else:
                        _, peer = sock.recvfrom(1024)
                    self.received.append(f"{kind} from {peer}")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.tcp.close()
        self.udp.close()


def hostile_programs(port: int, test_pid: int, host_dir: str) -> dict[str, str]:
    libc_connect = f"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)
addr = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
print("socket", fd, "connect", libc.connect(fd, addr, 16), "errno", ctypes.get_errno())
udp = libc.socket(2, 2, 0)
print("sendto", libc.sendto(udp, b"x", 1, 0, addr, 16), "errno", ctypes.get_errno())
"""
    return {
        "busy_loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(1000)\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "popen_bomb": ("import subprocess, sys\nkeep = []\nwhile True:\n    keep.append(subprocess.Popen("
                       f"[sys.executable, '-c', 'import time; time.sleep(300)  # {TOKEN}']))\n"),
        "thread_bomb": ("import threading, time\nwhile True:\n"
                        "    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n"),
        "big_alloc": "x = bytearray(10**10)\n",
        "growing_list": "x = []\nwhile True:\n    x.append([0] * 100000)\n",
        "flood_stdout": "while True:\n    print('x' * 1000)\n",
        "write_outside": f"""
import os
for path, mode in [("/work/owned", "w"), ("/tmp/owned", "w"), ("/etc/passwd", "a"), ("/root/owned", "w"),
                   ("/usr/owned", "w"), ("{host_dir}/owned", "w"), ("/owned", "w"), ("/dev/owned", "w")]:
    try:
        with open(path, mode) as f:
            f.write("owned")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e.strerror)
with open("big", "wb") as f:
    try:
        f.write(b"x" * (64 << 20))
        print("WROTE big")
    except OSError as e:
        print("refused big", e.strerror)
raise SystemExit(1)
""",
        "read_host": """
for path in ["/etc/passwd", "/etc/shadow", "/work/main/pyproject.toml", "/root/.bashrc", "/home"]:
    try:
        print(path, open(path).read()[:100])
    except OSError as e:
        print("refused", path, e.strerror)
""",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
        "raw_socket": (f"import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                       f"s.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"),
        "udp": (f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.sendto(b'x', ('127.0.0.1', {port}))\ns.sendto(b'x', ('8.8.8.8', 53))\n"),
        "ctypes_socket": libc_connect,
        "curl": (f"import os\nprint(os.system('curl -s -m 2 http://127.0.0.1:{port}/'))\n"
                 f"print(os.system('curl -s -m 2 http://example.com/'))\n"),
        "environment": """
import os
print(dict(os.environ))
for pid in ["1", "self", str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    for part in ("environ", "cmdline"):
        try:
            print(pid, part, open(f"/proc/{pid}/{part}", "rb").read())
        except OSError as e:
            print(pid, part, "refused", e.strerror)
""",
        "kill_parent": f"""
import os, signal
for target in (os.getppid(), 1, {test_pid}, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent", target)
    except OSError as e:
        print("refused", target, e.strerror)
""",
    }


def stray_processes(baseline: set[int]) -> list[str]:
    """Processes, other than the baseline ones, that come from a sandbox run (their command lines say)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in baseline or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if TOKEN.encode() in cmdline or b"--json-status-fd" in cmdline:
            found.append(f"{entry}: {cmdline[:200]!r}")
    return found


@pytest.fixture(scope="module")
def hostile(checker, tmp_path_factory):
    host_dir = tmp_path_factory.mktemp("host")
    outside = [Path(p) for p in ("/work/owned", "/tmp/owned", "/root/owned", "/usr/owned", "/owned")]
    outside.append(host_dir / "owned")
    assert not [p for p in outside if p.exists()], "leftovers from an earlier run: remove them first"
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    baseline = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    listener = Listener()
    previous = os.environ.get("TF_SECRET_TEST")
    os.environ["TF_SECRET_TEST"] = SECRET
    try:
        programs = hostile_programs(listener.port, os.getpid(), str(host_dir))
        start = time.monotonic()
        checks = checker.check([CheckItem(p, None, tests=NEVER) for p in programs.values()])
        elapsed = time.monotonic() - start
        outputs = {name: checker.sandbox.run({"main.py": programs[name].encode()}, ["main.py"], b"")
                   for name in ("write_outside", "read_host", "environment", "kill_parent", "ctypes_socket",
                                "curl")}
        deadline = time.monotonic() + 5
        while (strays := stray_processes(baseline)) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # let anything that did get through reach the listener
    finally:
        listener.close()
        if previous is None:
            del os.environ["TF_SECRET_TEST"]
        else:
            os.environ["TF_SECRET_TEST"] = previous
    return {"checks": dict(zip(programs, checks, strict=True)), "elapsed": elapsed, "outputs": outputs,
            "strays": strays, "received": listener.received, "outside": outside, "passwd": passwd}


def reason(hostile, name: str) -> str:
    check = hostile["checks"][name]
    assert check.verdict == "fail" and check.score == 0.0, (name, check)
    return check.details["cases"][0]["reason"]


def test_every_hostile_program_fails_with_a_reason(hostile):
    for name, check in hostile["checks"].items():
        assert check.verdict == "fail", (name, check)
        assert check.reason and check.details["cases"][0]["reason"], name


def test_hostile_batch_finishes_in_bounded_time(hostile):
    # every run ends by its wall limit; runs go eight at a time, so at most this many rounds of it
    rounds = -(-len(hostile["checks"]) // CONFIG.concurrency)
    assert hostile["elapsed"] < rounds * CONFIG.timeout_s + 10, hostile["elapsed"]


def test_loops_time_out(hostile):
    assert reason(hostile, "busy_loop") == "timeout"  # CPU limit
    assert reason(hostile, "sleep") == "timeout"  # wall limit


def test_fork_bombs_hit_the_process_limit_and_leave_nothing(hostile):
    for name in ("fork_bomb", "popen_bomb", "thread_bomb"):
        assert reason(hostile, name) in ("process_limit", "timeout"), name
    assert reason(hostile, "fork_bomb") == "process_limit"
    assert hostile["strays"] == []


def test_memory_bombs_hit_the_memory_limit(hostile):
    assert reason(hostile, "big_alloc") == "memory"
    assert reason(hostile, "growing_list") == "memory"


def test_output_flood_is_cut(hostile):
    assert reason(hostile, "flood_stdout") == "output_limit"


def test_no_writes_outside_the_working_directory(hostile):
    assert reason(hostile, "write_outside").startswith("runtime_error")
    assert not [p for p in hostile["outside"] if p.exists()]
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == hostile["passwd"]
    out = hostile["outputs"]["write_outside"]
    assert out.started and b"WROTE" not in out.stdout and out.stdout.count(b"refused") == 9, out.stdout


def test_host_files_are_not_visible(hostile):
    assert reason(hostile, "read_host") == "wrong_answer"
    out = hostile["outputs"]["read_host"]
    assert out.started and out.stdout.count(b"refused") == 5, out.stdout
    assert b"root:" not in out.stdout and b"tracefoundry" not in out.stdout


def test_no_network(hostile):
    for name in ("socket", "raw_socket", "udp"):
        assert reason(hostile, name).startswith("runtime_error"), name
    assert reason(hostile, "ctypes_socket") == "wrong_answer"
    assert reason(hostile, "curl") == "wrong_answer"
    assert b"connect -1" in hostile["outputs"]["ctypes_socket"].stdout
    assert hostile["outputs"]["curl"].stdout.split() != [b"0", b"0"]
    assert hostile["received"] == []


def test_parent_environment_does_not_leak(hostile):
    assert reason(hostile, "environment") == "wrong_answer"
    out = hostile["outputs"]["environment"]
    assert out.started and b"1 environ" in out.stdout  # it did look
    assert SECRET.encode() not in out.stdout and b"TF_SECRET_TEST" not in out.stdout


def test_killing_the_parent_harms_nothing(hostile, checker):
    assert reason(hostile, "kill_parent") == "wrong_answer"
    assert b"refused %d" % os.getpid() in hostile["outputs"]["kill_parent"].stdout
    assert check(checker, ADD_PROGRAM + "# after the hostile batch\n").verdict == "pass"


# -- refusing to run without a sandbox -----------------------------------------------------------------


def refused(config: CodeConfig, marker: Path) -> None:
    program = f"open({str(marker)!r}, 'w').write('ran unsandboxed')\nprint(3)\n"
    tests = json.dumps({"style": "stdio", "cases": [{"input": "", "output": "3"}]})
    checker = CodeChecker(config)
    try:
        checks = checker.check([CheckItem(program, None, tests=tests)] * 2)
    finally:
        checker.close()
    assert [c.verdict for c in checks] == ["error", "error"]
    assert all(c.reason.startswith("sandbox unavailable") for c in checks), checks
    assert not marker.exists()


def test_missing_bwrap_refuses_to_run(tmp_path):
    config = CodeConfig(bwrap=str(tmp_path / "no-such-bwrap"))
    assert "not found; install bubblewrap" in sandbox_status(config)
    refused(config, tmp_path / "marker")


def test_bwrap_not_on_path_refuses_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sandbox_status().startswith("sandbox unavailable: bwrap not found")
    refused(CodeConfig(), tmp_path / "marker")


def test_a_bwrap_that_does_not_sandbox_is_refused(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text('#!/bin/sh\n'
                    'if [ "$1" = --help ]; then\n'
                    '  echo "--size --disable-userns --json-status-fd --ro-bind-data --remount-ro"\n'
                    '  exit 0\n'
                    'fi\n'
                    'while [ "$1" != -- ]; do shift; done\n'
                    'shift\n'
                    'exec "$@"\n')
    fake.chmod(0o755)
    config = CodeConfig(bwrap=str(fake))
    assert sandbox_status(config).startswith("sandbox unavailable: trial run failed")
    refused(config, tmp_path / "marker")


# -- the format checker --------------------------------------------------------------------------------

NATURAL = (
    "We need the sum of the first ten odd numbers. Let me check the pattern first. The first odd number "
    "is 1, then 1 + 3 = 4, then 4 + 5 = 9, so the partial sums look like squares. Let me check one more: "
    "9 + 7 = 16, which is 4 squared. So the sum of the first n odd numbers is n squared. Let me check that "
    "with induction: if the sum of the first n is n^2, adding 2n + 1 gives (n + 1)^2. So the answer is 100."
)
FILLER = " ".join(f"Step {i} multiplies the value {i * 7} by {i + 3} and notes it." for i in range(40))
PARAGRAPH = ("Now I add the first column of the table to the second column and carry the remainder over "
             "to the next digit before moving on to the third column of numbers.")


def trace(reasoning: str = NATURAL, answer: str = "The answer is \\boxed{100}.", final: str | None = "100",
          finish: str = "stop", flags: tuple[str, ...] = ()) -> dict:
    return {"reasoning": reasoning, "answer": answer, "final_answer": final, "finish_reason": finish,
            "flags": list(flags)}


FORMAT_CASES = [
    ("good", trace(), FormatConfig(), "pass", None),
    ("natural_repeats_short_phrases", trace(reasoning=NATURAL * 2), FormatConfig(), "pass", None),
    ("no_reasoning", trace(reasoning=""), FormatConfig(), "fail", "missing_reasoning"),
    ("no_reasoning_allowed", trace(reasoning=""), FormatConfig(require_reasoning=False), "pass", None),
    ("unclosed", trace(answer="", final=None, flags=("unclosed_reasoning",)), FormatConfig(), "fail",
     "unclosed_reasoning"),
    ("truncated_length", trace(finish="length"), FormatConfig(), "fail", "truncated"),
    ("truncated_flag", trace(flags=("truncated",)), FormatConfig(), "fail", "truncated"),
    ("empty_answer", trace(answer="I am not sure.", final=None), FormatConfig(), "fail",
     "missing_final_answer"),
    ("empty_answer_flag", trace(flags=("empty_answer",)), FormatConfig(), "fail", "missing_final_answer"),
    ("empty_completion", trace(reasoning="", answer="", final=None, flags=("empty_completion",)),
     FormatConfig(), "fail", "empty_completion"),
    ("tail_loop", trace(reasoning=FILLER + "\n" + "Wait, let me check.\n" * 8), FormatConfig(), "fail",
     "repetition"),
    ("cut_tail_loop", trace(reasoning=FILLER + " " + "Hmm, that is not right either. " * 6 + "Hmm, that is"),
     FormatConfig(), "fail", "repetition"),
    ("repeated_ngrams", trace(reasoning=FILLER[:300] + " " + (PARAGRAPH + " ") * 6 + "Done adding."),
     FormatConfig(), "fail", "repetition"),
    ("short_loop_is_fine", trace(reasoning=NATURAL + "\nCheck.\nCheck.\nCheck.\nCheck."), FormatConfig(),
     "pass", None),
    ("matrix_answer", trace(answer="The matrix is\n" + "0 0 0 0 0 0\n" * 8, final="zeros"), FormatConfig(),
     "pass", None),
    ("code_answer", trace(answer="```python\n" + "".join(f"x{i} = read()\n" for i in range(12)) + "```",
                          final="x = 1"), FormatConfig(), "pass", None),
]


@pytest.mark.parametrize(("row", "config", "verdict", "rule"), [c[1:] for c in FORMAT_CASES],
                         ids=[c[0] for c in FORMAT_CASES])
def test_format_checker(row, config, verdict, rule):
    c = FormatChecker(config).check([CheckItem(prediction=row["final_answer"], gold=None, trace=row)])[0]
    assert c.verdict == verdict, c
    assert c.score == (1.0 if verdict == "pass" else 0.0)
    if rule:
        assert c.reason.split(":")[0] == rule and c.details["failed"][0] == rule


def test_format_checker_lists_every_failing_rule():
    row = trace(answer="", final=None, finish="length", flags=("unclosed_reasoning",))
    c = FormatChecker().check([CheckItem(None, None, trace=row), CheckItem(None, None, trace=None)])
    assert c[0].reason == "truncated"
    assert c[0].details["failed"] == ["truncated", "unclosed_reasoning", "missing_final_answer"]
    assert c[1].verdict == "error"
