"""The documentation stays true: names resolve to what they say, and every code block of README.md and docs/*.md runs.

Each Markdown file's fenced blocks run in order, like a notebook, in a scratch directory whose `runs/` holds a tiny
trained run (2 layers × 4 heads) under every name the docs use (`runs/demo`, `runs/a`, ...):
- ```python blocks are executed verbatim, sharing one namespace per file, with every SGLD sampler capped at 2
  chains × 4 draws of 8 sequences (`cheap_sampler`: the same code paths at a hundredth of the cost);
- ```bash blocks must consist of `rllc ...` commands: each is parsed by the real CLI parser (every flag and value
  checked) and, unless `PARSE_ONLY` below says why not, run to completion on the tiny run with cheap sampler
  settings appended (the last value of a repeated flag wins, so the documented flags still parse and apply);
- ```text blocks (diagrams, output) are not code;
- a block preceded by `<!-- docs-test: skip: REASON -->` is not run; the reason is required and shown.
A fence without one of these languages fails the test, so a new sample cannot slip in untested.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import rllc

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_NAMES = ("demo", "a", "ref1", "s-seed1", "s-seed2", "s-seed3")  # every run directory the docs name

# Commands parsed but not run here, and why (each is run end to end elsewhere).
PARSE_ONLY = {
    "train": "training the cpu preset takes minutes; tests/test_train.py trains and resumes tiny runs",
    "demo": "the demo takes minutes; tests/test_demo.py runs it on a short run (slow)",
    "import": "needs a checkpoint series on disk; tests/test_import.py imports GPT-2, GPT-NeoX, HF-cache and "
              "TransformerLens series and runs every command on them",
}
PARSE_ONLY_FLAGS = {
    "--executor": "starting Ray takes tens of seconds; tests/test_sweep_ray.py runs sweeps on a local Ray",
}


def cheap(argv: list[str]) -> list[str]:
    """Settings appended to a documented command so that it runs in seconds on the tiny run (same code paths)."""
    sampler = ["--chains", "2", "--draws", "3", "--batch-size", "4", "--n-samples", "16", "--quiet"]
    extra = {"llc": sampler, "calibrate": sampler, "sweep": sampler, "heads": ["--quiet"],
             "hessian": ["--probes", "2", "--samples", "4", "--quiet"]}.get(argv[1], [])
    if argv[1] == "hessian" and "rank" in argv:
        extra += ["--degree", "4", "--lanczos-steps", "4"]
    return extra


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason given by a `docs-test: skip` marker

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^```(\S*)\s*$")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the skip marker on the line before each (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = _SKIP.search(prev)
        out.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : j]), skip.group(1) if skip else None))
        i = j + 1
    return out


def commands(code: str) -> list[tuple[int, list[str]]]:
    """(line offset, argv) of each shell command of a bash block: continuations joined, comments dropped,
    `a && b` split."""
    out, pending, first = [], "", 0
    for k, raw in enumerate(code.splitlines()):
        if not pending:
            first = k
        pending += raw
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w == "&&":
                if cmd:
                    out.append((first, cmd))
                cmd = []
            else:
                cmd.append(w)
    return out


ALL_BLOCKS = [b for p in DOCS for b in blocks(p)]


def test_every_module_path_names_that_module():
    # `import rllc.sweep as S` must give the subpackage, not a function re-exported under the same name.
    shadowed = []
    for info in pkgutil.walk_packages(rllc.__path__, "rllc."):
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        if getattr(sys.modules[parent], leaf) is not module:
            shadowed.append(f"{info.name} is {getattr(sys.modules[parent], leaf)!r}")
    assert not shadowed, shadowed


def test_every_fence_is_python_bash_or_text_and_every_skip_has_a_reason():
    bad = [f"{b.where()}: ```{b.lang}" for b in ALL_BLOCKS if b.lang not in ("python", "bash", "text")]
    assert not bad, f"fences need a language (python, bash or text): {bad}"
    assert len([b for b in ALL_BLOCKS if b.lang in ("python", "bash") and not b.skip]) >= 4


def test_commands_split_like_a_shell():
    code = "rllc plot runs/a && rllc export runs/a   # two\nrllc sweep runs/a \\\n  --steps last\n# only a comment"
    assert commands(code) == [(0, ["rllc", "plot", "runs/a"]), (0, ["rllc", "export", "runs/a"]),
                              (1, ["rllc", "sweep", "runs/a", "--steps", "last"])]


@pytest.fixture(scope="module")
def docs_run(tiny_text, tmp_path_factory) -> Path:
    """A tiny 2-layer × 4-head run with 5 checkpoints (seconds to train)."""
    from rllc.train import train_model
    from tests.conftest import tiny_configs

    out = tmp_path_factory.mktemp("docs") / "run"
    run = train_model(*tiny_configs(tiny_text, n_heads=4, steps=40, checkpoints="every:10"), out, progress=False)
    run.sample_tokens("code", 16)  # tokenise the `code` source once (the copies share the cache)
    return out


@pytest.fixture
def docs_dir(docs_run, tmp_path, monkeypatch) -> Path:
    """A scratch working directory with a private copy of the tiny run under every name the docs use (token
    caches shared by a link)."""
    for name in RUN_NAMES:
        dst = tmp_path / "runs" / name
        shutil.copytree(docs_run, dst, ignore=shutil.ignore_patterns("data"))
        (dst / "data").symlink_to(docs_run / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cheap_sampler(monkeypatch):
    """Cap every SamplerConfig built while the docs' samples run (after its own validation of the given values)."""
    from rllc.llc.config import SamplerConfig

    validate = SamplerConfig.__post_init__

    def capped(self) -> None:
        validate(self)
        for name, cap in (("chains", 2), ("draws", 4), ("batch_size", 8), ("init_batches", 2)):
            object.__setattr__(self, name, min(getattr(self, name), cap))

    monkeypatch.setattr(SamplerConfig, "__post_init__", capped)


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", [p for p in DOCS if any(b.lang == "python" for b in blocks(p))], ids=_doc_id)
def test_python_blocks_run(path, docs_dir, cheap_sampler):
    namespace: dict = {"__name__": "__docs__"}
    for b in blocks(path):
        if b.lang != "python" or b.skip:
            continue
        code = "\n" * b.line + b.code  # tracebacks point at the Markdown file's own line numbers
        exec(compile(code, str(b.path), "exec"), namespace)  # noqa: S102 - the docs' own samples


