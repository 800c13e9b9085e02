#!/usr/bin/env python3
"""Generate the binary back-compat fixtures in this directory.

The fixtures are protobuf wire-format messages encoded by an independent encoder
(Google's Python protobuf runtime, upb backend) from .proto files describing
OLDER shapes of the Telemetry Gateway protocol (./proto/*.proto). They are then
decoded with the NEWEST proto (proto/telemetrygateway/v1/telemetrygateway.proto
at the repository root) and rendered as canonical proto3 JSON into
expected.json, which the Rust tests use as an oracle.

Nothing here uses the Rust code.

Set-up used to produce the checked-in files (Python 3.11.7):

    python3 -m venv /tmp/bcvenv
    /tmp/bcvenv/bin/pip install grpcio-tools==1.85.1 protobuf==7.36.2
    #   (this also pulls grpcio==1.85.1 and typing_extensions==4.16.0;
    #    grpcio-tools bundles protoc, reported as libprotoc 35.1)

Run from anywhere:

    /tmp/bcvenv/bin/python testdata/backcompat/generate.py          # (re)write the fixtures
    /tmp/bcvenv/bin/python testdata/backcompat/generate.py --check  # fail if files differ

The script compiles the protos with `python -m grpc_tools.protoc` into a
throw-away temporary directory (descriptor sets, --include_imports), loads each
shape into its own DescriptorPool, builds the messages field by field (not via
the JSON parser, to keep the encoder and the JSON oracle independent), and
serialises them with deterministic=True (map entries sorted by key), so the
output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import google.protobuf
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.unknown_fields import UnknownFieldSet

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NEWEST_PROTO_ROOT = REPO / "proto"
NEWEST_PROTO = "telemetrygateway/v1/telemetrygateway.proto"
OLD_PROTO_ROOT = HERE / "proto"

SHAPE_2023_10 = "2023-10-shape.proto"
SHAPE_2023_11 = "2023-11-shape.proto"
SHAPE_NEWEST = "newest"

PKG = {
    SHAPE_2023_10: "telemetrygateway.v1.shape20231024",
    SHAPE_2023_11: "telemetrygateway.v1.shape20231116",
    SHAPE_NEWEST: "telemetrygateway.v1",
}

# 2023-10-24T12:34:56.789Z
TS_SECONDS = 1698150896
TS_NANOS = 789_000_000
TS_RFC3339 = "2023-10-24T12:34:56.789Z"


# ---------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------


def wkt_include_dir() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).resolve().parent / "_proto")


def compile_descriptor_set(tmp: Path, include_dir: Path, proto: str, out_name: str):
    out = tmp / out_name
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{include_dir}",
        f"-I{wkt_include_dir()}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        proto,
    ]
    subprocess.run(cmd, check=True)
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    return pool


class Shape:
    def __init__(self, pool: descriptor_pool.DescriptorPool, package: str):
        self.pool = pool
        self.package = package

    def cls(self, name: str):
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"{self.package}.{name}")
        )


# ---------------------------------------------------------------------------
# Fixture contents (documented value by value in README.md)
# ---------------------------------------------------------------------------


def set_ts(ev):
    ev.timestamp.seconds = TS_SECONDS
    ev.timestamp.nanos = TS_NANOS


def full_2023_10_event(s: Shape):
    """The rich old-shape event of 2023-10-24-event.pb."""
    ev = s.cls("Event")()
    ev.id = "0b9c7d3e-2a41-4c5f-8e6d-1f2a3b4c5d6e"
    set_ts(ev)
    ev.feature = "cody.completions"
    ev.action = "suggested"
    ev.source.server.version = "5.2.0"
    ev.source.client.name = "VSCODE_CODY_EXTENSION"
    ev.source.client.version = "0.14.1"
    ev.parameters.version = 1
    ev.parameters.metadata["latency"] = 123
    ev.parameters.metadata["count"] = 4
    pm = ev.parameters.private_metadata
    pm.fields["model"].string_value = "gpt"
    lst = pm.fields["nested"].struct_value.fields["x"].list_value
    lst.values.add().number_value = 1
    lst.values.add().string_value = "a"
    lst.values.add().bool_value = True
    lst.values.add().null_value = 0  # google.protobuf.NullValue.NULL_VALUE
    ev.parameters.billing_metadata.product = "cody"
    ev.parameters.billing_metadata.category = "core"
    ev.user.user_id = 42
    ev.user.anonymous_user_id = "anon-7f3c"
    ev.feature_flags.flags["flag-a"] = "true"
    ev.marketing_tracking.url = "https://sourcegraph.com/search"
    ev.marketing_tracking.first_source_url = "https://about.sourcegraph.com/"
    ev.marketing_tracking.cohort_id = "cohort-1"
    return ev


def minimal_2023_10_event(s: Shape):
    """Only id + timestamp + feature + action."""
    ev = s.cls("Event")()
    ev.id = "6a1f0c2d-9e8b-4a7c-b6d5-e4f3a2b1c0d9"
    set_ts(ev)
    ev.feature = "search"
    ev.action = "submitted"
    return ev


def private_metadata_2023_10_event(s: Shape):
    """Third event of the batch: a recordsPrivateMetadata* key, a negative and
    a beyond-2^53 int64, an unversioned (version 0) parameters message with an
    explicitly empty private_metadata Struct, and an anonymous-only user."""
    ev = s.cls("Event")()
    ev.id = "c3d4e5f6-a7b8-4c9d-8e0f-112233445566"
    set_ts(ev)
    ev.feature = "cody.chat"
    ev.action = "submitted"
    ev.source.server.version = "5.2.0"
    ev.source.client.name = "WEB"  # no client.version
    ev.parameters.metadata["recordsPrivateMetadataTranscript"] = 1
    ev.parameters.metadata["delta"] = -5
    ev.parameters.metadata["big"] = 9007199254740993  # 2^53 + 1
    ev.parameters.private_metadata.SetInParent()  # present but empty Struct
    ev.user.anonymous_user_id = "anon-only"
    return ev


def event_2023_11(s: Shape):
    """2023-11-16-event.pb: interaction + int64 metadata."""
    ev = s.cls("Event")()
    ev.id = "5f4e3d2c-1b0a-4f9e-8d7c-6b5a49382716"
    set_ts(ev)
    ev.feature = "cody.chatResponse"
    ev.action = "hasCode"
    ev.source.server.version = "5.2.3"
    ev.source.client.name = "JETBRAINS_CODY_EXTENSION"
    ev.source.client.version = "4.2.0"
    ev.parameters.version = 2
    ev.parameters.metadata["lineCount"] = 17
    ev.parameters.metadata["charCount"] = 512
    ev.user.user_id = 7
    ev.interaction.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    ev.interaction.interaction_id = "interaction-1"
    ev.interaction.geolocation.country_code = "NL"
    return ev


def newest_event(s: Shape):
    """newest-event.pb: encoded with the newest proto itself, using both
    metadata maps (with a clashing key) and the newest-only fields."""
    ev = s.cls("Event")()
    ev.id = "018b6f3a-7c2d-7e4f-9a1b-2c3d4e5f6a7b"
    set_ts(ev)
    ev.feature = "cody.completions"
    ev.action = "accepted"
    ev.source.server.version = "5.5.0"
    ev.source.client.name = "VSCODE_CODY_EXTENSION"
    ev.source.client.version = "1.20.0"
    ev.parameters.version = 3
    ev.parameters.legacy_metadata["latency"] = 7
    ev.parameters.legacy_metadata["count"] = 4
    ev.parameters.metadata["latency"] = 1.5
    ev.parameters.metadata["ratio"] = 0.25
    ev.user.user_id = 42
    ev.user.sams_external_id = "018b6f3a-0000-7000-8000-00000000abcd"
    ev.interaction.trace_id = "0af7651916cd43dd8448eb211c80319c"
    ev.interaction.geolocation.country_code = "USA"
    return ev


def licensed_metadata_request(s: Shape):
    req = s.cls("RecordEventsRequest")()
    req.metadata.request_id = "req-2023-10-24"
    req.metadata.identifier.licensed_instance.license_key = "fake-key"
    req.metadata.identifier.licensed_instance.instance_id = "instance-1"
    return req


def unlicensed_metadata_request(s: Shape):
    # Type name on the old shape is the misspelled UnlicensedInstanceIdenfitier;
    # the field name (unlicensed_instance = 2) is what we set.
    req = s.cls("RecordEventsRequest")()
    req.metadata.request_id = "req-unlicensed"
    req.metadata.identifier.unlicensed_instance.instance_id = "instance-2"
    return req


def events_request(s: Shape):
    req = s.cls("RecordEventsRequest")()
    for ev in (
        full_2023_10_event(s),
        minimal_2023_10_event(s),
        private_metadata_2023_10_event(s),
    ):
        req.events.events.add().CopyFrom(ev)
    return req


# (file name, shape, message name, builder, description)
FIXTURES = [
    ("2023-10-24-event.pb", SHAPE_2023_10, "Event", full_2023_10_event,
     "full first-stable-shape Event"),
    ("2023-11-16-event.pb", SHAPE_2023_11, "Event", event_2023_11,
     "2023-11 shape Event with interaction and int64 metadata"),
    ("2023-10-24-metadata.pb", SHAPE_2023_10, "RecordEventsRequest", licensed_metadata_request,
     "RecordEventsRequest{metadata} with a licensed_instance identifier"),
    ("2023-10-24-metadata-unlicensed.pb", SHAPE_2023_10, "RecordEventsRequest",
     unlicensed_metadata_request,
     "RecordEventsRequest{metadata} with an unlicensed_instance identifier"),
    ("minimal-event.pb", SHAPE_2023_10, "Event", minimal_2023_10_event,
     "Event with only id, timestamp, feature, action"),
    ("2023-10-24-events-request.pb", SHAPE_2023_10, "RecordEventsRequest", events_request,
     "RecordEventsRequest{events} with 3 old-shape events"),
    ("newest-event.pb", SHAPE_NEWEST, "Event", newest_event,
     "Event encoded with the newest proto (both metadata maps, newest-only fields)"),
]


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def assert_no_unknown_fields(msg, path="$"):
    ufs = UnknownFieldSet(msg)
    if len(ufs) != 0:
        raise AssertionError(f"{path}: {len(ufs)} unknown field(s) after decoding")
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for k, v in value.items():
                    assert_no_unknown_fields(v, f"{path}.{fd.name}[{k!r}]")
        elif fd.is_repeated:
            for i, v in enumerate(value):
                assert_no_unknown_fields(v, f"{path}.{fd.name}[{i}]")
        else:
            assert_no_unknown_fields(value, f"{path}.{fd.name}")


def build(shapes):
    """Return {file name: (bytes, expected-json entry)}."""
    newest = shapes[SHAPE_NEWEST]
    out = {}
    for name, shape, msg_name, builder, description in FIXTURES:
        s = shapes[shape]
        msg = builder(s)
        data = msg.SerializeToString(deterministic=True)

        # Sanity: the encoding shape reads its own bytes back unchanged.
        back = s.cls(msg_name)()
        back.ParseFromString(data)
        assert back == msg, name

        # Decode with the NEWEST proto.
        decoded = newest.cls(msg_name)()
        decoded.ParseFromString(data)
        assert_no_unknown_fields(decoded)
        # Every old field maps onto a newest field of the same number and wire
        # type, so re-encoding with the newest proto must give the same bytes.
        assert decoded.SerializeToString(deterministic=True) == data, name

        proto_file = (
            f"testdata/backcompat/proto/{shape}" if shape != SHAPE_NEWEST
            else f"proto/{NEWEST_PROTO}"
        )
        entry = {
            "description": description,
            "encodedWith": f"{proto_file} ({PKG[shape]}.{msg_name})",
            "decodeAs": f"telemetrygateway.v1.{msg_name}",
            "bytes": len(data),
            # Canonical proto3 JSON of the NEWEST-proto decoding, default options
            # (lowerCamelCase names, unset/default fields omitted, int64 as strings).
            "json": json_format.MessageToDict(decoded),
        }
        out[name] = (data, entry)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and fail if any file on disk differs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tg-backcompat-"))
    try:
        shapes = {
            SHAPE_2023_10: Shape(
                compile_descriptor_set(tmp, OLD_PROTO_ROOT, SHAPE_2023_10, "2023-10.pb"),
                PKG[SHAPE_2023_10]),
            SHAPE_2023_11: Shape(
                compile_descriptor_set(tmp, OLD_PROTO_ROOT, SHAPE_2023_11, "2023-11.pb"),
                PKG[SHAPE_2023_11]),
            SHAPE_NEWEST: Shape(
                compile_descriptor_set(tmp, NEWEST_PROTO_ROOT, NEWEST_PROTO, "newest.pb"),
                PKG[SHAPE_NEWEST]),
        }
        results = build(shapes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    expected = {
        "_comment": (
            "Generated by testdata/backcompat/generate.py. For each fixture: the proto shape "
            "that encoded it, and its decoding under the NEWEST proto rendered by Python "
            "protobuf json_format.MessageToDict with default options. Keys are sorted for "
            "reproducibility; compare as JSON values (key order is not significant)."
        ),
        "_generator": {
            "python": sys.version.split()[0],
            "protobuf": google.protobuf.__version__,
            "protobufImplementation": _impl(),
            "grpcioTools": _grpc_tools_version(),
        },
    }
    files = {}
    for name, (data, entry) in results.items():
        files[name] = data
        expected[name] = entry
    files["expected.json"] = (json.dumps(expected, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()

    if args.check:
        bad = [n for n, d in files.items()
               if not (HERE / n).exists() or (HERE / n).read_bytes() != d]
        if bad:
            print("out of date: " + ", ".join(bad), file=sys.stderr)
            return 1
        print("all fixtures up to date")
        return 0

    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"wrote {name} ({len(data)} bytes)")
    return 0


def _impl() -> str:
    from google.protobuf.internal import api_implementation

    return api_implementation.Type()


def _grpc_tools_version() -> str:
    try:
        from importlib.metadata import version

        return version("grpcio-tools")
    except Exception:  # pragma: no cover
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
