from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_PING: _ClassVar[Method]
    METHOD_REGISTER: _ClassVar[Method]
    METHOD_AUTHENTICATE: _ClassVar[Method]
    METHOD_GET_PROFILE: _ClassVar[Method]
    METHOD_UPDATE_PROFILE: _ClassVar[Method]
    METHOD_LOGOUT: _ClassVar[Method]
    METHOD_PUT_BLOB: _ClassVar[Method]
    METHOD_GET_BLOB: _ClassVar[Method]
    METHOD_DELETE_BLOB: _ClassVar[Method]
    METHOD_CANCEL: _ClassVar[Method]
    METHOD_LIST_SESSIONS: _ClassVar[Method]
    METHOD_END_SESSION: _ClassVar[Method]
    METHOD_END_ALL_SESSIONS: _ClassVar[Method]
    METHOD_CHANGE_PASSWORD: _ClassVar[Method]
    METHOD_EXPORT_ACCOUNT: _ClassVar[Method]
    METHOD_DELETE_ACCOUNT: _ClassVar[Method]
    METHOD_ADMIN_SHOW_USER: _ClassVar[Method]
    METHOD_ADMIN_LOCK_USER: _ClassVar[Method]
    METHOD_ADMIN_UNLOCK_USER: _ClassVar[Method]
    METHOD_ADMIN_DELETE_USER: _ClassVar[Method]
    METHOD_ADMIN_LIST_SESSIONS: _ClassVar[Method]
    METHOD_ADMIN_END_SESSIONS: _ClassVar[Method]
    METHOD_ADMIN_PEPPER_USAGE: _ClassVar[Method]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_INVALID: _ClassVar[Status]
    STATUS_NOT_FOUND: _ClassVar[Status]
    STATUS_CONFLICT: _ClassVar[Status]
    STATUS_UNAUTHENTICATED: _ClassVar[Status]
    STATUS_OVERLOADED: _ClassVar[Status]
    STATUS_DRAINING: _ClassVar[Status]
    STATUS_UNAVAILABLE: _ClassVar[Status]
    STATUS_UNIMPLEMENTED: _ClassVar[Status]
    STATUS_INTERNAL: _ClassVar[Status]
    STATUS_PERMISSION_DENIED: _ClassVar[Status]
METHOD_UNSPECIFIED: Method
METHOD_PING: Method
METHOD_REGISTER: Method
METHOD_AUTHENTICATE: Method
METHOD_GET_PROFILE: Method
METHOD_UPDATE_PROFILE: Method
METHOD_LOGOUT: Method
METHOD_PUT_BLOB: Method
METHOD_GET_BLOB: Method
METHOD_DELETE_BLOB: Method
METHOD_CANCEL: Method
METHOD_LIST_SESSIONS: Method
METHOD_END_SESSION: Method
METHOD_END_ALL_SESSIONS: Method
METHOD_CHANGE_PASSWORD: Method
METHOD_EXPORT_ACCOUNT: Method
METHOD_DELETE_ACCOUNT: Method
METHOD_ADMIN_SHOW_USER: Method
METHOD_ADMIN_LOCK_USER: Method
METHOD_ADMIN_UNLOCK_USER: Method
METHOD_ADMIN_DELETE_USER: Method
METHOD_ADMIN_LIST_SESSIONS: Method
METHOD_ADMIN_END_SESSIONS: Method
METHOD_ADMIN_PEPPER_USAGE: Method
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_INVALID: Status
STATUS_NOT_FOUND: Status
STATUS_CONFLICT: Status
STATUS_UNAUTHENTICATED: Status
STATUS_OVERLOADED: Status
STATUS_DRAINING: Status
STATUS_UNAVAILABLE: Status
STATUS_UNIMPLEMENTED: Status
STATUS_INTERNAL: Status
STATUS_PERMISSION_DENIED: Status

