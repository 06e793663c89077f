"""The policy author's commands, run as a user runs them: ``fxgw policy check|test|explain``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation
from tests.contracts import contract, retyped
from tests.unit.conftest import repo_file
from tests.unit.test_policy import BROKEN, _expectations

FXGW = str(Path(sys.executable).with_name("fxgw"))


def _fxgw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FXGW, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd or repo_file(),
    )


def test_every_broken_policy_fails_check_naming_its_line() -> None:
    """`fxgw policy check` exits 1 and reports each broken file at its marked line, with the
    message and the fix its `# expect:` lines name."""
    result = _fxgw("policy", "check", *map(str, BROKEN))
    assert 1 == result.returncode
    for path in BROKEN:
        fragments, lines = _expectations(path)
        line = lines[0]
        reports = [r for r in result.stdout.splitlines() if r.startswith(f"error: {path}:")]
        assert 1 == len(reports), f"{path.name}: {reports}"
        assert reports[0].startswith(f"error: {path}:{line}: "), reports[0]
        # further problems of the same file follow, one a line, each with file and line
        found = [
            (m.group(1), r)
            for r in result.stdout.splitlines()
            if (m := re.match(rf"(?:error: )?{re.escape(str(path))}:(\d+): ", r))
        ]
        assert lines == sorted({int(number) for number, _ in found})
        report = "\n".join(r for _, r in found)
        for fragment in fragments:
            assert fragment in report, f"{path.name}: {fragment!r} not in {report!r}"


def test_example_policies_pass_check() -> None:
    """The shipped policies pass `fxgw policy check`."""
    examples = sorted(
        str(p) for p in repo_file("policies").glob("*.yaml") if ".test." not in p.name
    )
    result = _fxgw("policy", "check", "--strict", *examples)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert len(examples) == result.stdout.count(": ok, ")
    assert "warning" not in result.stdout


def test_strict_check_fails_on_warnings() -> None:
    """A dangerous policy passes `fxgw policy check` with its warnings printed, and fails it
    with --strict."""
    dangerous = sorted(map(str, repo_file("tests", "data", "policies", "dangerous").glob("*.yaml")))
    lenient = _fxgw("policy", "check", *dangerous)
    assert 0 == lenient.returncode, lenient.stdout + lenient.stderr
    assert "warning [personal_under_h0]" in lenient.stdout
    assert len(dangerous) == lenient.stdout.count(" warnings\n")
    assert 1 == _fxgw("policy", "check", "--strict", *dangerous).returncode


def test_check_with_a_node_config_refuses_another_agencys_policy(fed: Federation) -> None:
    """With -c, a policy written for another agency is refused; the node's own passes."""
    config = str(fed.config("NL-POL"))
    other = _fxgw("policy", "check", "-c", config, str(repo_file("policies", "be-fpj.yaml")))
    assert 1 == other.returncode
    assert "policy belongs to BE-FPJ, but this node is NL-POL" in other.stdout
    own = _fxgw("policy", "check", "-c", config, str(repo_file("policies", "nl-pol.yaml")))
    assert 0 == own.returncode, own.stdout + own.stderr


def test_example_policies_pass_their_tests() -> None:
    """`fxgw policy test` (run in the repository, as the README says) passes every stored case."""
    result = _fxgw("policy", "test", "-v")
    assert 0 == result.returncode, result.stdout + result.stderr
    summary = result.stdout.splitlines()[-1]
    passed = int(summary.split()[0])
    assert passed >= 12 and summary.endswith(" 0 failed")
    assert passed == result.stdout.count("PASS ")


