"""The code of the README and of the documentation (`docs/**/*.md`) runs as written.

The rules below hold for every page alike; "the README" in them means any of those pages.

* Every ```python block runs in a process of its own (TensorFlow backend), in an empty temporary
  working directory, with the package as installed (no PYTHONPATH): forked from one that has
  imported NumPy, PIL and Keras (`tests/forked_python.py`: an import of Keras costs 4-14 s a
  block), or a fresh interpreter for a block that sets environment variables or imports torch or
  timm, whose imports a fork would change. Blocks do not share
  variables: each must stand alone, as a reader copies it. A block that uses a name only an earlier
  block of the same page defines fails with a NameError, reported as a bug of that page (the message names
  the earlier block).
* Every ```bash / ```sh / ```shell block that installs nothing (no `pip install`, no `python -m venv`)
  runs with `bash -e -o pipefail` in an empty temporary directory, the test's Python first on PATH.
  Blocks that install are listed as skipped with that reason.
* Hub names: every string of a block that is a registry name (`checkpoints.list_pretrained()` tags,
  `checkpoints.aliases()` aliases and bare architectures) is served by a local Hub
  (`tests/hub_server.py`, reached through HF_ENDPOINT) as a random timm checkpoint of that
  architecture under `timm/<tag>`; every `hf://ORG/REPO` is published there by `converters.publish`
  from the architecture `KERAS_REPOS` gives it. Nothing reaches the internet.
* Inline code in the prose that names the API in full (`convnext_hub.preprocess_image(image, cfg)`,
  `python -m converters.publish ...`) names something that exists, called with keywords it accepts.
* Checked comments: an expression statement whose comment starts with a count
  (`list_models()  # the 28 timm ConvNeXt architectures`, `list_pretrained()  # all 98`) must evaluate
  to something of that length.

The only changes the test makes are the tables below, applied in this order: `SUBSTITUTIONS`
(text replaced in a block), `FREE_NAMES` (names the README leaves to the reader, defined before the
block only where the block uses them without defining them), `FILES` (files a block names, made in its
working directory) and `KERAS_REPOS`. Every entry must be used by some block, and every substitution
must match, or `test_every_table_entry_is_used` fails: the tables cannot rot.

A block opts out only with an HTML comment on the line just before its fence (blank lines allowed):
`<!-- readme-test: skip (the reason) -->`. Skipped blocks and their reasons appear in pytest's summary.
"""

import ast
import builtins
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

import checkpoints
from tests.checkpoint_factory import RandomCheckpoints
from tests.forked_python import ForkingPython, needs_fresh_interpreter
from tests.hub_server import running_hub, upload_timm_checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The pages whose code blocks run: the README first, then the documentation site's pages.
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
BLOCK_TIMEOUT = 600  # seconds for one block

# ----------------------------------------------------------------------------------------------- the tables

# (README text, replacement, why). Applied to every runnable block; each must match at least once.
SUBSTITUTIONS = [
    (
        "input_shape=(224, 224, 3), drop_path_rate=0.1",
        "input_shape=(32, 32, 3), drop_path_rate=0.1",
        "fine-tuning: 32x32 inputs instead of 224x224 (same code path, 49x less compute)",
    ),
    ("epochs=10,", "epochs=1,", "fine-tuning: one epoch of stage 2 instead of ten"),
]

# Names the README leaves to the reader -> (what they stand for, an expression; `np`, `Image` and a seeded
# `rng` are in scope). Shapes follow SUBSTITUTIONS: 32x32 RGB, 5 classes.
FREE_NAMES = {
    "pil_image": ("a random 300x400 RGB photo", "Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))"),
    "x_train": ("8 random 32x32 RGB images", "rng.standard_normal((8, 32, 32, 3)).astype('float32')"),
    "y_train": ("8 integer labels of 5 classes", "rng.integers(0, 5, 8)"),
    "x_val": ("4 random 32x32 RGB images", "rng.standard_normal((4, 32, 32, 3)).astype('float32')"),
    "y_val": ("4 integer labels of 5 classes", "rng.integers(0, 5, 4)"),
}


