"""The method table: one entry per RPC method, and the conventions `make proto` enforces."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from tools.method_table import ProtoConventionError, read_methods

# Envelope values that are not calls: the unset default and the cancel of another call.
NOT_CALLS = {"METHOD_UNSPECIFIED", "METHOD_CANCEL"}
PROTO = "t/v1/t.proto"
Level = descriptor_pb2.MethodOptions.IdempotencyLevel


def test_every_method_number_has_one_entry_named_after_it() -> None:
    calls = {value.number for value in pb.Method.DESCRIPTOR.values if value.name not in NOT_CALLS}
    assert sorted(method.number for method in methods.METHODS) == sorted(calls)
    for method in methods.METHODS:
        assert pb.Method.Name(method.number) == f"METHOD_{method.name.upper()}"
        assert methods.BY_NUMBER[method.number] is method


def test_request_and_reply_types_are_those_of_the_service_block() -> None:
    rpcs = {rpc.name.lower(): rpc for rpc in pb.DESCRIPTOR.services_by_name["AuthService"].methods}
    for method in methods.METHODS:
        rpc = rpcs[method.name.replace("_", "")]
        assert method.request_type.DESCRIPTOR is rpc.input_type
        assert method.reply_type.DESCRIPTOR is rpc.output_type


def _descriptor_set(*rpcs: descriptor_pb2.MethodDescriptorProto) -> bytes:
    file = descriptor_pb2.FileDescriptorProto(name=PROTO, package="t.v1")
    file.message_type.add(name="Req")
    file.message_type.add(name="Rep")
    enum = file.enum_type.add(name="Method")
    for number, name in enumerate(("METHOD_UNSPECIFIED", "METHOD_GET_THING", "METHOD_PUT")):
        enum.value.add(name=name, number=number)
    file.service.add(name="T").method.extend(rpcs)
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def _rpc(
    name: str,
    level: Level.ValueType = descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN,
    *,
    input_type: str = ".t.v1.Req",
    server_streaming: bool = False,
) -> descriptor_pb2.MethodDescriptorProto:
    rpc = descriptor_pb2.MethodDescriptorProto(
        name=name, input_type=input_type, output_type=".t.v1.Rep", server_streaming=server_streaming
    )
    rpc.options.idempotency_level = level
    return rpc


@pytest.mark.parametrize(
    ("level", "idempotent"),
    [
        (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, True),
        (descriptor_pb2.MethodOptions.IDEMPOTENT, True),
        (descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN, False),
    ],
)
def test_idempotency_comes_from_protobufs_own_option(
    level: Level.ValueType, idempotent: bool
) -> None:
    _, [spec] = read_methods(_descriptor_set(_rpc("GetThing", level)), PROTO)
    assert (spec.constant, spec.request, spec.reply) == ("GET_THING", "Req", "Rep")
    assert spec.idempotent is idempotent


@pytest.mark.parametrize(
    ("rpcs", "complaint"),
    [
        ((_rpc("Erase"),), "has no value METHOD_ERASE in enum Method"),
        ((_rpc("Put", server_streaming=True),), "streams"),
        ((_rpc("Put", input_type=".other.v1.Req"),), "a message of another file"),
        ((_rpc("Put"), _rpc("Put")), "declared twice"),
    ],
)
def test_a_service_that_breaks_the_conventions_stops_generation(
    rpcs: tuple[descriptor_pb2.MethodDescriptorProto, ...], complaint: str
) -> None:
    with pytest.raises(ProtoConventionError, match=complaint):
        read_methods(_descriptor_set(*rpcs), PROTO)


def _with_comment(descriptor_set: bytes, method_index: int, comment: str) -> bytes:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    location = files.file[0].source_code_info.location.add()
    location.path.extend([6, 0, 2, method_index])  # service 0, its method `method_index`
    location.leading_comments = comment
    return files.SerializeToString()


def test_the_rpc_comment_says_since_which_protocol_version_a_method_exists() -> None:
    descriptor_set = _descriptor_set(_rpc("GetThing"), _rpc("Put"))
    descriptor_set = _with_comment(descriptor_set, 1, " Puts a thing.\n Since protocol 3.\n")
    _, [old, new] = read_methods(descriptor_set, PROTO)
    assert (old.since_protocol, new.since_protocol) == (1, 3)


def test_the_generated_table_marks_the_account_lifecycle_as_protocol_3() -> None:
    lifecycle = {methods.LIST_SESSIONS, methods.DELETE_ACCOUNT, methods.CHANGE_PASSWORD}
    assert {method.since_protocol for method in lifecycle} == {3}
    assert methods.GET_PROFILE.since_protocol == 1
