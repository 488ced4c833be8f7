"""Hostile config files: whatever a file holds, loading it raises ConfigError and nothing
else, quickly and in bounded memory, naming the file and line:column (issue 12).

Files are loaded through the entry points users call: ``Router.from_yaml``,
``Router.reload``, ``smsroute check`` and ``load_config`` (what ``from_yaml`` uses).
"""

from __future__ import annotations

import copy
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT, twilio_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import ConfigError, Message, Router, load_config, parse_config, yamlsource
from smsroute.cli import main
from smsroute.errors import ConfigProblem
from smsroute.testing import FakeTwilio

BASE = """\
version: 1
defaults:
  breaker: {open_for: 30s}
providers:
  tw:
    type: twilio
    account_sid: AC1
    auth_token: secret
    from: "+15005550006"
    timeout: 5s
    prices: {DE: 0.05}
rules:
  - name: default
    strategy: weighted
    weights: {tw: 1}
    providers: [tw]
"""


def sub(old: str, new: str) -> bytes:
    assert old in BASE
    return BASE.replace(old, new, 1).encode()


DEEP_BLOCK = "deep:\n" + "".join(" " * i + "a:\n" for i in range(1, 80)) + " " * 80 + "x\n"
BOMB_LINES = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
BOMB_LINES += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
BILLION_LAUGHS = "\n".join(BOMB_LINES) + "\n"
MERGE_BOMB = "a0: &a0 {x: 1, y: 2}\n" + "".join(
    f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}], k{i}: 1}}\n" for i in range(1, 10)
)

# (id, file content, line, column or None, a fragment of the message)
HOSTILE: list[tuple[str, bytes, int | None, int | None, str]] = [
    ("latin-1 byte", sub("secret", "s\xe9cret").replace(b"\xc3\xa9", b"\xe9"), 8, 18, "not UTF-8"),
    (
        "utf-16 with BOM",
        BASE.encode("utf-16"),
        None,
        None,
        "not UTF-8 (looks like UTF-16): save it as UTF-8",
    ),
    ("utf-16 without BOM", BASE.encode("utf-16-le"), None, None, "looks like UTF-16"),
    ("utf-32", BASE.encode("utf-32"), None, None, "looks like UTF-32"),
    ("NUL in the text", sub("secret", "sec\0ret"), 8, 20, "U+0000 (NUL)"),
    ("deep flow nesting", sub("5s", "[" * 5000 + "]" * 5000), 10, None, "more than 64 levels"),
    ("deep block nesting", (BASE + DEEP_BLOCK).encode(), 17 + 63, None, "more than 64 levels"),
    ("recursive alias in a list", sub("5s", "&x [*x]"), 10, 18, "recursive alias"),
    ("recursive alias in a mapping", sub("{DE: 0.05}", "&p {DE: *p}"), 11, 21, "recursive alias"),
    ("5,000-digit integer", sub("5s", "1" * 5000), 10, 14, "5,000 characters is too long"),
    ("!!python/name tag", sub("5s", "!!python/name:os.system"), 10, 14, "!!python/name:os.system"),
    ("!!binary tag", sub("5s", "!!binary aGVsbG8="), 10, 14, "tag !!binary is not supported"),
    ("!!map on a list", sub("5s", "!!map [1]"), 10, 14, "tag !!map is not supported"),
    ("!!set tag", sub("{DE: 0.05}", "!!set {DE}"), 11, 13, "tag !!set is not supported"),
    ("local tag", sub("{DE: 0.05}", "!price {DE: 0.05}"), 11, 13, "tag !price is not supported"),
    ("!!bool maybe", sub("5s", "!!bool maybe"), 10, 14, "'maybe' cannot be read as true or false"),
    ("!!int of nothing", sub("5s", "!!int ''"), 10, 14, "cannot be read as a whole number"),
    ("impossible date", sub("5s", "2024-99-99"), 10, 14, "cannot be read as a date"),
    ("400-digit price", sub("0.05", "9" * 400), 11, 18, "too long"),
    ("400-digit duration", sub("5s", "9" * 400 + "s"), 10, 14, "finite duration"),
    ("price past a float", sub("0.05", "1.0e+400"), 11, 18, "at most 1,000,000,000"),
    ("hex integer past the limits", sub("0.05", "0x" + "f" * 98), 11, 18, "at most"),
    ("NUL byte in a price-file path", sub("{DE: 0.05}", '"prices\\0.yaml"'), 11, 13, "NUL byte"),
    ("price file name too long", sub("{DE: 0.05}", "p" * 5000), 11, 13, "price file"),
    (".nan timeout", sub("5s", ".nan"), 10, 14, "finite duration"),
    (".inf timeout", sub("5s", ".inf"), 10, 14, "finite duration"),
    (".inf open_for", sub("30s", ".inf"), 3, 23, "finite duration"),
    (".nan weight", sub("{tw: 1}", "{tw: .nan}"), 15, 19, "a weight must be"),
    (".inf weight", sub("{tw: 1}", "{tw: .inf}"), 15, 19, "a weight must be"),
    (
        "huge breaker window",
        sub("{open_for: 30s}", "{window: " + "9" * 90 + "}"),
        3,
        21,
        "1,000,000",
    ),
    ("billion laughs", (BASE + BILLION_LAUGHS).encode(), 21, 10, "more than 10,000 values"),
    ("merge-key bomb", (BASE + MERGE_BOMB).encode(), 21, 20, "more than 10,000 values"),
    ("two documents", (BASE + "---\nx: 1\n").encode(), 17, 1, "more than one YAML document"),
    ("a list as a key", sub("version: 1", "? [a]\n: 1"), 1, 3, "a key must be"),
]
IDS = [case[0] for case in HOSTILE]


