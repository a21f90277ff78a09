"""The C2PA manifest of every MP4 emote writes, signed offline, and its reading back.

What the manifest says (C2PA 2.x, through ``c2pa-python``, whose wheel carries the native
library: nothing is fetched): a ``c2pa.actions`` assertion with ``c2pa.created`` whose
``digitalSourceType`` is IPTC's ``trainedAlgorithmicMedia``, the software agent (emote-edge
and its version); when the frames carry the watermark, a ``c2pa.watermarked`` action and the
``c2pa.soft-binding`` assertion naming it (``alg`` = WATERMARK_ALG, ``value`` = its payload's
bytes in base64), which C2PA requires for that action.

The signature: ES256 with a certificate chain emote makes on first use under the user's
config folder (``$XDG_CONFIG_HOME/emote/c2pa``, else ``~/.config/emote/c2pa``: a local CA and
a signing certificate under it, the key readable by the user only), or the user's own
(``$EMOTE_C2PA_CERT``: PEM chain, signing certificate first; ``$EMOTE_C2PA_KEY``: its PEM
key). Offline, so no time-stamp authority countersigns: the claim is valid while the signing
certificate is (10 years for the one made here), and a verifier reports the local CA as
untrusted unless given it as a trust anchor (``ca.pem`` in that folder).

Any re-encode or even a remux (``ffmpeg -c copy``) drops the manifest: the watermark is the
layer that survives.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmoteError
from ..folders import write_atomic

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
WATERMARK_ALG = "org.emote-edge.luma-tile-ss.1"  # the watermark of watermark.py, version 1
GENERATOR = "emote-edge"
CERT_ENV, KEY_ENV = "EMOTE_C2PA_CERT", "EMOTE_C2PA_KEY"
CERT_YEARS = 10


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emote-edge")
    except PackageNotFoundError:
        return "0+unknown"


def config_folder() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "emote" / "c2pa"


def _make_chain(folder: Path) -> None:
    """A local CA (EC P-256) and a signing certificate under it (digitalSignature, emailProtection
    EKU: what C2PA's certificate profile accepts), written whole into ``folder``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "emote-edge (local)")])

    def usage(**on) -> x509.KeyUsage:
        fields = (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        )
        return x509.KeyUsage(**{f: on.get(f, False) for f in fields}, encipher_only=False, decipher_only=False)

    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=365 * CERT_YEARS)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("emote-edge local C2PA CA"))
        .issuer_name(name("emote-edge local C2PA CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("emote-edge signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "ca.pem", ca.public_bytes(pem))
    write_atomic(folder / "chain.pem", leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_bytes = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(folder / "signer.key", key_bytes)
    (folder / "signer.key").chmod(0o600)


def signing_credentials() -> tuple[bytes, bytes, str]:
    """(PEM chain, PEM key, where they came from): the user's ($EMOTE_C2PA_CERT/KEY), else the local chain (made on first use)."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if cert or key:
        if not (cert and key):
            raise EmoteError(f"set both ${CERT_ENV} (PEM certificate chain) and ${KEY_ENV} (its PEM key), or neither")
        try:
            return Path(cert).read_bytes(), Path(key).read_bytes(), cert
        except OSError as e:
            raise EmoteError(f"cannot read the C2PA signing certificate or key: {e}") from None
    folder = config_folder()
    if not (folder / "chain.pem").is_file() or not (folder / "signer.key").is_file():
        try:
            _make_chain(folder)
        except OSError as e:
            raise EmoteError(f"cannot make the C2PA signing certificate in {folder}: {e}") from None
    return (folder / "chain.pem").read_bytes(), (folder / "signer.key").read_bytes(), str(folder / "chain.pem")


def manifest_definition(title: str, watermark: bytes | None) -> dict:
    """The manifest emote signs: created by a trained model; watermarked (and its soft binding) when it is."""
    agent = {"name": GENERATOR, "version": _version()}
    actions = [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA, "softwareAgent": agent}]
    assertions = []
    if watermark is not None:
        actions.append(
            {
                "action": "c2pa.watermarked",
                "softwareAgent": agent,
                "parameters": {"description": "invisible luma watermark (emote detect reads it)"},
            }
        )
        value = base64.b64encode(watermark).decode()
        assertions.append({"label": "c2pa.soft-binding", "data": {"alg": WATERMARK_ALG, "blocks": [{"scope": {}, "value": value}]}})
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": "video/mp4",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}, *assertions],
    }


def sign_mp4(source: str | Path, dest: str | Path, title: str, watermark: bytes | None) -> None:
    """``source`` (an MP4) copied to ``dest`` with the signed manifest embedded."""
    import c2pa

    chain, key, origin = signing_credentials()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
        with c2pa.Builder(manifest_definition(title, watermark)) as builder, open(source, "rb") as src, open(dest, "w+b") as dst:
            builder.sign(signer, "video/mp4", src, dst)
    except c2pa.C2paError as e:
        raise EmoteError(f"C2PA signing with {origin} failed: {e}") from None


@dataclass(frozen=True)
class ManifestReport:
    state: str  # "valid", "invalid" or "absent"
    generated: bool  # a c2pa.created action with trainedAlgorithmicMedia
    generator: str | None
    watermark_alg: str | None
    detail: list[str]  # failure codes (invalid) or informational ones (signer untrusted, ...)

    def as_dict(self) -> dict:
        return {
            "state": self.state,
            "trained_algorithmic_media": self.generated,
            "generator": self.generator,
            "soft_binding": self.watermark_alg,
            "notes": self.detail,
        }


def read_manifest(path: str | Path) -> ManifestReport:
    """The file's C2PA manifest, validated by c2pa-python's reader (no trust list: a local or
    unknown signer is reported, not failed)."""
    import c2pa

    try:
        with open(path, "rb") as f:
            reader = c2pa.Reader.try_create("video/mp4", f)
            if reader is None:
                return ManifestReport("absent", False, None, None, [])
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "ManifestNotFound" in type(e).__name__ or "JUMBF" in text:
            return ManifestReport("absent", False, None, None, [])
        return ManifestReport("invalid", False, None, None, [text])
    state = str(store.get("validation_state", "")).lower()
    codes = [s.get("code", "") for s in store.get("validation_status") or []]
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    generated, generator, alg = False, None, None
    for a in manifest.get("assertions") or []:
        label, data = a.get("label", ""), a.get("data") or {}
        if label.startswith("c2pa.actions"):
            for act in data.get("actions") or []:
                if act.get("action") == "c2pa.created" and act.get("digitalSourceType") == TRAINED_ALGORITHMIC_MEDIA:
                    generated = True
                    agent = act.get("softwareAgent")
                    generator = agent.get("name") if isinstance(agent, dict) else agent
        elif label == "c2pa.soft-binding":
            alg = data.get("alg")
    valid = state in ("valid", "trusted")
    return ManifestReport("valid" if valid else "invalid", generated, generator, alg, codes)
