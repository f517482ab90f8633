"""A load server for bench/opcua.py: N Double variables under Objects/Bench (namespace
urn:linetap:bench), every one written every `--every` seconds with a source timestamp. Prints
READY once listening and every variable exists."""
import argparse
import asyncio
import datetime
import logging

from asyncua import Server, ua


async def main(a):
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:linetap:bench")
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
    nodes = [await folder.add_variable(ua.NodeId(f"v{i}", ns), ua.QualifiedName(f"v{i}", ns), 0.0, ua.VariantType.Double)
             for i in range(a.items)]
    async with server:
        print("READY", flush=True)
        n = 0
        while True:
            started = asyncio.get_running_loop().time()
            n += 1
            now = datetime.datetime.now(datetime.timezone.utc)
            for i, node in enumerate(nodes):
                await node.write_value(ua.DataValue(ua.Variant(float(n * 10000 + i), ua.VariantType.Double),
                                                    SourceTimestamp=now))
            await asyncio.sleep(max(0.0, a.every - (asyncio.get_running_loop().time() - started)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--every", type=float, default=1.0)
    asyncio.run(main(p.parse_args()))