def write(tmp_path: Path, data: bytes, name: str = "routing.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "line", "column", "fragment"), [c[1:] for c in HOSTILE], ids=IDS)
def test_from_yaml_raises_config_error_with_file_and_position(
    tmp_path: Path, data: bytes, line: int | None, column: int | None, fragment: str
) -> None:
    path = write(tmp_path, data)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        Router.from_yaml(path, metrics=False)
    assert time.perf_counter() - started < 1.0
    err = info.value
    assert fragment in str(err)
    assert (err.file, err.line) == (str(path), line)
    if column is not None:
        assert err.column == column
    assert str(err).startswith(f"{path}:")


@pytest.mark.parametrize(("data", "line", "column", "fragment"), [c[1:] for c in HOSTILE], ids=IDS)
def test_pure_python_parser_gives_the_same_answer(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    line: int | None,
    column: int | None,
    fragment: str,
) -> None:
    """PyYAML built without libyaml: the bounds hold just the same."""
    monkeypatch.setattr(yamlsource, "_Events", yaml.BaseLoader)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.line == line
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("data", "line", "fragment"), [(c[1], c[2], c[4]) for c in HOSTILE], ids=IDS
)
def test_check_command_prints_one_clear_message(
    tmp_path: Path, data: bytes, line: int | None, fragment: str
) -> None:
    path = write(tmp_path, data)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert isinstance(result.exception, SystemExit)  # not an exception escaping click
    assert result.exit_code == 3  # a config error, the same for every command
    assert "Traceback" not in result.stderr
    where = f"{path}:{line}:" if line is not None else f"{path}: "
    assert result.stderr.startswith(where)
    assert fragment in result.stderr
    assert len(result.stderr.splitlines()) == 1


async def test_reload_with_a_hostile_file_keeps_the_running_config(tmp_path: Path) -> None:
    async with FakeTwilio() as fake:
        good = write(
            tmp_path,
            (
                f"providers:\n{twilio_block('tw', fake)}\n"
                "rules:\n  - name: default\n    providers: [tw]\n"
            ).encode(),
            "good.yaml",
        )
        async with Router.from_yaml(good, metrics=False) as router:
            before = router.config
            for name, data, line, _, fragment in HOSTILE:
                bad = write(tmp_path, data, "bad.yaml")
                with pytest.raises(ConfigError) as info:
                    router.reload(bad)
                assert (info.value.file, info.value.line) == (str(bad), line), name
                assert fragment in str(info.value), name
                assert router.config is before, name
            result = await router.send(Message(to="+14155550100", text="still routing"))
            assert result.ok
            assert result.provider == "tw"
            assert len(fake.messages) == 1


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS, MERGE_BOMB], ids=["aliases", "merge keys"])
def test_alias_bomb_is_refused_fast_in_bounded_memory(bomb: str) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as info:
            parse_config(BASE + bomb, file="bomb.yaml")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 50 * 1024 * 1024
    assert "aliases expand to more than 10,000 values, the limit" in str(info.value)


