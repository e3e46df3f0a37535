"""TensorFlow's profiler trace (`*.xplane.pb`, an XSpace protobuf) read with protobuf's public API: the few
messages and fields the op table needs, declared here from `xplane.proto` (tsl/profiler/protobuf), whose field
numbers are a stable wire format. Fields not declared are skipped by the parser. (TensorFlow's own generated
module for it is private, `tensorflow.tsl`.)"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELDS = {  # message -> (name, number, type, repeated, message type)
    "XEventMetadata": [("id", 1, "int64", False, None), ("name", 2, "string", False, None)],
    "XEvent": [("metadata_id", 1, "int64", False, None), ("duration_ps", 3, "int64", False, None)],
    "XLine": [("events", 4, "message", True, "XEvent")],
    "EventMetadataEntry": [("key", 1, "int64", False, None), ("value", 2, "message", False, "XEventMetadata")],
    "XPlane": [
        ("name", 2, "string", False, None),
        ("lines", 3, "message", True, "XLine"),
        ("event_metadata", 4, "message", True, "EventMetadataEntry"),
    ],
    "XSpace": [("planes", 1, "message", True, "XPlane")],
}
_TYPES = {
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "message": descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
}


def _xspace_class():
    file = descriptor_pb2.FileDescriptorProto(name="sgan_bench_xplane.proto", package="sgan_bench.xplane")
    for message, fields in _FIELDS.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, repeated, type_name in fields:
            field = proto.field.add(name=name, number=number, type=_TYPES[kind])
            field.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if type_name:
                field.type_name = f".sgan_bench.xplane.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sgan_bench.xplane.XSpace"))


def op_durations(data: bytes) -> Iterator[tuple[str, int]]:
    """(event name, duration in picoseconds) of every event of every line of every plane of the trace."""
    space = _xspace_class()()
    space.ParseFromString(data)
    for plane in space.planes:
        names = {entry.key: entry.value.name for entry in plane.event_metadata}
        for line in plane.lines:
            for event in line.events:
                yield names.get(event.metadata_id, ""), event.duration_ps
