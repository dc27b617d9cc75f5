"""A self-signed TLS certificate made at start, for `serve --lan`.

Browsers grant the camera and microphone (getUserMedia) only to secure contexts: https, or
http on localhost. A phone reaching this machine over the LAN therefore needs https; there is
no certificate authority for a LAN address, so the server makes its own certificate (valid 30
days, never written outside a private temporary folder) and prints its fingerprint, which the
user can compare with the one the phone's browser shows in its warning.
"""

import ipaddress
import ssl
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..errors import Phi4MMError

VALID_DAYS = 30


def self_signed_context(hosts: list[str]) -> tuple[ssl.SSLContext, str]:
    """A server SSLContext for a new certificate naming `hosts` (IP addresses or DNS names),
    and the certificate's SHA-256 fingerprint as colon-separated hex."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise Phi4MMError('serve --lan needs the cryptography package: pip install -e ".[serve]" in the phi4mm-edge folder') from None

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phi4mm-edge serve")])
    alternative_names = []
    for host in dict.fromkeys(hosts):
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative_names.append(x509.DNSName(host))
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a phone's clock running a little behind
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only; the key lives on disk just long enough to be read.
    with tempfile.TemporaryDirectory(prefix="phi4mm-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context.load_cert_chain(cert_path, key_path)
    return context, certificate.fingerprint(hashes.SHA256()).hex(":").upper()