def test_aliases_and_merge_keys_within_the_bounds_work() -> None:
    text = BASE.replace("  breaker: {open_for: 30s}", "  breaker: &b {open_for: 30s, window: 20}")
    text = text.replace("    timeout: 5s", "    timeout: 5s\n    breaker: {<<: *b, open_for: 10s}")
    config = parse_config(text)
    assert config.defaults.breaker.open_for == 30.0
    breaker = config.providers["tw"].breaker
    # the mapping's own keys win over merged ones (the old loader said "given twice")
    assert (breaker.open_for, breaker.window) == (10.0, 20)


def test_nesting_through_aliases_is_bounded() -> None:
    # each line nests 30 levels around the previous one: *l1 inside l2 reaches 91
    chain = ["l0: &l0 " + "[" * 30 + "]" * 30]
    chain += [f"l{i}: &l{i} " + "[" * 30 + f"*l{i - 1}" + "]" * 30 for i in range(1, 4)]
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "\n".join(chain) + "\n", file="chain.yaml")
    assert (info.value.line, info.value.column) == (19, 39)
    assert "with the alias *l1 expanded, lists and mappings are nested more than 64" in str(
        info.value
    )


def test_config_file_over_1_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, (BASE + "#" * (1 << 20)).encode())
    with pytest.raises(ConfigError, match="larger than 1 MiB") as info:
        load_config(path)
    assert (info.value.file, info.value.line) == (str(path), None)


@pytest.mark.parametrize("source", ["big", "/dev/zero"])
def test_price_file_is_read_within_the_size_bound(tmp_path: Path, source: str) -> None:
    if source == "big":
        write(tmp_path, b"prices: {DE: 0.05}\n" + b"#" * (1 << 20), "big.yaml")
        source = "big.yaml"
    path = write(tmp_path, sub("{DE: 0.05}", source))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="larger than 1 MiB") as info:
        load_config(path)
    assert time.perf_counter() - started < 1.0
    assert (info.value.line, info.value.path) == (11, "providers.tw.prices")


def test_hostile_price_file_is_reported_in_its_own_file(tmp_path: Path) -> None:
    prices = write(tmp_path, b"DE: 0.05\nFR: !!python/object:os.system {}\n", "p.yaml")
    path = write(tmp_path, sub("{DE: 0.05}", "p.yaml"))
    with pytest.raises(ConfigError, match=r"tag !!python/object:os\.system") as info:
        load_config(path)
    assert (info.value.file, info.value.line, info.value.column) == (str(prices), 2, 5)


def test_too_many_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="more than 50,000 values"):
        parse_config(BASE + "many: [" + "1, " * 60_000 + "]\n")


def test_a_flood_of_problems_is_capped() -> None:
    text = BASE.replace("providers: [tw]", "providers: [" + ", ".join(["x"] * 500) + "]")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert len(info.value.problems) == yamlsource.MAX_PROBLEMS
    assert str(info.value.problems[-1]).endswith("more problems: fix these first")


def test_utf8_with_or_without_a_bom_is_the_only_encoding_read(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, b"\xef\xbb\xbf" + BASE.encode())).providers["tw"]
    assert load_config(write(tmp_path, BASE.encode())).providers["tw"]
    for encoding in ("utf-16", "utf-16-be", "utf-32-le", "cp1252"):
        data = BASE.replace("secret", "s\xe9cret").encode(encoding)
        with pytest.raises(ConfigError, match="save it as UTF-8"):
            load_config(write(tmp_path, data))


# -- property-based: mutated configs and arbitrary bytes --------------------------------------

