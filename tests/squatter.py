"""A port squatter: listens where a stack server should, and records every byte it is sent.

Run as a subprocess (``python -m tests.squatter RECORD [--tcp HOST:PORT]... [--unix PATH]...``),
it prints ``ready`` once every listener is bound. To a PostgreSQL client it plays a server
that asks for a cleartext password (declining TLS first), which is how a squatter obtains one
from a client that answers; everything else (Redis' HELLO AUTH, HTTP Basic credentials) a
client sends unasked. Having recorded what a client sent past that negotiation, it hangs up.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from pathlib import Path

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104
PROTOCOL_3 = 196608
CLEARTEXT_PASSWORD_REQUEST = b"R" + struct.pack("!ii", 8, 3)
READ_TIMEOUT_S = 5.0


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, data: bytes) -> None:
        with self.path.open("ab") as record:
            record.write(data)


async def serve(
    recorder: Recorder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S)
            if not data:
                return
            recorder.write(data)
            length, code = struct.unpack("!ii", data[:8]) if len(data) >= 8 else (0, 0)
            if length == 8 and code in (SSL_REQUEST, GSS_REQUEST):
                writer.write(b"N")  # no TLS: go on in the clear
            elif code == PROTOCOL_3:
                writer.write(CLEARTEXT_PASSWORD_REQUEST)
            else:
                return
            await writer.drain()
    except (TimeoutError, ConnectionError):
        return
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("record", type=Path)
    parser.add_argument("--tcp", action="append", default=[])
    parser.add_argument("--unix", action="append", default=[])
    options = parser.parse_args()
    recorder = Recorder(options.record)
    recorder.write(b"")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(recorder, reader, writer)

    servers = []
    for address in options.tcp:
        host, port = address.rsplit(":", 1)
        servers.append(await asyncio.start_server(handle, host, int(port), reuse_address=True))
    for path in options.unix:
        servers.append(await asyncio.start_unix_server(handle, path))
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
