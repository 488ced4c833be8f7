"""SMPP over TLS: the adapter's ``tls: {ca: file}`` against FakeSMSC serving TLS with a
certificate made at test time; a CA that did not sign it fails the bind in words."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import Config, Message, Outcome, Router, load_config, parse_config
from smsroute.errors import ConfigError
from smsroute.testing.smsc import FakeSMSC

pytestmark = pytest.mark.timeout(30)
TO = "+4915123456789"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(
    directory: Path, label: str
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"smsroute test CA {label}"))
        .issuer_name(_name(f"smsroute test CA {label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def server_context(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def config(port: int, tls: str) -> Config:
    return parse_config(config_text(port, tls))


def config_text(port: int, tls: str) -> str:
    return f"""
providers:
  smsc:
    type: smpp
    host: 127.0.0.1
    port: {port}
    system_id: smsroute
    password: secret
    from: ACME
    timeout: 1s
    reconnect_delay: 0.05s
    reconnect_max: 0.2s
    tls: {tls}
rules:
  - name: all
    providers: [smsc]
"""


@pytest.fixture
async def tls_smsc(tmp_path: Path) -> AsyncIterator[tuple[FakeSMSC, Path]]:
    ca_path, ca_key, ca_cert = make_ca(tmp_path, "good")
    async with FakeSMSC(tls=server_context(tmp_path, ca_key, ca_cert)) as fake:
        yield fake, ca_path


def message() -> Message:
    return Message(to=TO, text="Your code is 123456", category="otp")


async def test_binds_and_sends_over_tls_with_the_ca(tls_smsc: tuple[FakeSMSC, Path]) -> None:
    smsc, ca = tls_smsc
    smsc.receipts("DELIVRD")
    async with Router(config(smsc.port, f"{{ca: '{ca}'}}"), metrics=False) as router:
        assert router.dispatcher.links()["smsc"].up == 1
        result = await router.send(message())
        assert result.ok
        await smsc.answered(1)
    assert smsc.messages[0].text == "Your code is 123456"
    assert smsc.unbinds == 1


async def test_a_ca_that_did_not_sign_it_fails_the_bind_in_words(
    tls_smsc: tuple[FakeSMSC, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    smsc, _ = tls_smsc
    other, _, _ = make_ca(tmp_path, "other")
    caplog.set_level(logging.WARNING, "smsroute")
    async with Router(config(smsc.port, f"{{ca: '{other}'}}"), metrics=False) as router:
        links = router.dispatcher.links()["smsc"]
        result = await router.send(message())
    assert (links.up, smsc.binds) == (0, 0)
    problem = links.problems[0]
    assert problem.startswith("TLS: the SMSC's certificate is not trusted (")
    assert "tls: {ca: path}" in problem
    attempt = result.attempts[0]
    assert attempt.outcome is Outcome.TRANSIENT
    assert "not trusted" in (attempt.detail or "")
    assert any("not trusted" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)  # words, no traceback


async def test_tls_against_a_plain_port_says_so(tmp_path: Path) -> None:
    ca, _, _ = make_ca(tmp_path, "good")
    async with FakeSMSC() as smsc:  # no TLS
        router = Router(config(smsc.port, f"{{ca: '{ca}'}}"), metrics=False)
        async with router:
            links = router.dispatcher.links()["smsc"]
    assert links.up == 0
    assert links.problems == (
        "cannot bind: no answer within 1s (tls is on: does this port speak TLS?)",
    )


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        config(2775, f"{{ca: '{ca}'}}")
    text = str(info.value)
    assert "tls" in text
    assert "is not a readable PEM CA bundle" in text
    assert "Traceback" not in text


async def test_a_relative_ca_is_read_from_the_config_files_directory(
    tls_smsc: tuple[FakeSMSC, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tls: {ca: certs/ca.pem}`` next to the config, whatever the current directory."""
    smsc, ca = tls_smsc
    here = tmp_path / "etc" / "smsroute"
    (here / "certs").mkdir(parents=True)
    (here / "certs" / "ca.pem").write_bytes(ca.read_bytes())
    source = here / "smsroute.yaml"
    source.write_text(
        config_text(smsc.port, "{ca: certs/ca.pem}").replace("password: secret", "password: ${PW}")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_config(source, environ={"PW": "secret"})
    assert loaded.providers["smsc"].options["tls"] == {"ca": str(here / "certs" / "ca.pem")}
    async with Router(loaded, metrics=False) as router:
        assert router.dispatcher.links()["smsc"].up == 1
        assert (await router.send(message())).ok
    assert smsc.messages[0].text == "Your code is 123456"


def test_a_relative_ca_missing_next_to_the_config_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "smsroute.yaml"
    source.write_text(config_text(2775, "{ca: certs/ca.pem}"))
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(ConfigError) as info:
        load_config(source)
    text = str(info.value)
    assert f"smsroute.yaml:{_line_of(source, 'tls:')}" in text
    assert "certs/ca.pem" in text
    assert "is not a readable PEM CA bundle (No such file or directory)" in text
    assert "Traceback" not in text


def _line_of(file: Path, needle: str) -> int:
    return next(n for n, line in enumerate(file.read_text().splitlines(), 1) if needle in line)


# Printable text: what YAML itself refuses is another test's (test_config_hostile.py).
_TEXT = st.characters(categories=["L", "N", "P", "S", "Zs"])
_TLS_VALUES = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(),
    st.text(_TEXT, max_size=20),
    st.dictionaries(
        st.sampled_from(["ca", "cert", "verify"]),
        st.one_of(st.text(_TEXT, max_size=30), st.integers(), st.booleans()),
        max_size=2,
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_TLS_VALUES)
def test_any_tls_value_loads_or_is_one_config_error(value: object) -> None:
    """Whatever ``tls`` holds: a config, or a ConfigError naming ``tls`` (never a traceback)."""
    options = {
        "type": "smpp",
        "host": "127.0.0.1",
        "system_id": "smsroute",
        "password": "secret",
        "from": "ACME",
        "tls": value,
    }
    source = json.dumps(
        {"providers": {"smsc": options}, "rules": [{"name": "all", "providers": ["smsc"]}]},
        ensure_ascii=False,
    )
    problem: ConfigError | None = None
    try:
        loaded = parse_config(source)
    except ConfigError as exc:
        problem = exc
    if problem is not None:
        assert "tls" in str(problem)
        assert "Traceback" not in str(problem)
    else:
        assert loaded.providers["smsc"].options.get("tls") == value