def test_a_wrong_expectation_fails_with_the_field_named(tmp_path: Path) -> None:
    """A test case that expects a withheld field to arrive fails, naming case and field."""
    source = repo_file("policies", "nl-pol.test.yaml").read_text()
    wrong = source.replace("cases:\n", "cases:\n" + _WRONG_CASE, 1)
    wrong = wrong.replace("policy: nl-pol.yaml", f"policy: {repo_file('policies', 'nl-pol.yaml')}")
    wrong = wrong.replace("../tests/data/", f"{repo_file('tests', 'data')}/")
    assert "cases:\n  - name: US-ATF gets no case reference" in wrong
    path = tmp_path / "nl-pol.test.yaml"
    path.write_text(wrong)
    result = _fxgw("policy", "test", str(path))
    assert 1 == result.returncode
    assert "FAIL" in result.stdout and "US-ATF gets no case reference" in result.stdout
    assert "case_reference" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(" 1 failed")


_WRONG_CASE = """\
  - name: US-ATF gets no case reference (expected wrongly here)
    event_file: ../tests/data/events/seizure_nl_rotterdam_two_firearms.json
    expect:
      US-ATF:
        rule: seizure-partners
        fields: {case_reference: RTM-2026-004711}

"""


SCOPE = "links the same value with the same given_names, birth_date for 90-day epochs"
"""How explain states the linking scope of NL-POL's pseudonyms of family names."""


@pytest.mark.parametrize("as_json", [False, True])
def test_explain_names_the_rule_and_every_field(
    fed: Federation, tmp_path: Path, as_json: bool
) -> None:
    """`fxgw policy explain` says, field by field, what would leave for US-ATF and why (for a
    pseudonym, how far it links); for an agency no rule covers it says nothing would be
    released."""
    event = tmp_path / "seizure.json"
    event.write_text(json.dumps(seizure_nl()))
    args = ["policy", "explain", "-c", str(fed.config("NL-POL")), "--event", str(event)]
    result = _fxgw(*args, "--to", "US-ATF", *(["--json"] if as_json else []))
    assert 0 == result.returncode, result.stderr
    if as_json:
        doc = json.loads(result.stdout)
        assert "seizure-partners" == doc["rule"]
        outcomes = {f["path"]: f["outcome"] for f in doc["fields"]}
        assert "withheld" == outcomes["case_reference"]
        assert "transformed" == outcomes["persons[].family_name"]
        assert doc["released"]["case_reference"] is None
        reasons = {f["path"]: f["reason"] for f in doc["fields"]}
        assert SCOPE in reasons["persons[].family_name"]
    else:
        assert "released under rule 'seizure-partners'" in result.stdout
        assert any(
            "persons[].family_name" in line and SCOPE in line for line in result.stdout.splitlines()
        )
        assert any(
            line.split()[:2] == ["withheld", "case_reference"]
            for line in result.stdout.splitlines()
        )


def test_check_holds_a_policy_to_every_version_of_the_contract(tmp_path: Path) -> None:
    """A policy that passes against the newest version (1.1, family names optional) but
    withholds a field version 1.0 requires fails ``policy check``, naming field and version:
    peers reading 1.0 could never be served."""
    edits = {"fxgw.Person": [retyped("family_name", "string")]}
    root = contract(tmp_path / "c", {"1.0": edits, "1.1": {}})
    policy = str(repo_file("policies", "nl-pol.yaml"))
    result = _fxgw("policy", "check", "--schemas", str(root), policy)
    assert 1 == result.returncode, result.stdout + result.stderr
    assert "'persons[].family_name'" in result.stdout
    assert "contract version 1.0 requires it" in result.stdout
    alone = contract(tmp_path / "alone", {"1.1": {}})
    assert 0 == _fxgw("policy", "check", "--schemas", str(alone), policy).returncode


def test_the_readme_policy_example_loads(tmp_path: Path) -> None:
    """The policy shown in the README's "Release policies" section passes `policy check
    --strict`: the example a policy author copies is a valid, warning-free policy."""
    readme = repo_file("README.md").read_text()
    section = readme[readme.index("## Release policies") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    example = section[start : section.index("```", start)]
    assert "seizure-partners" in example
    path = tmp_path / "nl-pol.yaml"
    path.write_text(example)
    result = _fxgw("policy", "check", "--strict", str(path))
    assert 0 == result.returncode, result.stdout + result.stderr