def _saved_convnext_tiny(path):
    import convnext_hub

    convnext_hub.create_model("convnext_tiny").save(path)


# Files a block names -> (what they stand for, the function that writes one to `path`). Made once, linked
# into the working directory of each block that names them.
FILES = {
    "my_tiny.keras": ("the reader's own ConvNeXt V1 tiny (1000 classes), saved with model.save", _saved_convnext_tiny),
}

# hf://ORG/REPO -> (the registry name it is published from, why that one).
KERAS_REPOS = {
    "my-org/convnextv2-atto-keras": ("convnextv2_atto.fcmae_ft_in1k", "the README publishes that checkpoint there"),
}

INSTALLS = re.compile(
    r"\bpip3? install\b|-m pip install\b|-m venv\b|\bvirtualenv\b|\bconda (install|create)\b"
    r"|\buv (pip|venv|sync|add)\b"
)
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
COUNT_COMMENT = re.compile(r"#\s*(?:(?:the|all)\s+)?(?P<count>\d+)(?:\s+[A-Za-z]|\s*$)")
SHELL = ("bash", "sh", "shell")
INLINE_API = re.compile(
    r"`(?:python3? -m )?(?P<name>(?:convnext_hub|converters|checkpoints)(?:\.[A-Za-z_]\w*)+)"
    r"(?:\((?P<args>[^`]*)\))?"
)


# ----------------------------------------------------------------------------------------------- the blocks


@dataclass
class Block:
    lang: str  # "python" or "shell"
    code: str  # as written in the page
    line: int  # page line of the block's first code line
    skip: str | None = None  # reason, from a marker in the page
    page: Path = README  # the Markdown file the block is in

    @property
    def page_name(self):
        """The page's path from the repository root: `README.md`, `docs/hub.md`."""
        try:
            return self.page.relative_to(ROOT).as_posix()
        except ValueError:
            return self.page.name

    @property
    def where(self):
        return f"{self.page_name} line {self.line}"

    @property
    def id(self):
        return f"{self.page_name}:L{self.line}-{self.lang}"

    @property
    def installs(self):
        return self.lang == "shell" and INSTALLS.search(self.code) is not None

    @property
    def runnable(self):
        return self.skip is None and not self.installs


def readme_blocks(text, page=README):
    """The fenced python / shell blocks of `text` (the page `page`), with their markers."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence[3].lower()
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[2]):
            i += 1
        code = "\n".join(line[len(fence[1]) :] for line in lines[start + 1 : i]) + "\n"
        i += 1
        if lang == "python" or lang in SHELL:
            before = start - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marker = SKIP_MARKER.search(lines[before]) if before >= 0 else None
            blocks.append(
                Block(
                    "python" if lang == "python" else "shell",
                    code,
                    start + 2,
                    marker["reason"].strip() if marker else None,
                    page,
                )
            )
    return blocks


BLOCKS = [block for page in PAGES for block in readme_blocks(page.read_text(), page)]


def substituted(block):
    """The block's code with every matching SUBSTITUTIONS entry applied."""
    code = block.code
    for old, new, _ in SUBSTITUTIONS:
        code = code.replace(old, new)
    return code


