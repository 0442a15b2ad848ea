#!/usr/bin/env python3
"""A TCP proxy that delays every chunk the client sends by a fixed latency,
so each API call to the server behind it takes that much longer: a stand-in
for the round trip to a real AWS region, in front of moto.

usage: latency_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS
"""
import asyncio
import sys

listen_port, host, port, delay_ms = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
delay = delay_ms / 1000.0


async def pipe(reader, writer, wait):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if wait:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pipe(client_reader, server_writer, True),
        pipe(server_reader, client_writer, False),
    )


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
