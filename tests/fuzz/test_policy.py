"""Fuzzing :func:`gateway.policy.engine.load_policy` with the operator's files gone wrong.

Two kinds of input: the shipped policies (policies/*.yaml) after random edits (bytes, lines,
indentation, values swapped for tricky YAML scalars), and arbitrary YAML-like text. Whatever the
file holds, load_policy returns a policy or raises PolicyError naming the file, quickly.

Budget (see tests/fuzz/conftest.py): derandomized and modest by default; for a long run by hand,
``FXGW_FUZZ_EXAMPLES=20000 pytest tests/fuzz -p no:cacheprovider``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from gateway.contract.schemas import SchemaRegistry
from gateway.errors import PolicyError, PolicyProblems
from gateway.policy.engine import load_policy
from tests.fuzz.conftest import TIMEOUT, budget, corpus
from tests.strategies import mutated

pytestmark = TIMEOUT

POLICIES = tuple(
    p.read_bytes()
    for p in sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
    if not p.name.endswith(".test.yaml")
)
CASES = corpus("policy")

SCALARS = (
    "2026-13-45",
    "2026-02-30",
    "2026-01-01T00:00:00+99:00",
    "2026-01-01 25:00:00",
    "9" * 5000,
    "-" + "9" * 5000,
    "0x",
    "0b",
    "0o9",
    "1_000",
    "1:2:3",
    "1e999",
    "-.inf",
    ".nan",
    "~",
    "null",
    "yes",
    "off",
    "''",
    '""',
    '"\\x00"',
    '"\\ud800"',
    "[]",
    "{}",
    "[[[[[[[[]]]]]]]]",
    "!!int x",
    "!!int ''",
    "!!int -",
    "!!float x",
    "!!float ''",
    "!!bool x",
    "!!timestamp x",
    "!!timestamp 2026-02-30",
    "!!binary zz",
    "!!binary ''",
    "!!set {a}",
    "!!omap [a]",
    "!!pairs [a]",
    "!!python/object:os.system x",
    "!unknown x",
    "&anchor x",
    "*anchor",
    "<<: {a: 1}",
    "? [a]",
    "|",
    ">-",
    "%YAML 1.1",
    "---",
    "...",
    "\t",
    "@",
    "`",
)
"""YAML scalars and constructs that PyYAML resolves to a type, or refuses, or both."""

TOKENS = (
    *SCALARS,
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    "- ",
    ": ",
    ":",
    ", ",
    "{",
    "}",
    "[",
    "]",
    "? ",
    "# ",
    "'",
    '"',
    "!!str ",
    "policy",
    "rules",
    "id",
    "version",
    "agency",
    "event",
    "fxgw.SeizureEvent",
    "to",
    "all",
    "groups",
    "EU",
    "handling",
    "code",
    "H3",
    "fields",
    "keep",
    "generalise",
    "when",
    "firearms[].make",
    "persons",
)
"""Pieces of YAML text, for documents that are partly a policy and partly noise."""


@st.composite
def edited_lines(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to four line edits: a line deleted, repeated, moved, re-indented, or
    its value (after the first ``: ``) or its whole content replaced by a tricky scalar."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4), label="edits")):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1), label="line")
        edit = draw(
            st.sampled_from(("delete", "repeat", "move", "indent", "value", "line")), label="edit"
        )
        if edit == "delete":
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, lines[at])
        elif edit == "move":
            lines.insert(draw(st.integers(0, len(lines)), label="to"), lines.pop(at))
        elif edit == "indent":
            stripped = lines[at].lstrip(" ")
            lines[at] = " " * draw(st.integers(0, 12), label="indent") + stripped
        elif edit == "value" and ": " in lines[at]:
            key = lines[at].split(": ", 1)[0]
            lines[at] = f"{key}: {draw(st.sampled_from(SCALARS), label='value')}"
        else:
            lines[at] = draw(st.sampled_from(SCALARS), label="content")
    return "\n".join(lines) + "\n"


def yaml_like_text() -> SearchStrategy[str]:
    """Text made of YAML punctuation, policy words and tricky scalars, and arbitrary text."""
    return st.one_of(
        st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
        st.text(max_size=400),
    )


def _check_load(path: Path, registry: SchemaRegistry, content: bytes) -> None:
    """load_policy returns a policy, or raises PolicyError (or PolicyProblems, every one of
    them a PolicyError; nothing else) that names ``path``."""
    path.write_bytes(content)
    try:
        load_policy(path, registry)
    except PolicyError as exc:
        assert type(exc) in (PolicyError, PolicyProblems)
        problems = exc.problems if isinstance(exc, PolicyProblems) else (exc,)
        assert {(PolicyError, str(path))} == {(type(p), p.file) for p in problems}


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example's policy is written (one file, rewritten by every example)."""
    return tmp_path_factory.mktemp("fuzz-policy") / "policy.yaml"


class TestLoadPolicy:
    """load_policy returns a policy or raises PolicyError naming the file."""

    @budget(0.5)
    @given(choice=st.data())
    def test_edited_bytes(
        self, registry: SchemaRegistry, policy_path: Path, choice: st.DataObject
    ) -> None:
        """A shipped policy with bytes flipped, inserted, deleted or spliced."""
        original = choice.draw(st.sampled_from(POLICIES), label="policy")
        _check_load(policy_path, registry, choice.draw(mutated(original, POLICIES)))

    @budget(0.5)
    @given(choice=st.data())
    def test_edited_lines(
        self, registry: SchemaRegistry, policy_path: Path, choice: st.DataObject
    ) -> None:
        """A shipped policy with lines deleted, repeated, moved, re-indented or rewritten."""
        original = choice.draw(st.sampled_from(POLICIES), label="policy").decode("utf-8")
        edited = choice.draw(edited_lines(original), label="edited")
        _check_load(policy_path, registry, edited.encode("utf-8", "surrogatepass"))

    @budget(0.5)
    @given(text=yaml_like_text())
    def test_arbitrary_text(self, registry: SchemaRegistry, policy_path: Path, text: str) -> None:
        """YAML-like and arbitrary text."""
        _check_load(policy_path, registry, text.encode("utf-8", "surrogatepass"))


@pytest.mark.skipif(not CASES, reason="no stored policy inputs")
class TestPolicyRegressions:
    """Every file a fuzz run found crashing is refused with a PolicyError naming it."""

    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
    def test_stored_file(self, registry: SchemaRegistry, path: Path) -> None:
        """The stored file is refused, and the error names it and the line at fault."""
        with pytest.raises(PolicyError) as caught:
            load_policy(path, registry)
        assert type(caught.value) in (PolicyError, PolicyProblems)
        assert str(path) == caught.value.file
        assert caught.value.line is not None
