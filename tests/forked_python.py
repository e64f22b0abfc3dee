"""Python scripts run in processes forked from one that has already imported NumPy, PIL and Keras.

The documentation's code blocks (`tests/test_readme.py`) each run in a process of their own. Started
as fresh interpreters, each paid Keras' import on TensorFlow again: 4 s on an idle 2-core machine and
11-14 s beside the suite's other process, for about 45 blocks. A fork of a process that has imported
them starts in milliseconds and is otherwise a fresh process: its own memory, working directory,
environment, standard streams and exit status, and a namespace of its own for the script.

What a fork inherits is what a fresh interpreter has once the script has imported those modules, with
one difference the caller must keep in mind: modules read their environment when imported, so a script
that sets an environment variable for a module (KERAS_BACKEND, XLA_FLAGS) or must import torch before
TensorFlow needs a fresh interpreter (`needs_fresh_interpreter`).

    with ForkingPython(env) as python:
        returncode, stdout, stderr = python.run(script, args, cwd=cwd, env=env, timeout=600)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading

PREIMPORTED = ("numpy", "PIL.Image", "keras")

# Scripts that mention these need a fresh interpreter: they change what an import does (environment
# variables read at import) or depend on the order of imports (torch before TensorFlow).
_FRESH = re.compile(r"\bos\.environ\b|\bputenv\b|\bimport (torch|timm)\b|\bfrom (torch|timm)\b")


def needs_fresh_interpreter(code):
    """Whether `code` must start in a fresh interpreter rather than in a fork (see the module's docstring)."""
    return bool(_FRESH.search(code))


SERVER = r"""
import json, os, runpy, sys, traceback

for name in sys.argv[1].split(","):
    __import__(name)
clean_path = json.loads(sys.argv[2])


def child(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.argv = [request["script"], *request["args"]]
    sys.path[:] = [os.path.dirname(os.path.abspath(request["script"])), *clean_path]
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int) and stop.code is not None:
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _clean_sys_path(python, env):
    """A fresh interpreter's `sys.path` under `env`, without the entry for its script's folder."""
    printed = subprocess.run(
        [python, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return printed.stdout


class ForkingPython:
    """A server process that has imported `PREIMPORTED` under `env`, and forks one child per `run`."""

    def __init__(self, env, python=sys.executable):
        self.env, self.python = dict(env), python

    def __enter__(self):
        self.server = subprocess.Popen(
            [self.python, "-c", SERVER, ",".join(PREIMPORTED), _clean_sys_path(self.python, self.env)],
            env=self.env,
            cwd=tempfile.gettempdir(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc):
        self.server.stdin.close()
        self.server.wait(timeout=60)

    def run(self, script, args=(), *, cwd, env, timeout):
        """Runs `script` with `args` as `python script args...` would, in `cwd` with exactly `env`;
        `(returncode, stdout, stderr)`. Past `timeout` seconds the child is killed (-9)."""
        with tempfile.TemporaryDirectory() as streams:
            out, err = os.path.join(streams, "stdout"), os.path.join(streams, "stderr")
            request = {"script": str(script), "args": [str(a) for a in args], "cwd": str(cwd), "env": dict(env)}
            self.server.stdin.write(json.dumps({**request, "stdout": out, "stderr": err}) + "\n")
            self.server.stdin.flush()
            pid = json.loads(self.server.stdout.readline())["pid"]
            # The server answers when the child has ended; past the timeout the child is killed, which ends it.
            answer = {}
            reader = threading.Thread(target=lambda: answer.update(json.loads(self.server.stdout.readline())))
            reader.start()
            reader.join(timeout)
            if reader.is_alive():
                os.kill(pid, 9)
                reader.join()
            with open(out) as stdout, open(err) as stderr:
                return answer["returncode"], stdout.read(), stderr.read()
