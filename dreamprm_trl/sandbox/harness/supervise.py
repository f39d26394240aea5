"""The supervisor's two ways of running a program (inside the sandbox). Standard library only.

Stdio suites: one runner per test, fed its input and capturing its output in memory files. The other suite kinds:
two processes that share nothing but two pipes. The *candidate process* runs the prelude and the program and
answers requests on its objects (:mod:`.proxy`); the *test process* runs the test code against proxies of the
program's names (:mod:`.tester`) and alone reports verdicts to the supervisor. The supervisor enforces the
per-test wall clock and kills every leftover descendant after each run.
"""

import builtins
import marshal
import os
import sys
import time

from . import procs


def short(exc):
    import traceback

    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-500:]


# ----------------------------------------------------------------------------------------------- stdio
def _run_stdio_child(code_obj, payload, in_fd, out_fd):
    procs.runner_setup(payload, {in_fd, out_fd}, 1)
    os.dup2(in_fd, 0)
    os.dup2(out_fd, 1)
    os.close(in_fd)
    os.close(out_fd)
    status = 0
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        if payload["suite"].get("prelude"):
            exec(compile(payload["suite"]["prelude"], "<prelude>", "exec"), ns)
        exec(code_obj, ns)
    except SystemExit as e:
        status = 0 if e.code in (None, 0) else 1
        if status and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except MemoryError:
        status = procs.MEMORY_EXIT
    except BaseException:
        import traceback

        traceback.print_exc(limit=-3)
        status = 1
    procs.exit_runner(status)


def _memfd_with(text):
    fd = os.memfd_create("stdin")
    view = memoryview(text.encode())
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_output(out_fd, limit):
    """``(bytes read, up to limit, and the full size)`` of a runner's output file, which it closes."""
    size = os.fstat(out_fd).st_size
    os.lseek(out_fd, 0, os.SEEK_SET)
    out = os.read(out_fd, min(size, limit)) if size else b""
    os.close(out_fd)
    return out, size


def supervise_stdio(code_obj, payload):
    """One runner per test input; stops at the first timeout, output overflow or memory error."""
    results = []
    cap = int(payload["max_output_bytes"])
    total = 0
    for i, text in enumerate(payload["suite"]["inputs"]):
        in_fd = _memfd_with(text)
        out_fd = os.memfd_create("stdout")
        start = time.monotonic()
        pid = procs.fork(_run_stdio_child, code_obj, payload, in_fd, out_fd)
        os.close(in_fd)
        status = procs.wait(pid, lambda: start + payload["timeout"])
        if status is None:
            procs.kill_and_wait(pid)
        procs.kill_descendants()
        out, size = _read_output(out_fd, cap - total + 1)
        total += len(out)
        kind = procs.exit_kind(status)
        if size >= cap or total > cap:
            kind = "output_limit"
        entry = {"i": i, "r": kind, "t": round(time.monotonic() - start, 4), "detail": procs.describe(status)}
        if kind in ("ok", "error"):
            entry["out"] = out.decode("utf-8", "replace")
        results.append(entry)
        if kind in ("timeout", "output_limit", "memory"):
            break
    return results


# ----------------------------------------------------------------------------------------------- test code
def _run_candidate(code_obj, payload, req_fd, resp_fd):
    """The candidate process: the prelude, the program, then :func:`.proxy.serve` until the tests end."""
    from . import proxy

    procs.runner_setup(payload, {req_fd, resp_fd}, payload["n_tests"])
    procs.null_stdin()
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        try:
            if payload["suite"].get("prelude"):
                exec(compile(payload["suite"]["prelude"], "<prelude>", "exec"), ns)
            from_prelude = dict(ns)
            exec(code_obj, ns)
        except MemoryError:
            raise
        except BaseException as e:  # noqa: BLE001 - the test process turns it into the verdict
            reply = proxy._exception_reply(e, proxy._Objects())
            proxy.wire.send(resp_fd, ["exc", reply[1:5]])
            procs.exit_runner(0)
        proxy.serve(ns, req_fd, resp_fd, from_prelude)
    except MemoryError:
        procs.exit_runner(procs.MEMORY_EXIT)
    procs.exit_runner(0)