ROUTING = (ROOT / "config" / "routing.yaml").read_bytes()
ROUTING_TREE = yaml.safe_load(ROUTING)
ENV = {
    "TWILIO_ACCOUNT_SID": "AC1",
    "TWILIO_AUTH_TOKEN": "t",
    "TWILIO_BACKUP_ACCOUNT_SID": "AC2",
    "TWILIO_BACKUP_AUTH_TOKEN": "t",
    "TWILIO_BACKUP_MESSAGING_SERVICE_SID": "MG1",
}
FRAGMENTS = [
    "[", "]", "{", "}", ": ", ":", "- ", ", ", "? ", "|", ">", "'", '"', "#", "\t", "\n", "\n  ",
    "&a ", "*a", "*nope", "<<: *a\n", "<<: ", "&a [*a]", "---\n", "...\n", "%YAML 1.1\n", "!", "!!",
    "!!python/object/apply:os.system ['true'] ", "!!python/name:os.system ", "!!binary ",
    "!!set ", "!!omap ", "!!map ", "!!seq ", "!!str ", "!!int ", "!!float ", "!!bool ", "!!null ",
    "!!timestamp ", "!local ", "!<tag:example.com,2000:x> ", ".nan", ".inf", "-.inf", "1e309",
    "1.0e+400", "9" * 400, "1" * 5000, "0x" + "f" * 300, "1:" * 200 + "1", "2024-99-99", "~",
    "${X}", "${UNSET_ENV_VAR}", "${", "\x00", "\x85", "\u2028", "\ufeff", "=", "\\", "%",
]  # fmt: skip
TAGS = ["!!python/name:os.system", "!!binary", "!!set", "!!omap", "!!pairs", "!!map", "!!seq",
        "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!str", "!x", "!"]  # fmt: skip


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


TREE_PATHS = _paths(ROUTING_TREE)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=20),
    st.dates(),
    st.sampled_from(
        ["5s", "100/s", "50%", "-1s", "0", "prices/../prices/twilio-backup.yaml", "/dev/zero"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated_routing(draw: st.DrawFn) -> bytes:
    data = ROUTING
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "tag", "number", "replace"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif op == "insert":
            data = data[:at] + draw(st.sampled_from(FRAGMENTS)).encode() + data[at:]
        elif op in ("tag", "number"):
            # before the value of a random "key: value" line
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            key, sep, value = lines[i].partition(b": ")
            if sep:
                new = (
                    draw(st.sampled_from(TAGS)).encode() + b" " + value
                    if op == "tag"
                    else draw(
                        st.sampled_from([b"9" * 400, b"1" * 5000, b".nan", b".inf", b"1e999"])
                    )
                )
                lines[i] = key + sep + new
            data = b"\n".join(lines)
        elif op == "replace":
            tree = copy.deepcopy(yaml.safe_load(ROUTING))
            path = draw(st.sampled_from(TREE_PATHS))
            node = tree
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = draw(values)
            data = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True).encode()
    return data


def _load_only_config_error(path: Path, data: bytes, loader: Callable[[Path], object]) -> None:
    """Load ``data``: it loads, or ConfigError (and nothing else) says why, in under a second."""
    path.write_bytes(data)
    started = time.perf_counter()
    problems: tuple[ConfigProblem, ...] = ()
    try:
        loader(path)
    except ConfigError as exc:
        problems = exc.problems
    assert time.perf_counter() - started < 1.0
    assert all(str(problem).startswith(problem.file) for problem in problems)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copytree(ROOT / "config" / "prices", folder / "prices")
    (folder / "routing.yaml").write_bytes(ROUTING)
    assert (
        len(load_config(folder / "routing.yaml", environ=ENV).rules) == 4
    )  # mutations start valid
    return folder


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_routing())
def test_mutated_routing_yaml_raises_only_config_error(fuzz_dir: Path, data: bytes) -> None:
    _load_only_config_error(fuzz_dir / "routing.yaml", data, lambda p: load_config(p, environ=ENV))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_config_error(fuzz_dir: Path, data: bytes) -> None:
    _load_only_config_error(fuzz_dir / "bytes.yaml", data, lambda p: load_config(p, environ=ENV))