def python_strings(code):
    return {
        node.value
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def hub_names(block):
    """(registry names, hf:// repo ids) that the block's code mentions."""
    code = substituted(block)
    # Shell: every word, quoted or not (a `python -c '...("convnext_tiny")'` names a checkpoint too).
    words = python_strings(code) if block.lang == "python" else set(re.findall(r"[\w.:/-]+", code))
    registry = set(checkpoints.list_pretrained()) | set(checkpoints.aliases())
    repos = {w[len("hf://") :] for w in words if w.startswith("hf://")}
    return sorted(words & registry), sorted(repos)


def free_names(code):
    """Names the code reads but never binds (imports, assignments, functions, loops, ...)."""
    tree = ast.parse(code)
    bound, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def with_count_checks(code):
    """`code` with each top-level expression statement whose comment states a count wrapped in a check.

    Lines and columns outside the wrapped expressions stay where they were (tracebacks keep README lines).
    """
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(code).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = code.splitlines(keepends=True)
    checks = []
    for node in ast.parse(code).body:
        match = isinstance(node, ast.Expr) and COUNT_COMMENT.match(comments.get(node.end_lineno, ""))
        if match:
            checks.append((node, int(match["count"])))
    for node, count in reversed(checks):  # edit from the end: earlier positions stay valid
        end = lines[node.end_lineno - 1]
        lines[node.end_lineno - 1] = (
            end[: node.end_col_offset] + f", {count}, {node.lineno})" + end[node.end_col_offset :]
        )
        start = lines[node.lineno - 1]
        lines[node.lineno - 1] = start[: node.col_offset] + "__readme_count__(" + start[node.col_offset :]
    return "".join(lines), [(node.lineno, count) for node, count in checks]


RUNNER = r"""
import json, sys

spec = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}


def __readme_count__(value, count, line):
    line += spec["first_line"] - 1
    assert len(value) == count, f"{spec['page']} line {line}: the comment says {count}, the code gives {len(value)}"
    return value


if spec["free_names"]:
    def values():
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        return {name: eval(expr, {"np": np, "Image": Image, "rng": rng}) for name, expr in spec["free_names"].items()}

    namespace.update(values())
namespace["__readme_count__"] = __readme_count__
code = compile("\n" * (spec["first_line"] - 1) + spec["code"], spec["readme"], "exec")
exec(code, namespace)
"""


# ----------------------------------------------------------------------------------------------- the Hub


class ReadmeHub:
    """A local Hub that serves random checkpoints for the names the README uses, made on demand."""

    def __init__(self, hub, work):
        self.hub, self.work = hub, work
        self.checkpoints = RandomCheckpoints(work / "checkpoints")
        (work / "checkpoints").mkdir()
        self.served, self.published, self.files = {}, set(), {}

    def serve(self, name):
        entry = checkpoints.resolve(name)
        tag = entry["name"]
        if tag not in self.served:
            assert entry["hf_hub_id"] == f"timm/{tag}", entry
            # Tags of one architecture share one random checkpoint: making a base model's takes ~10 s.
            _, path = self.checkpoints(entry["architecture"], num_classes=entry["num_classes"])
            upload_timm_checkpoint(self.hub, tag, path, num_classes=entry["num_classes"])
            self.served[tag] = entry["architecture"]
        return tag

    def publish(self, repo_id):
        if repo_id not in self.published:
            from converters.publish import publish

            source, _ = KERAS_REPOS[repo_id]
            self.serve(source)
            publish(source, repo_id, cache_dir=self.work / "publish_cache")
            self.published.add(repo_id)

    def file(self, name):
        if name not in self.files:
            path = self.work / "files" / name
            path.parent.mkdir(exist_ok=True)
            FILES[name][1](str(path))
            self.files[name] = path
        return self.files[name]

    def prepare(self, block, cwd):
        names, repos = hub_names(block)
        for name in names:
            self.serve(name)
        for repo_id in repos:
            assert repo_id in KERAS_REPOS, f"{block.where}: hf://{repo_id} is not in KERAS_REPOS"
            self.publish(repo_id)
        for name in FILES:
            if name in block.code:
                os.symlink(self.file(name), cwd / name)


@pytest.fixture(scope="module")
def readme_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    with running_hub(root / "hub") as hub:
        yield ReadmeHub(hub, root)


def block_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        KERAS_BACKEND="tensorflow",
        CONVNEXT_HUB_CACHE=str(tmp_path / "convnext_hub_cache"),  # each block starts with an empty cache
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def defined_earlier(name, block):
    for other in BLOCKS:
        if other.page == block.page and other.line < block.line and other.lang == "python":
            try:
                if name in {
                    n.id
                    for n in ast.walk(ast.parse(other.code))
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                } | {
                    (a.asname or a.name).split(".")[0]
                    for n in ast.walk(ast.parse(other.code))
                    if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names
                }:
                    return other
            except SyntaxError:
                pass
    return None


TF_NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")


def failure(block, result):
    stderr = [line for line in result.stderr.splitlines() if not TF_NOISE.match(line)]
    tail = "\n".join(result.stdout.splitlines()[-15:] + stderr[-40:])
    message = f"{block.page_name} block at line {block.line} ({block.lang}) failed, exit {result.returncode}:\n{tail}"
    name_error = re.search(r"NameError: name '(\w+)' is not defined", result.stderr)
    if name_error and (earlier := defined_earlier(name_error[1], block)):
        message += (
            f"\n\n`{name_error[1]}` is defined only in the block at {earlier.where}: "
            f"each block must stand alone (a bug of {block.page_name})"
        )
    return message


# ----------------------------------------------------------------------------------------------- tests


def _block_params():
    params = []
    for block in BLOCKS:
        marks = []
        if block.skip is not None:
            marks = [pytest.mark.skip(reason=f"{block.where}: readme-test marker: {block.skip}")]
        elif block.installs:
            marks = [pytest.mark.skip(reason=f"{block.where}: installs (pip install / venv): not run")]
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.fixture(scope="module")
def forking_python(tmp_path_factory):
    with ForkingPython(block_env(tmp_path_factory.mktemp("forking_python"))) as python:
        yield python


@pytest.mark.parametrize("block", _block_params())
def test_readme_block_runs(block, readme_hub, forking_python, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    code = substituted(block)
    readme_hub.prepare(block, cwd)
    env = block_env(tmp_path)
    if block.lang == "shell":
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    else:
        checked, _ = with_count_checks(code)
        spec = {
            "code": checked,
            "first_line": block.line,
            "readme": str(block.page),
            "page": block.page_name,
            "free_names": {name: FREE_NAMES[name][1] for name in sorted(free_names(code) & set(FREE_NAMES))},
        }
        (tmp_path / "block.json").write_text(json.dumps(spec))
        (tmp_path / "runner.py").write_text(RUNNER)
        command = [str(tmp_path / "runner.py"), str(tmp_path / "block.json")]
        if needs_fresh_interpreter(code):
            result = subprocess.run(
                [sys.executable, *command],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        else:
            result = subprocess.CompletedProcess(
                command, *forking_python.run(command[0], command[1:], cwd=cwd, env=env, timeout=BLOCK_TIMEOUT)
            )
    assert result.returncode == 0, failure(block, result)


def test_every_table_entry_is_used():
    """A substitution that matches nothing, a free name no block uses, an unused file or repo: the table rotted."""
    runnable = [b for b in BLOCKS if b.runnable]
    in_readme = {b.lang for b in runnable if b.page == README}
    assert in_readme == {"python", "shell"}, f"the README's blocks were not found: {BLOCKS}"
    assert {b.page for b in runnable} > {README}, f"no runnable block found in {DOCS}"
    python = [b for b in runnable if b.lang == "python"]
    unused = [
        f"SUBSTITUTIONS: {old!r} matches no runnable block"
        for old, _, _ in SUBSTITUTIONS
        if not any(old in b.code for b in runnable)
    ]
    unused += [
        f"FREE_NAMES: no runnable block uses {name!r} without defining it"
        for name in FREE_NAMES
        if not any(name in free_names(substituted(b)) for b in python)
    ]
    unused += [
        f"FILES: no runnable block names {name!r}" for name in FILES if not any(name in b.code for b in runnable)
    ]
    unused += [
        f"KERAS_REPOS: no runnable block names hf://{repo}"
        for repo in KERAS_REPOS
        if not any(repo in hub_names(b)[1] for b in runnable)
    ]
    assert not unused, "\n".join(unused)


def resolve_api(dotted):
    """The object a dotted name of the project stands for (the longest importable module, then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def call_problem(obj, args):
    """None when `obj` accepts a call written as `obj(args)` in the README (keywords by name, positional by count)."""
    call = ast.parse(f"f({args})", mode="eval").body
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None  # no signature to check (a builtin)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
    if len(call.args) > len(positional) and not var_positional:
        return f"takes {len(positional)} positional arguments, the README passes {len(call.args)}"
    for keyword in call.keywords:
        if keyword.arg is None and not var_keyword:
            return "takes no **keyword arguments"
        if keyword.arg is not None and keyword.arg not in names and not var_keyword:
            return f"has no argument {keyword.arg!r}"
    return None


def test_inline_api_references_exist():
    """`convnext_hub.preprocess_image(...)` in the prose must exist as written (not only in a submodule)."""
    problems = []
    for page in PAGES:
        name = Block("python", "", 0, page=page).page_name
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for match in INLINE_API.finditer(line):
                try:
                    obj = resolve_api(match["name"])
                except (ImportError, AttributeError) as error:
                    problems.append(f"{name} line {number}: `{match['name']}` does not exist ({error})")
                    continue
                if match["args"] is not None and callable(obj):
                    try:
                        problem = call_problem(obj, match["args"])
                    except SyntaxError:
                        continue  # a placeholder, not Python (e.g. `NAME --repo-id ORG/REPO`)
                    if problem:
                        problems.append(f"{name} line {number}: `{match['name']}({match['args']})`: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: Block("python", "", 0, page=page).page_name)
def test_skip_markers_sit_right_before_a_block(page):
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if "readme-test" in line:
            where = f"{page.name} line {number}"
            assert SKIP_MARKER.search(line), f"{where}: malformed marker {line.strip()!r}"
            following = next((ln for ln in lines[number:] if ln.strip()), "")
            assert following.lstrip().startswith(("```", "~~~")), f"{where}: a marker not before a block"
            assert SKIP_MARKER.search(line)["reason"].strip(), f"{where}: a marker without a reason"


def test_the_reader_finds_blocks_names_and_counts():
    """The machinery above, on a sample: fences, markers, names, free names, count comments."""
    sample = (
        "text\n\n<!-- readme-test: skip (needs a GPU) -->\n```python\nimport x\n```\n\n```bash\npip install a\n```\n"
        "```sh\npython -m converters.timm_to_keras --random-init convnext_atto --out o\n"
        "python -c 'load(\"hf://a/b\")'\n```\n```text\nignored\n```\n"
    )
    blocks = readme_blocks(sample)
    assert [(b.lang, b.line, b.skip, b.installs) for b in blocks] == [
        ("python", 5, "needs a GPU", False),
        ("shell", 9, None, True),
        ("shell", 12, None, False),
    ]
    assert hub_names(blocks[2]) == (["convnext_atto"], ["a/b"])
    py = Block("python", 'm = f("convnext_v2_base", "hf://o/r", "x.keras")\nprint(pil_image, m)\n', 1)
    assert hub_names(py) == (["convnext_v2_base"], ["o/r"])
    assert free_names(py.code) == {"f", "pil_image"}
    code, checks = with_count_checks("import a\n\na.f(1,\n  2)  # the 98 things\nb = 3  # the 2 others\n")
    assert checks == [(3, 98)]
    assert with_count_checks("f()  # all 98\ng()  # -> 4 maps\nh()  # 1e-5 bar\n")[1] == [(1, 98)]
    assert resolve_api("convnext_hub.convert.verification.compare").__name__ == "compare"
    with pytest.raises(AttributeError):
        resolve_api("convnext_hub.no_such_function")
    assert call_problem(resolve_api("convnext_hub.convert.verification.compare"), "model, timm_model, images") is None
    assert "no argument 'colour'" in call_problem(
        resolve_api("convnext_hub.convert.verification.compare"), "m, r, i, colour=1"
    )
    assert "positional" in call_problem(resolve_api("checkpoints.resolve"), "a, b")
    assert code == "import a\n\n__readme_count__(a.f(1,\n  2), 98, 3)  # the 98 things\nb = 3  # the 2 others\n"
