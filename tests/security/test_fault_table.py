"""The fault table and the fuzz counts in tests/security/README.md, checked against the tests they describe.

`FAULTS` is the fault table's source: each row names the end-to-end test that produces the behaviour it
states (and asserts `let through = 0`); `test_every_fault_names_a_real_test` finds each of those tests
(and its parameter cases) in the source, `test_fault_table_is_current` keeps the README in step
(regenerate with ``.venv/bin/python -m tests.security.test_fault_table``, which rewrites the section).
`test_fuzz_counts_are_the_counts_run` reads the fuzz table's "examples per run" and compares each with
the Hypothesis settings of the test it describes.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings

from tests.security import test_fuzz_check

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
README = HERE / "README.md"
START, END = "<!-- faults:start -->\n", "<!-- faults:end -->"


@dataclass(frozen=True)
class Fault:
    case: str
    test: str  # path::function of the end-to-end test
    cases: int  # parameter cases of that test (1 if not parametrized)
    does: str
    observed: str


FAULTS = (
    Fault(
        "JWKS endpoint down",
        "tests/e2e/test_faults.py::test_jwks_down",
        1,
        "JWKS server process stopped (connection refused) after its keys were loaded; a token under the loaded "
        "key, tokens under a new kid, no token, a forbidden call; then the server back with the new key",
        "loaded kid: 200 (last good keys kept); new kid: 503 `jwks_unavailable` (fail closed, decided by the "
        "authorizer); no token: 401 `token_missing`; forbidden: 403 `insufficient_scope`; server back: the new "
        "kid accepted at its first use",
    ),
    Fault(
        "JWKS endpoint slow",
        "tests/e2e/test_faults.py::test_jwks_slow",
        1,
        "JWKS answers after 3 s; the issuer's `jwks_timeout` is 0.5 s, Envoy's ext_authz timeout 2 s",
        "new kid: 503 `jwks_unavailable` after one fetch given up at the timeout (one fetch per unknown kid, "
        "answered by the authorizer within Envoy's timeout); loaded kid: 200; once fast again the new kid: 200",
    ),
    Fault(
        "JWKS endpoint returns garbage",
        "tests/e2e/test_faults.py::test_jwks_garbage",
        6,
        "HTML; `keys` not a list; no keys; an unloadable key; 100,000 nested `[`; HTTP 500",
        "new kid: 503 `jwks_unavailable`; loaded kid still 200 (garbage replaces nothing); a good set "
        "afterwards: the new kid 200",
    ),
    Fault(
        "JWKS key rotation",
        "tests/e2e/test_faults.py::test_jwks_rotation",
        1,
        "a new key published beside the old one and used; then the old key withdrawn and a third one used; "
        "one old token presented throughout (in the token cache after its first Check)",
        "new kid: 200 at its first use, after exactly one refetch; the cached old token: 200 while its key is "
        "published, 401 `token_kid_unknown` once a refresh drops the key (fixed in this issue: it used to be "
        "served from the token cache until `exp`)",
    ),
    Fault(
        "authorizer SIGKILLed under load",
        "tests/e2e/test_faults.py::test_authorizer_killed_and_restarted_under_load",
        1,
        "loadgen (8 connections: an allowed call, a call the policy refuses, a call without token); the "
        "authorizer SIGKILLed, restarted 1 s later on the same config and ports",
        "every request in the gap: 503 from Envoy (`status_on_error`, no decision logged); all others their "
        "normal answer; the MCP server ran exactly the calls answered 200; service resumes without an Envoy "
        "restart",
    ),
    Fault(
        "invalid config reload under load",
        "tests/e2e/test_faults.py::test_invalid_reload_under_load_keeps_the_old_config",
        1,
        "under load: broken YAML, then a schema-invalid file (`default: maybe`), each with SIGHUP; then a "
        "valid stricter policy (`search` needs `tools:write`)",
        "both refused and logged; every request until the valid change got its normal answer (no 503); after "
        "it, `search` is 403 `insufficient_scope`",
    ),
    Fault(
        "Redis down and back under load",
        "tests/e2e/test_faults.py::test_redis_down_and_back_under_load",
        1,
        "store features all `closed`, `search` rate limited (far above the load); redis-server stopped under "
        "load, then started again on its port",
        "while Redis is down every call with a token: 503 `store_unavailable` (no token: 401 as before); back: "
        "normal answers; authorizer up throughout",
    ),
    Fault(
        "Redis down, paused, per feature",
        "tests/e2e/test_store_envoy.py::test_redis_outage_fails_per_feature_and_recovers",
        1,
        "(the store's own test) redis-server stopped and restarted, and SIGSTOPped, with revocation and "
        "sessions `open`, rate limits `closed`",
        "rate-limited call 503, the others served as configured (open); `/readyz` 503 while down; a paused "
        "Redis answered within Envoy's timeout; recovers when Redis is back",
    ),
    Fault(
        "load held",
        "tests/e2e/test_load_held.py::test_load_held",
        1,
        "7 s at 16 connections after a warm-up: 1,000 distinct valid tokens (5x `token_cache_size: 200`), "
        "300 under unknown kids, 100 garbage, none, and a forbidden call",
        "every answer normal (no Check missed Envoy's 2 s timeout); token cache at its cap, one key, at most "
        "one refetch per `jwks_min_refetch` from unknown kids; asyncio tasks and file descriptors flat; RSS "
        "growth under 32 MB (about 1 MB seen); normal answers right after",
    ),
)


def table() -> str:
    rows = ["| case | what the test does | observed behaviour | let through |", "|---|---|---|---|"]
    for f in FAULTS:
        path, _, name = f.test.partition("::")
        cases = f" ({f.cases} cases)" if f.cases > 1 else ""
        rows.append(f"| {f.case} (`{Path(path).name}::{name}`{cases}) | {f.does} | {f.observed} | 0 |")
    return "\n".join(rows)


def _section(text: str) -> tuple[int, int]:
    start = text.index(START) + len(START)
    return start, text.index(END)


def test_fault_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = _section(text)
    assert text[start:end].strip() == table(), "regenerate: python -m tests.security.test_fault_table"


def _parametrize_cases(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    cases = 1
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("parametrize"):
            values = decorator.args[1]
            assert isinstance(values, ast.List | ast.Tuple), ast.unparse(values)
            cases *= len(values.elts)
    return cases


def test_every_fault_names_a_real_test() -> None:
    for fault in FAULTS:
        path, _, name = fault.test.partition("::")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        found = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name]
        assert found, f"{fault.test} does not exist"
        assert _parametrize_cases(found[0]) == fault.cases, fault.test


# The fuzz table's rows, in order, and the test each describes.
FUZZ_ROWS = (
    test_fuzz_check.test_no_header_combination_lets_a_forbidden_body_through,
    test_fuzz_check.test_header_only_never_allows_the_forbidden_name,
    test_fuzz_check.test_arbitrary_bytes,
    test_fuzz_check.test_arbitrary_json,
    test_fuzz_check.test_arbitrary_json_rpc,
)


def test_fuzz_counts_are_the_counts_run() -> None:
    text = README.read_text(encoding="utf-8")
    fuzz = text[text.index("## Fuzzing the Check") :]
    fuzz = fuzz[fuzz.index("| property | examples per run |") :]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), fuzz.splitlines()[2:]))
    counts = [int(re.sub(r"\D", "", row.rsplit("|", 2)[1])) for row in rows]
    assert len(counts) == len(FUZZ_ROWS), "the fuzz table has a row more or less than FUZZ_ROWS"
    for count, test in zip(counts, FUZZ_ROWS, strict=True):
        used: settings = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
        assert used.max_examples == count, f"{test.__name__}: README says {count}, the test runs {used.max_examples}"


def write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = _section(text)
    README.write_text(text[:start] + table() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    write_readme()
