"""An OPC UA server linetap did not write, for tests/opcua.rs: Python asyncua.

    python opcua_server.py --port P --pki DIR [--generation N] [--secure] [--robots N]
                           [--recreate-after S]

Serves, in namespace urn:linetap:test under Objects/Plant, one variable of every basic type
with a known value (and arrays), a counter that steps every 100 ms with source timestamps on a
known grid, a variable whose status is Bad and one whose status is Uncertain. The node ids
carry the generation (`s=g1.Double`): a restart with another generation is a controller
download that changed every node id while the browse paths stayed. `--secure` offers only
Basic256Sha256 SignAndEncrypt with user `linetap` / password `secret`; the server's certificate
lives in DIR (a new DIR is a new certificate). `--robots N` adds an OPC 40010 motion device
system with N motion devices (`robots()` below: the values tests/opcua.rs expects).
`--recreate-after S` deletes Plant/Counter S seconds after READY and creates it again under the
same browse path with a new node id (`s=gN.Counter.2`), as an online change does; asyncua tells
no subscriber that the old node went. Prints READY once it listens.
"""
import argparse
import asyncio
import datetime
import ipaddress
import logging
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from asyncua import Server, ua
from asyncua.crypto.cert_gen import (dump_private_key_as_pem, generate_private_key,
                                     generate_self_signed_app_certificate)
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

NS = "urn:linetap:test"
APP_URI = "urn:linetap:test-server"
# The counter's source timestamps: 2026-01-01T00:00:00Z + n x 100 ms.
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


class Users(UserManager):
    def __init__(self, secure):
        self.secure = secure

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return None if self.secure else User(role=UserRole.User)
        if username == "linetap" and password == "secret":
            return User(role=UserRole.User, name=username)
        return None


