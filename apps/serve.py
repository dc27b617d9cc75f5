"""`phi4mm-edge serve [ARTIFACT]`: a local web page to ask with text, a camera snapshot or a
microphone recording, the answer streamed into the page.

The server is aiohttp: one well-kept package (aio-libs) that is at once the HTTP server, the
multipart parser with streamed reads (so upload limits are enforced while reading), the
streamed response and TLS (through Python's ssl), where Starlette would need uvicorn and
python-multipart beside it. The page is plain HTML/JS/CSS in apps/web/: no build step, no CDN.

By default it listens on 127.0.0.1 only, over http (localhost is a secure context, so the
camera and microphone work). `--lan` opens it to the local network: https with a certificate
made at start (phones grant the camera and microphone only to secure contexts), a random access
token in the printed URL and QR code, and requests from non-local addresses refused.
"""

import asyncio
import ipaddress
import secrets
import socket

from ..errors import Phi4MMError
from .arguments import FAST_MAX_CROPS, FAST_MAX_CROPS_WHY, add_max_crops_argument, add_model_arguments
from .startup import generation_options, load_model, positive_number, restore_ctrl_c

DEFAULT_PORT = 8000
WILDCARD_HOSTS = ("0.0.0.0", "::")


def add_arguments(parser) -> None:
    """The model options every app takes, --max-crops (fast by default: phone photos), then serve's own."""
    add_model_arguments(parser)
    add_max_crops_argument(parser, FAST_MAX_CROPS, FAST_MAX_CROPS_WHY)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; with --lan, all addresses)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = any free port")
    parser.add_argument("--lan", action="store_true",
                        help="open to the local network: https (self-signed), an access token, a QR code")
    parser.add_argument("--max-image-mb", type=float, default=10.0, help="largest photo accepted (default 10 MB)")
    parser.add_argument("--max-record-seconds", type=float, default=30.0,
                        help="longest recording accepted (default 30 s)")
    parser.add_argument("--max-queue", type=int, default=8,
                        help="requests waiting or answering at once (default 8); "
                             "more are refused with 503 and Retry-After")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def lan_address() -> str | None:
    """This machine's address on its local network, or None."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        addresses = set()
    private = sorted(a for a in addresses if ipaddress.ip_address(a).is_private
                     and not ipaddress.ip_address(a).is_loopback)
    if private:
        return private[0]
    # Many systems map their hostname to 127.0.1.1: ask the routing table instead. connect() on a
    # UDP socket sends nothing; 192.0.2.1 is a documentation address (RFC 5737), never a real host.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return address if ipaddress.ip_address(address).is_private else None


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, dualstack_ipv6=host == "::", reuse_port=False)
    except OSError as error:
        raise Phi4MMError(f"cannot listen on {host}:{port} ({error.strerror}): "
                          f"choose another --port, or 0 for any free port") from None


def print_lan_access(url: str, fingerprint: str) -> None:
    print(f"open on a phone or computer on this network: {url}")
    try:
        import segno
    except ImportError:
        print('(pip install -e ".[serve]" in the phi4mm-edge folder to show it as a QR code)')
    else:
        segno.make(url, error="m").terminal(compact=True)
    print("the certificate is self-signed, made now: the browser warns once; accept it if its SHA-256 "
          f"fingerprint is\n  {fingerprint}")
    print("anyone with this URL can use the model; stop the server (Ctrl+C) to revoke it", flush=True)


async def _serve_forever(model, settings, sock, ssl_context) -> None:
    from aiohttp import web

    from .web_app import make_app, make_runner

    runner = make_runner(make_app(model, settings))
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(args) -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise Phi4MMError('serve needs aiohttp: pip install -e ".[serve]" in the phi4mm-edge folder') from None
    from .server_state import ServeSettings

    host = args.host or ("0.0.0.0" if args.lan else "127.0.0.1")
    if not args.lan and not _is_loopback(host):
        raise Phi4MMError(f"--host {host} would open the model to the network without a token: add --lan")
    restore_ctrl_c()  # Ctrl-C stops the server even when started as a background job's child
    positive_number(args.max_image_mb, "--max-image-mb")
    positive_number(args.max_record_seconds, "--max-record-seconds")
    if args.max_queue < 1:
        raise Phi4MMError(f"--max-queue {args.max_queue}: give at least 1")
    if args.max_new_tokens < 1:
        raise Phi4MMError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    if not 0 <= args.port <= 65535:
        raise Phi4MMError(f"--port {args.port}: give a port number in 0..65535 (0 = any free port)")

    model = load_model(args)

    sock = listening_socket(host, args.port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(16) if args.lan else None
    ssl_context, fingerprint = None, None
    shown_host = host
    if args.lan:
        from .tls import self_signed_context

        shown_host = lan_address() if host in WILDCARD_HOSTS else host
        if shown_host is None:
            raise Phi4MMError("no local network address found: connect to a network, or give --host ADDRESS")
        ssl_context, fingerprint = self_signed_context([shown_host, "localhost", "127.0.0.1"])
    settings = ServeSettings(max_image_bytes=int(args.max_image_mb * 1e6), max_record_seconds=args.max_record_seconds,
                             options=generation_options(args), token=token, tls=args.lan,
                             model_name=model.folder.name, random_weights=args.random_weights,
                             max_queue=args.max_queue)
    address = f"[{shown_host}]" if ":" in shown_host else shown_host
    if args.lan:
        print_lan_access(f"https://{address}:{port}/?token={token}", fingerprint)
    else:
        print(f"serving on http://{address}:{port}/ (Ctrl+C stops it)", flush=True)
    asyncio.run(_serve_forever(model, settings, sock, ssl_context))