def figure_problems(fig) -> list[str]:  # noqa: ANN001 - a matplotlib Figure
    """What a figure lacks: a title, axis labels on every panel that shows data, a legend wherever a panel draws
    several labelled series, integer ticks on heatmaps of head indices."""
    problems = []
    title = fig._suptitle.get_text() if fig._suptitle else ""  # noqa: SLF001 - matplotlib has no public getter
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison]
    for k, ax in enumerate(panels):
        name = f"panel {k} ({ax.get_title() or 'untitled'})"
        drawn = ax.lines or ax.collections or ax.images or ax.patches
        if not drawn:
            continue
        if not (title or ax.get_title()):
            problems.append(f"{name}: no title")
        xlabel = ax.get_xlabel() or any(o.get_xlabel() for o in ax.get_shared_x_axes().get_siblings(ax))
        ylabel = ax.get_ylabel() or any(o.get_ylabel() for o in ax.get_shared_y_axes().get_siblings(ax))
        if not xlabel or not ylabel:  # a panel sharing an axis with a labelled one is labelled
            problems.append(f"{name}: axis label missing (x {ax.get_xlabel()!r}, y {ax.get_ylabel()!r})")
        series = [h for h in ax.get_legend_handles_labels()[1] if not h.startswith("_")]
        if len(series) >= 2 and ax.get_legend() is None and not fig.legends:
            problems.append(f"{name}: {len(series)} labelled series and no legend")
        if ax.images:
            ticks = [*ax.get_xticks(), *ax.get_yticks()]
            if any(abs(t - round(t)) > 1e-9 for t in ticks):
                problems.append(f"{name}: heatmap ticks are not integers: {ticks}")
    return problems


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved while the test runs (PNG files and the report's inline images)."""
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN202
        saved.append((str(args[0]) if args and isinstance(args[0], (str, Path)) else "inline image", self))
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


@pytest.mark.parametrize("path", [p for p in DOCS if any(b.lang == "bash" for b in blocks(p))], ids=_doc_id)
def test_bash_blocks_parse_and_run(path, docs_dir, capsys, saved_figures):
    from rllc.cli import build_parser, main

    ran = 0
    for b in blocks(path):
        if b.lang != "bash" or b.skip:
            continue
        for offset, argv in commands(b.code):
            where = f"{b.path.relative_to(ROOT)}:{b.line + 1 + offset}"
            assert argv[0] == "rllc", f"{where}: {shlex.join(argv)} is not an rllc command; mark the block " \
                                      "<!-- docs-test: skip: REASON --> if it cannot run here"
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as e:
                pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()} ({e})")
            sub = argv[1]
            if sub in PARSE_ONLY or any(f in argv for f in PARSE_ONLY_FLAGS):
                continue
            rc = main(argv[1:] + cheap(argv))
            out = capsys.readouterr()
            assert rc == 0, f"{where}: `{shlex.join(argv)}` exited {rc}:\n{out.err}"
            if sub == "heads":  # the head table fits a 100-column terminal
                table = out.out.split("\n(main scores")[0].splitlines()
                assert max(map(len, table)) <= 100, table[0]
            ran += 1
    assert ran or path.name != "README.md"
    # Every figure the commands drew: titled, labelled, with legends (matplotlib's artists, not file sizes).
    assert len(saved_figures) >= 5 or path.name != "README.md", "the tour draws figures; none were recorded"
    problems = [f"{Path(name).name}: {p}" for name, fig in saved_figures for p in figure_problems(fig)]
    assert not problems, "\n".join(problems)


def test_figure_problems_finds_what_a_figure_lacks():
    import matplotlib.pyplot as plt

    fig, (bare, good) = plt.subplots(1, 2)
    bare.plot([0, 1], label="a")
    bare.plot([1, 0], label="b")
    bare.imshow([[0, 1], [1, 0]])
    good.plot([0, 1], label="a")
    good.set(xlabel="step", ylabel="λ̂", title="good")
    problems = figure_problems(fig)
    plt.close(fig)
    assert any("no title" in p for p in problems) and any("axis label missing" in p for p in problems)
    assert any("no legend" in p for p in problems) and any("not integers" in p for p in problems)
    assert not [p for p in problems if "good" in p]