class Hello(_message.Message):
    __slots__ = ("protocol_min", "protocol_max", "agent", "error", "max_calls_in_flight")
    PROTOCOL_MIN_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MAX_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    protocol_min: int
    protocol_max: int
    agent: str
    error: str
    max_calls_in_flight: int
    def __init__(self, protocol_min: _Optional[int] = ..., protocol_max: _Optional[int] = ..., agent: _Optional[str] = ..., error: _Optional[str] = ..., max_calls_in_flight: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("call_id", "method", "deadline_ms", "trace_id", "payload", "status", "message", "reason", "retry_after_seconds", "sent_at_unix_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    method: Method
    deadline_ms: int
    trace_id: str
    payload: bytes
    status: Status
    message: str
    reason: str
    retry_after_seconds: int
    sent_at_unix_ms: int
    def __init__(self, call_id: _Optional[int] = ..., method: _Optional[_Union[Method, str]] = ..., deadline_ms: _Optional[int] = ..., trace_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., status: _Optional[_Union[Status, str]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., retry_after_seconds: _Optional[int] = ..., sent_at_unix_ms: _Optional[int] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "username", "nickname", "avatar_key", "created_at_ms", "updated_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    AVATAR_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    username: str
    nickname: str
    avatar_key: str
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, id: _Optional[int] = ..., username: _Optional[str] = ..., nickname: _Optional[str] = ..., avatar_key: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("instance_id", "release")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    release: str
    def __init__(self, instance_id: _Optional[str] = ..., release: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("username", "password", "nickname", "client_ip", "device_cookie", "user_agent")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    nickname: str
    client_ip: str
    device_cookie: str
    user_agent: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., nickname: _Optional[str] = ..., client_ip: _Optional[str] = ..., device_cookie: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("username", "password", "client_ip", "device_cookie", "user_agent")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    client_ip: str
    device_cookie: str
    user_agent: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., client_ip: _Optional[str] = ..., device_cookie: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class AuthenticateReply(_message.Message):
    __slots__ = ("token", "expires_at_ms", "user", "device_cookie", "device_cookie_expires_at_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at_ms: int
    user: User
    device_cookie: str
    device_cookie_expires_at_ms: int
    def __init__(self, token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., user: _Optional[_Union[User, _Mapping]] = ..., device_cookie: _Optional[str] = ..., device_cookie_expires_at_ms: _Optional[int] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("user_id", "session_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    session_id: str
    def __init__(self, user_id: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class UpdateProfileRequest(_message.Message):
    __slots__ = ("session", "nickname", "avatar_key", "picture_stored_here")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    AVATAR_KEY_FIELD_NUMBER: _ClassVar[int]
    PICTURE_STORED_HERE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    nickname: str
    avatar_key: str
    picture_stored_here: bool
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., nickname: _Optional[str] = ..., avatar_key: _Optional[str] = ..., picture_stored_here: _Optional[bool] = ...) -> None: ...

class ProfileReply(_message.Message):
    __slots__ = ("user", "replaced_avatar_key")
    USER_FIELD_NUMBER: _ClassVar[int]
    REPLACED_AVATAR_KEY_FIELD_NUMBER: _ClassVar[int]
    user: User
    replaced_avatar_key: str
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., replaced_avatar_key: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class LogoutReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutBlobRequest(_message.Message):
    __slots__ = ("key", "content_type", "data", "session")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    content_type: str
    data: bytes
    session: SessionRef
    def __init__(self, key: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ..., session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class PutBlobReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBlobRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetBlobReply(_message.Message):
    __slots__ = ("content_type", "data")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    data: bytes
    def __init__(self, content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeleteBlobRequest(_message.Message):
    __slots__ = ("key", "session")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    session: SessionRef
    def __init__(self, key: _Optional[str] = ..., session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class DeleteBlobReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("id", "created_at_ms", "expires_at_ms", "last_seen_at_ms", "user_agent", "ip", "current")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at_ms: int
    expires_at_ms: int
    last_seen_at_ms: int
    user_agent: str
    ip: str
    current: bool
    def __init__(self, id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., last_seen_at_ms: _Optional[int] = ..., user_agent: _Optional[str] = ..., ip: _Optional[str] = ..., current: _Optional[bool] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class ListSessionsReply(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session", "id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    id: str
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class EndSessionReply(_message.Message):
    __slots__ = ("was_current",)
    WAS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    was_current: bool
    def __init__(self, was_current: _Optional[bool] = ...) -> None: ...

class EndAllSessionsRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class EndAllSessionsReply(_message.Message):
    __slots__ = ("ended",)
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ended: int
    def __init__(self, ended: _Optional[int] = ...) -> None: ...

class ChangePasswordRequest(_message.Message):
    __slots__ = ("session", "current_password", "new_password", "client_ip", "device_cookie")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    current_password: str
    new_password: str
    client_ip: str
    device_cookie: str
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., current_password: _Optional[str] = ..., new_password: _Optional[str] = ..., client_ip: _Optional[str] = ..., device_cookie: _Optional[str] = ...) -> None: ...

class ChangePasswordReply(_message.Message):
    __slots__ = ("sessions_ended",)
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    sessions_ended: int
    def __init__(self, sessions_ended: _Optional[int] = ...) -> None: ...

class ExportAccountRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ...) -> None: ...

class ExportAccountReply(_message.Message):
    __slots__ = ("user", "sessions")
    USER_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    user: User
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ("session", "password", "client_ip", "device_cookie")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COOKIE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    password: str
    client_ip: str
    device_cookie: str
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., password: _Optional[str] = ..., client_ip: _Optional[str] = ..., device_cookie: _Optional[str] = ...) -> None: ...

class DeleteAccountReply(_message.Message):
    __slots__ = ("avatar_key", "blobs_deleted")
    AVATAR_KEY_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    avatar_key: str
    blobs_deleted: bool
    def __init__(self, avatar_key: _Optional[str] = ..., blobs_deleted: _Optional[bool] = ...) -> None: ...

class AdminUserRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class AdminAccount(_message.Message):
    __slots__ = ("user", "locked_at_ms", "live_sessions", "pepper_version")
    USER_FIELD_NUMBER: _ClassVar[int]
    LOCKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PEPPER_VERSION_FIELD_NUMBER: _ClassVar[int]
    user: User
    locked_at_ms: int
    live_sessions: int
    pepper_version: int
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., locked_at_ms: _Optional[int] = ..., live_sessions: _Optional[int] = ..., pepper_version: _Optional[int] = ...) -> None: ...

class AdminAccountReply(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: AdminAccount
    def __init__(self, account: _Optional[_Union[AdminAccount, _Mapping]] = ...) -> None: ...

class AdminLockReply(_message.Message):
    __slots__ = ("account", "sessions_ended")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    account: AdminAccount
    sessions_ended: int
    def __init__(self, account: _Optional[_Union[AdminAccount, _Mapping]] = ..., sessions_ended: _Optional[int] = ...) -> None: ...

class AdminEndSessionsRequest(_message.Message):
    __slots__ = ("username", "ids", "all")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    username: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, username: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class AdminEndSessionsReply(_message.Message):
    __slots__ = ("ended", "not_found")
    ENDED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    ended: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ended: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class AdminPepperUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PepperUsage(_message.Message):
    __slots__ = ("version", "hashes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    version: int
    hashes: int
    def __init__(self, version: _Optional[int] = ..., hashes: _Optional[int] = ...) -> None: ...

class AdminPepperUsageReply(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[PepperUsage]
    def __init__(self, usage: _Optional[_Iterable[_Union[PepperUsage, _Mapping]]] = ...) -> None: ...