def _run_test_process(payload, req_fd, resp_fd, report_fd):
    from . import tester

    procs.runner_setup(payload, {req_fd, resp_fd, report_fd}, payload["n_tests"], dumpable=False)
    procs.null_stdin()
    try:
        tester.main(payload, req_fd, resp_fd, report_fd)
    except MemoryError:
        procs.exit_runner(procs.MEMORY_EXIT)
    procs.exit_runner(0)


class _Reports:
    """Reads the test process's length-prefixed reports; each test gets its own ``timeout`` from the last one."""

    def __init__(self, n, cap, start):
        self.n, self.cap, self.last = n, cap, start
        self.results, self.buffer, self.size = [], b"", 0
        self.over = self.bad = False

    def on_data(self, data):
        self.size += len(data)
        if self.size > self.cap:
            self.over = True
            return False
        buf = self.buffer + data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "little"):
            size = int.from_bytes(buf[:4], "little")
            body, buf = buf[4 : 4 + size], buf[4 + size :]
            try:
                msg = marshal.loads(body)
                if not isinstance(msg, dict) or msg.get("i") != len(self.results) or len(self.results) >= self.n:
                    raise ValueError
            except (ValueError, EOFError, TypeError):
                self.bad = True
                return False
            entry = {"i": msg["i"], "r": str(msg.get("r")), "detail": str(msg.get("detail", ""))[:500]}
            if "out" in msg:
                entry["out"] = str(msg["out"])
            entry["t"] = round(time.monotonic() - self.last, 4)
            self.results.append(entry)
            self.last = time.monotonic()
        self.buffer = buf
        return True


def supervise_tests(code_obj, payload):
    """Fork the candidate and the test process; collect one report per test from the test process only."""
    from . import proxy, tester  # noqa: F401 - imported once, before any fork (stdio suites never need them)

    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    rep_r, rep_w = os.pipe()
    payload["_close_fds"] += [req_r, req_w, resp_r, resp_w, rep_r, rep_w]
    reports = _Reports(payload["n_tests"], int(payload["max_output_bytes"]), time.monotonic())
    candidate = procs.fork(_run_candidate, code_obj, payload, req_r, resp_w)
    test_pid = procs.fork(_run_test_process, payload, req_w, resp_r, rep_w)
    for fd in (req_r, req_w, resp_r, resp_w, rep_w):
        os.close(fd)
    status = procs.wait(test_pid, lambda: reports.last + payload["timeout"], rep_r, reports.on_data)
    os.close(rep_r)
    if status is None:
        procs.kill_and_wait(test_pid)
    cand_status = _candidate_status(candidate, reports.results)
    procs.kill_descendants()
    return _complete(reports, status, cand_status)


def _complete(reports, status, cand_status):
    """The reports, with tests that found the program gone and a missing tail turned into verdicts."""
    results, n = reports.results, reports.n
    for entry in results:  # the program ended while a test needed it: its exit decides the status
        if entry["r"] == "gone":
            kind = procs.exit_kind(cand_status) if cand_status is not False else "error"
            entry["r"] = "error" if kind == "ok" else kind
            entry["detail"] = f"the program's process ended during the test ({procs.describe(cand_status) or 'exit code 0'})"
    if reports.over:
        results.append({"i": len(results), "r": "output_limit", "detail": "test reports exceeded the output cap"})
    elif reports.bad:
        results.append({"i": len(results), "r": "error", "detail": "malformed report from the test process"})
    elif len(results) < n:
        kind = "timeout" if status is None else procs.exit_kind(status)
        detail = "the test process ended before all tests reported" if kind == "ok" else procs.describe(status)
        results.append({"i": len(results), "r": "error" if kind == "ok" else kind, "detail": detail})
    return results[:n]


def _candidate_status(pid, results):
    """The candidate's wait status when a test found it gone (it has exited, or is killed now); else False."""
    if not any(entry["r"] == "gone" for entry in results):
        return False
    status = procs.wait(pid, lambda: time.monotonic() + 0.2)
    if status is None:
        try:
            status = procs.kill_and_wait(pid)
        except (ProcessLookupError, ChildProcessError):
            return False
    return status
