"""No input makes the command line fail with a traceback (property-based, hypothesis).

Random bytes, random YAML, and mutations of real inputs (the configuration
``config print-defaults`` writes; the kubeadm 1.20 manifests in shared/fixtures and the
1.30/1.34 ones in tests/fixtures) go to ``config validate``, ``render`` and
``patch-manifest --dry-run``. Each run asserts:

* the exit code is 0, 1 or 2, and the only exception a command raises is a
  :class:`~k8s_sql.errors.K8sSqlError` (which ``main()`` prints as one line) or the
  ``SystemExit`` of a usage error: anything else is a bug, reported with its traceback;
* "Traceback" never appears in the output;
* nothing is written outside the example's scratch directory, and inside it only where
  the command may write: render only into ``--out`` (and on a failure not even there),
  patch-manifest --dry-run nowhere.

The commands run in-process through typer's CliRunner (a subprocess costs seconds here)
with the scratch directory as working directory and HOME. Each property runs twice: with
a fixed seed (the same examples in every CI run) and with a random one, which the failure
message names; ``K8S_SQL_FUZZ_SEED=N`` replays it. About 150 examples in all.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import tempfile
import traceback
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from k8s_sql.cli import app
from k8s_sql.errors import K8sSqlError

FIXED_SEED = 20240917
RANDOM_SEED = int(os.environ.get("K8S_SQL_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
REPLAY = f"(random seed {RANDOM_SEED}; K8S_SQL_FUZZ_SEED={RANDOM_SEED} replays the random run)"

SHARED = Path(__file__).parents[2] / "shared/fixtures/kubeadm-1.20"
LOCAL = Path(__file__).parent / "fixtures/manifests"
MANIFESTS = [SHARED / "kube-apiserver.stacked.yaml", SHARED / "kube-apiserver.seed-http.yaml",
             LOCAL / "kube-apiserver-1.30.yaml", LOCAL / "kube-apiserver-1.34.yaml"]
ETCD = LOCAL / "etcd-1.20.yaml"
#: Places a bug could write to on this machine (the live paths render and patch-manifest
#: know about, the directories above them, the repository); their listing must not change.
WATCHED = ["/", "/etc", "/etc/kubernetes", "/etc/k8s-sql", "/etc/postgresql", "/postgresql",
           str(Path(__file__).parents[1])]

runner = CliRunner()


def _invoke(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI in-process with ``cwd`` as working directory and HOME; returns the
    exit code main() would give and the output. Fails on an unexpected exception."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(app, args, env={"HOME": str(cwd), "COLUMNS": "120"}, catch_exceptions=True)
    finally:
        os.chdir(old)
    output = result.output
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        if not isinstance(exc, K8sSqlError):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            pytest.fail(f"k8s-sql {' '.join(args)}: unexpected {type(exc).__name__} {REPLAY}\n{tb}\n{output}")
        return exc.exit_code, output + str(exc)
    code = result.exit_code
    assert code in (0, 1, 2), f"k8s-sql {' '.join(args)}: exit code {code} {REPLAY}\n{output}"
    assert "Traceback" not in output, f"k8s-sql {' '.join(args)}: {REPLAY}\n{output}"
    return code, output


def _listing(path: str):
    """Names in ``path``, without hidden and lock/backup files (``/etc/subgid.lock``,
    ``passwd-``: other programs on a shared machine come and go there)."""
    try:
        return sorted(n for n in os.listdir(path) if not n.startswith(".") and not n.endswith((".lock", "-", "~", "+")))
    except OSError as e:
        return e.errno


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            out[rel] = ("link:" + os.readlink(p)) if os.path.islink(p) else "dir" if os.path.isdir(p) \
                else Path(p).read_bytes()
    return out


class Scratch:
    """A scratch directory per example, and the check that nothing outside it changed."""

    def __enter__(self) -> Path:
        self.before = {p: _listing(p) for p in WATCHED}
        self.path = Path(tempfile.mkdtemp(prefix="k8s-sql-fuzz-"))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if exc[0] is None:
            after = {p: _listing(p) for p in WATCHED}
            changed = {p: (self.before[p], after[p]) for p in WATCHED if after[p] != self.before[p]}
            assert not changed, f"something was written outside the scratch directory {REPLAY}: {changed}"


# --- inputs ---------------------------------------------------------------------------------

ODD_STRINGS = ["", "/", "..", "../..", "/etc", "/proc/x", "relative/dir", "300.1.2.3", "10.244.0.0/33", "10.244.0.1/16",
               "-1", "70000", "forever", "v1.10", "v9.99.0", "Bad_Name!", "A B", "0.0.0.0", "::", "~", "null", "yes",
               "2001-13-45", "*", "&a", "!!binary x", "\x00", "é", "a" * 300, "--help", "-c", "k8s-sql", "Pod", "v1"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(ODD_STRINGS))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=3), max_leaves=8)


def _paths(doc, prefix=()):
    """Every (container path, key) in a nested dict/list document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix, i
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_doc(draw, base) -> str:
    """``base`` (a parsed document) with 1-3 values replaced, removed or added, as YAML."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        spots = list(_paths(doc))
        if not spots:
            break
        where, key = draw(st.sampled_from(spots))
        parent = doc
        for k in where:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(VALUES)
        else:
            parent.append(draw(VALUES))
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@st.composite
def mutated_text(draw, text: str) -> str:
    """``text`` with a line dropped, doubled, re-indented, cut, or characters inserted."""
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "double", "indent", "cut", "insert"]))
        if action == "drop":
            del lines[i]
        elif action == "double":
            lines.insert(i, lines[i])
        elif action == "indent":
            lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
        elif action == "cut":
            lines = lines[:i] + [lines[i][: draw(st.integers(0, len(lines[i])))]]
        else:
            pos = draw(st.integers(0, len(lines[i])))
            junk = draw(st.text(max_size=5) | st.sampled_from([":", "- ", "{", "&a ", "*a", "\t"]))
            lines[i] = lines[i][:pos] + junk + lines[i][pos:]
    return "".join(lines)


def _encoded(texts) -> st.SearchStrategy[bytes]:
    return texts.map(lambda t: t.encode("utf-8", "surrogatepass"))


def _inputs(real_texts: list[str]) -> st.SearchStrategy[bytes]:
    """Random bytes, random YAML, and ``real_texts`` as they are and mutated (structure
    and text)."""
    docs = [yaml.safe_load(t) for t in real_texts]
    near = st.one_of(st.sampled_from(real_texts), st.sampled_from(docs).flatmap(mutated_doc),
                     st.sampled_from(real_texts).flatmap(mutated_text))
    noise = st.one_of(st.binary(max_size=300), _encoded(st.text(max_size=200)),
                      _encoded(VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
    # mostly near-valid input: it gets past the parser into the checks behind it
    return st.sampled_from(["near", "near", "near", "noise"]).flatmap(
        lambda kind: _encoded(near) if kind == "near" else noise)


def _defaults_config() -> str:
    code, out = _invoke(["config", "print-defaults"], Path(tempfile.gettempdir()))
    assert code == 0, out
    return out


CONFIGS = st.deferred(lambda: _inputs([_defaults_config(), _defaults_config().replace(
    "  clientAddresses: []", "  clientAddresses: [192.0.2.11]").replace("kind: k8s-sql", "kind: kine")]))
MANIFEST_INPUTS = _inputs([p.read_text() for p in MANIFESTS])


def fuzz(strategy, examples: int):
    """Two tests of ``check``: with :data:`FIXED_SEED` and with :data:`RANDOM_SEED`."""

    def make(check, which):
        test = settings(max_examples=examples, deadline=None, database=None, print_blob=True,
                        suppress_health_check=list(HealthCheck))(given(strategy)(check))
        return seed(which)(test)

    return lambda check: (make(check, FIXED_SEED), make(check, RANDOM_SEED))


# --- the properties -------------------------------------------------------------------------

def check_config_validate(data: bytes) -> None:
    with Scratch() as scratch:
        (scratch / "cluster.yaml").write_bytes(data)
        before = _tree(scratch)
        _invoke(["config", "validate", "-c", "cluster.yaml"], scratch)
        assert _tree(scratch) == before, REPLAY


test_config_validate_fixed_seed, test_config_validate_random_seed = fuzz(CONFIGS, 30)(check_config_validate)

OUT_LAYOUTS = ["new", "new-nested", "empty", "holds-a-file", "is-a-file", "symlink-out", "file-in-the-way", "blank"]
FLAGS = st.lists(st.sampled_from([
    ["--node-name", "cp1"], ["--apiserver-advertise-address", "192.0.2.10"], ["--kubernetes-version", "v1.30.4"],
    ["--pod-network-cidr", "10.244.0.0/16"], ["--shim", "kine"], ["--force"]]) | st.tuples(
    st.sampled_from(["--node-name", "--apiserver-advertise-address", "--kubernetes-version", "--pod-network-cidr",
                     "--shim", "--shim-image", "--postgres-uri", "--cri-socket"]),
    st.text(max_size=12) | st.sampled_from(ODD_STRINGS)).map(list), max_size=4)


def _out_dir(scratch: Path, layout: str) -> str:
    """Prepare ``scratch/work`` for one --out layout; returns the --out value."""
    work = scratch / "work"
    work.mkdir()
    (scratch / "outside").mkdir()
    out = work / "out"
    if layout == "new-nested":
        return str(out / "a/b")
    if layout == "empty":
        out.mkdir()
    elif layout == "holds-a-file":
        (out / "etc/k8s-sql").mkdir(parents=True)
        (out / "etc/k8s-sql/kubeadm.yaml").write_text("mine\n")
    elif layout == "is-a-file":
        out.write_text("a file\n")
    elif layout == "symlink-out":
        (out / "etc").mkdir(parents=True)
        (out / "etc/k8s-sql").symlink_to(scratch / "outside")
    elif layout == "file-in-the-way":
        (out / "etc").mkdir(parents=True)
        (out / "etc/k8s-sql").write_text("a file\n")
    elif layout == "blank":
        return ""
    return str(out)


@st.composite
def render_cases(draw):
    return draw(CONFIGS), draw(st.sampled_from(OUT_LAYOUTS)), [a for f in draw(FLAGS) for a in f]


def check_render(case) -> None:
    data, layout, flags = case
    with Scratch() as scratch:
        (scratch / "cluster.yaml").write_bytes(data)
        out = _out_dir(scratch, layout)
        before = _tree(scratch)
        code, output = _invoke(["render", "--out", out, "-c", "cluster.yaml", *flags], scratch)
        after = _tree(scratch)
        assert {k: v for k, v in after.items() if not k.startswith("work/")} == \
               {k: v for k, v in before.items() if not k.startswith("work/")}, f"written outside --out {REPLAY}"
        if code != 0:  # a refusal or failure leaves --out as it was: nothing half-written
            assert after == before, f"a failed render changed {out} {REPLAY}\n{output}"
        else:
            assert out, REPLAY
            assert not [k for k in after if ".k8s-sql-render-" in k], f"staging directory left behind {REPLAY}"


test_render_fixed_seed, test_render_random_seed = fuzz(render_cases(), 20)(check_render)


@st.composite
def patch_cases(draw):
    etcd = st.sampled_from([None, None, "etcd.yaml", "etcd-main.yml"])
    return draw(MANIFEST_INPUTS), draw(etcd), draw(st.booleans()), draw(st.sampled_from([None, None, None]) | CONFIGS)


@pytest.fixture(scope="module", autouse=True)
def _pki(tmp_path_factory):
    """The datastore certificates patch-manifest checks for, made by render once."""
    global PKI
    out = tmp_path_factory.mktemp("fuzz-pki") / "out"
    code, output = _invoke(["render", "--out", str(out), "--node-name", "cp1",
                            "--apiserver-advertise-address", "192.0.2.10"], out.parent)
    assert code == 0, output
    PKI = out / "etc/kubernetes/pki/k8s-sql"


PKI: Path


def check_patch_manifest(case) -> None:
    manifest, etcd_name, allow_empty, config = case
    with Scratch() as scratch:
        manifests = scratch / "etc/kubernetes/manifests"
        manifests.mkdir(parents=True)
        (manifests / "kube-apiserver.yaml").write_bytes(manifest)
        if etcd_name:
            shutil.copy(ETCD, manifests / etcd_name)
        if config is None:
            config = (f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths:\n  manifestsDir: {manifests}\n"
                      f"  backupDir: {scratch}/backup\n  pkiDir: {PKI}\n").encode()
        (scratch / "cluster.yaml").write_bytes(config)
        before = _tree(scratch)
        args = ["patch-manifest", "--dry-run", "-c", "cluster.yaml",
                "--manifest", str(manifests / "kube-apiserver.yaml")]
        _invoke(args + (["--allow-empty-datastore"] if allow_empty else []), scratch)
        assert _tree(scratch) == before, f"patch-manifest --dry-run wrote something {REPLAY}"


test_patch_manifest_fixed_seed, test_patch_manifest_random_seed = fuzz(patch_cases(), 25)(check_patch_manifest)


# --- main(): the last line of defence ------------------------------------------------------

def test_main_turns_a_bug_into_one_line(monkeypatch, capsys):
    """An exception no command expects (a stand-in command raising RuntimeError: by
    construction no real input is known to do that any more) is one line naming it, a
    hint to report it, exit 1; with K8S_SQL_DEBUG=1 the traceback is shown."""
    import sys

    from k8s_sql import cli

    @cli.app.command("fuzz-bug", hidden=True)
    def _bug() -> None:
        raise RuntimeError("something\nunexpected")

    try:
        monkeypatch.setattr(sys, "argv", ["k8s-sql", "fuzz-bug"])
        monkeypatch.delenv("K8S_SQL_DEBUG", raising=False)
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert "unexpected RuntimeError: something unexpected" in err and "report" in err
        assert "K8S_SQL_DEBUG=1" in err and "Traceback" not in err
        monkeypatch.setenv("K8S_SQL_DEBUG", "1")
        with pytest.raises(RuntimeError):
            cli.main()
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "fuzz-bug"]
