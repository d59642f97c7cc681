"""Whether a component's instance is healthy, from its health URL (``/readyz`` for kube-apiserver, ``/health``
for etcd, ``/healthz`` for the others): HTTP 200 within a few seconds, at that URL itself (a redirect is
not followed: a health URL names the one thing to fetch). TLS is verified with the CA bundle
the consumer table names for the component, from the agent's own files, and a client pair is presented
where the component asks for one (etcd)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from pathlib import Path

import aiohttp

from clusterpki.agent import consumers
from clusterpki.agent.restarters import RestartFailed
from clusterpki.kube.reports import RestartReason

TIMEOUT = 3.0  # seconds for one probe


async def problem(component: str, url: str, out: Path) -> str | None:
    """Why the instance at ``url`` is not healthy, or None when it is."""
    status, why = await _probe(component, url, out)
    if status == 200:
        return None
    return f"{url} answers HTTP {status}" if status is not None else f"{url} does not answer ({why})"


async def stays_healthy(component: str, url: str, out: Path, duration: float, deadline: float,
                        within: float) -> None:
    """Return once the instance at ``url`` has been healthy for ``duration`` seconds in a row (a component
    may answer once and exit); RestartFailed when it is still not healthy once the event loop's clock
    passes ``deadline``, ``within`` seconds after its restart."""
    clock = asyncio.get_running_loop().time
    since: float | None = None
    while since is None or clock() - since < duration:
        found = await problem(component, url, out)
        if found is None:
            since = since or clock()
        else:
            since = None
            if clock() > deadline:
                raise RestartFailed(f"{component} is not healthy {within:g}s after its restart: {found}",
                                    RestartReason.UNHEALTHY)
        await asyncio.sleep(0.5)


async def down(url: str, probes: int = 3, interval: float = 1.0) -> bool:
    """Whether nothing listens at ``url``'s address: every one of ``probes`` connections, ``interval``
    apart, is refused. An instance that is slow, unhealthy or refuses TLS still listens: not down."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    for probe in range(probes):
        if probe:
            await asyncio.sleep(interval)
        try:
            async with asyncio.timeout(TIMEOUT):
                _, writer = await asyncio.open_connection(parsed.hostname, port)
        except ConnectionRefusedError:
            continue
        except OSError:  # TimeoutError among them
            return False
        writer.close()
        return False
    return True


async def _probe(component: str, url: str, out: Path) -> tuple[int | None, str]:
    """The HTTP status ``url`` answers with, or None and why it does not answer."""
    try:
        context = _context(component, out) if url.startswith("https:") else None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context if context else False)) as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT), allow_redirects=False) as response:
                return response.status, ""
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        return None, type(exc).__name__


def _context(component: str, out: Path) -> ssl.SSLContext:
    consumer = consumers.BY_COMPONENT[component]
    if consumer.health_ca is None:  # serves a self-signed certificate of its own
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(out / consumer.health_ca))
        context.check_hostname = False  # members are probed by address; the chain is what matters
    if consumer.health_client is not None:
        context.load_cert_chain(str(out / f"{consumer.health_client}.crt"), str(out / f"{consumer.health_client}.key"))
    return context