def certificate(pki: Path):
    pki.mkdir(parents=True, exist_ok=True)
    key, cert = pki / "server_key.pem", pki / "server_cert.der"
    if not cert.exists():
        pkey = generate_private_key()
        key.write_bytes(dump_private_key_as_pem(pkey))
        c = generate_self_signed_app_certificate(
            pkey, APP_URI,
            {"countryName": "DE", "organizationName": "linetap", "commonName": "linetap test server"},
            [x509.UniformResourceIdentifier(APP_URI), x509.DNSName("localhost"),
             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            days=365,
        )
        cert.write_bytes(c.public_bytes(serialization.Encoding.DER))
    return key, cert


DI = "http://opcfoundation.org/UA/DI/"
ROBOTICS = "http://opcfoundation.org/UA/Robotics/"
VENDOR = "urn:linetap:test-robot"
# DurationString (ns=0): TotalPowerOnTime's DataType.
DURATION_STRING = ua.NodeId(12879, 0)


async def robots(server, count):
    """Objects/DeviceSet/Cell7, an OPC 40010 MotionDeviceSystem with the spec's browse names
    (instances named by the vendor): `count` motion devices Arm1.., two axes J1, J2 each; the
    power trains are listed in the reverse order of the axes and linked to them by IsDrivenBy
    (so a motor's temperature is its axis's only when the references are followed). Optional
    variables left out: ActualAcceleration of J2."""
    di = await server.register_namespace(DI)
    r = await server.register_namespace(ROBOTICS)
    v = await server.register_namespace(VENDOR)
    V = ua.VariantType
    R = lambda name: ua.QualifiedName(name, r)
    objects = server.nodes.objects
    is_driven_by = await server.get_node(ua.ObjectIds.NonHierarchicalReferences).add_reference_type(
        ua.NodeId(4002, r), R("IsDrivenBy"), symmetric=False, inversename="Moves")
    device_set = await objects.add_folder(ua.NodeId(5001, di), ua.QualifiedName("DeviceSet", di))
    system = await device_set.add_object(ua.NodeId("Cell7", v), ua.QualifiedName("Cell7", v))

    async def params(parent, key, values):
        ps = await parent.add_object(ua.NodeId(key + ".ParameterSet", v), ua.QualifiedName("ParameterSet", di))
        for name, value, vt, *dt in values:
            await ps.add_variable(ua.NodeId(f"{key}.{name}", v), R(name), value, vt,
                                  datatype=dt[0] if dt else None)

    devices = await system.add_folder(ua.NodeId("Cell7.MotionDevices", v), R("MotionDevices"))
    for k in range(1, count + 1):
        key = f"Arm{k}"
        arm = await devices.add_object(ua.NodeId(key, v), ua.QualifiedName(key, v))
        # Arm1 runs at 75 %, in control and on its path; Arm2 stands at 20 %.
        running = k == 1
        await params(arm, key, [("SpeedOverride", 75.0 if running else 20.0, V.Double),
                                ("InControl", running, V.Boolean), ("OnPath", running, V.Boolean)])
        axes = await arm.add_folder(ua.NodeId(key + ".Axes", v), R("Axes"))
        trains = await arm.add_folder(ua.NodeId(key + ".PowerTrains", v), R("PowerTrains"))
        joints = {}
        for j, (pos, speed, acc) in (("J1", (0.5 * k, 0.1 * k, 0.01)), ("J2", (-1.25 * k, -0.2, None))):
            axis = await axes.add_object(ua.NodeId(f"{key}.{j}", v), ua.QualifiedName(j, v))
            values = [("ActualPosition", pos, V.Double), ("ActualSpeed", speed, V.Double)]
            if acc is not None:
                values.append(("ActualAcceleration", acc, V.Double))
            await params(axis, f"{key}.{j}", values)
            joints[j] = axis
        for j, temp in (("J2", 41.5 + k), ("J1", 38.0 + k)):
            pt = await trains.add_object(ua.NodeId(f"{key}.PT_{j}", v), ua.QualifiedName(f"PT_{j}", v))
            gear = await pt.add_object(ua.NodeId(f"{key}.PT_{j}.Gear", v), ua.QualifiedName("Gear", v))
            await params(gear, f"{key}.PT_{j}.Gear", [("GearRatio", 100.0, V.Double)])
            motor = await pt.add_object(ua.NodeId(f"{key}.PT_{j}.Motor", v), ua.QualifiedName("Motor", v))
            await params(motor, f"{key}.PT_{j}.Motor", [("MotorTemperature", temp, V.Double),
                                                         ("BrakeReleased", True, V.Boolean)])
            await joints[j].add_reference(pt, is_driven_by)
    controllers = await system.add_folder(ua.NodeId("Cell7.Controllers", v), R("Controllers"))
    ctrl = await controllers.add_object(ua.NodeId("Ctrl", v), ua.QualifiedName("Ctrl", v))
    await params(ctrl, "Ctrl", [("TotalPowerOnTime", "P12DT3H25M7S", V.String, DURATION_STRING),
                                ("Temperature", 36.5, V.Double)])
    tasks = await ctrl.add_folder(ua.NodeId("Ctrl.TaskControls", v), R("TaskControls"))
    task = await tasks.add_object(ua.NodeId("Task1", v), ua.QualifiedName("Task1", v))
    await params(task, "Task1", [("TaskProgramName", "WELD_A7", V.String),
                                 ("TaskProgramLoaded", True, V.Boolean), ("ExecutionMode", 1, V.Int32)])
    safety_states = await system.add_folder(ua.NodeId("Cell7.SafetyStates", v), R("SafetyStates"))
    safety = await safety_states.add_object(ua.NodeId("Safety", v), ua.QualifiedName("Safety", v))
    await params(safety, "Safety", [("OperationalMode", 3, V.Int32), ("EmergencyStop", False, V.Boolean),
                                    ("ProtectiveStop", False, V.Boolean)])


async def main(a):
    key, cert = certificate(a.pki)
    server = Server(user_manager=Users(a.secure))
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/")
    server.set_server_name("linetap test server")
    await server.set_application_uri(APP_URI)
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    if a.secure:
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_identity_tokens([ua.UserNameIdentityToken])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
    ns = await server.register_namespace(NS)
    g = f"g{a.generation}."
    plant = await server.nodes.objects.add_object(ua.NodeId(g + "Plant", ns), ua.QualifiedName("Plant", ns))
    V = ua.VariantType
    scalars = {
        "Boolean": (True, V.Boolean), "SByte": (-8, V.SByte), "Byte": (200, V.Byte),
        "Int16": (-16000, V.Int16), "UInt16": (65000, V.UInt16), "Int32": (-2000000000, V.Int32),
        "UInt32": (4000000000, V.UInt32), "Int64": (-9000000000000000000, V.Int64),
        "UInt64": (9000000000000000000, V.UInt64), "Float": (1.5, V.Float),
        "Double": (2.25, V.Double), "String": ("hello, robot", V.String),
    }
    for name, (value, vt) in scalars.items():
        await plant.add_variable(ua.NodeId(g + name, ns), ua.QualifiedName(name, ns), value, vt)
    await plant.add_variable(ua.NodeId(g + "DoubleArray", ns), ua.QualifiedName("DoubleArray", ns),
                             [1.5, -2.5, 3.25], V.Double)
    await plant.add_variable(ua.NodeId(g + "Int32Array", ns), ua.QualifiedName("Int32Array", ns),
                             [7, -7, 70000], V.Int32)
    counter = await plant.add_variable(ua.NodeId(g + "Counter", ns), ua.QualifiedName("Counter", ns), 0.0, V.Double)
    broken = await plant.add_variable(ua.NodeId(g + "Broken", ns), ua.QualifiedName("Broken", ns), 1.0, V.Double)
    doubtful = await plant.add_variable(ua.NodeId(g + "Doubtful", ns), ua.QualifiedName("Doubtful", ns), 1.0, V.Double)
    if a.robots:
        await robots(server, a.robots)
    async with server:
        n = int((datetime.datetime.now(datetime.timezone.utc) - EPOCH).total_seconds() * 10)
        ready = False
        recreate_at = None
        while True:
            if ready:
                await asyncio.sleep(0.1)
            if recreate_at is not None and asyncio.get_running_loop().time() >= recreate_at:
                recreate_at = None
                await server.delete_nodes([counter], recursive=True)
                counter = await plant.add_variable(ua.NodeId(g + "Counter.2", ns),
                                                   ua.QualifiedName("Counter", ns), 0.0, V.Double)
                print("RECREATED", flush=True)
            n += 1
            when = EPOCH + datetime.timedelta(milliseconds=100 * n)
            await counter.write_value(ua.DataValue(ua.Variant(float(n), V.Double), SourceTimestamp=when))
            await broken.write_value(ua.DataValue(ua.Variant(float(n), V.Double),
                                                  StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                                                  SourceTimestamp=when))
            await doubtful.write_value(ua.DataValue(ua.Variant(float(n), V.Double),
                                                    StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
                                                    SourceTimestamp=when))
            if not ready:
                # Every variable has its value and status before anyone is told to connect.
                print("READY", flush=True)
                ready = True
                if a.recreate_after:
                    recreate_at = asyncio.get_running_loop().time() + a.recreate_after


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pki", type=Path, required=True)
    p.add_argument("--generation", type=int, default=1)
    p.add_argument("--secure", action="store_true")
    p.add_argument("--robots", type=int, default=0)
    p.add_argument("--recreate-after", type=float, default=0)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
