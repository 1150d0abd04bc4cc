from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(_message.Message):
    __slots__ = ("id", "command", "claim_token", "timeout_s", "env", "scheduled_at")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    command: str
    claim_token: str
    timeout_s: float
    env: _containers.ScalarMap[str, str]
    scheduled_at: str
    def __init__(self, id: _Optional[int] = ..., command: _Optional[str] = ..., claim_token: _Optional[str] = ..., timeout_s: _Optional[float] = ..., env: _Optional[_Mapping[str, str]] = ..., scheduled_at: _Optional[str] = ...) -> None: ...

class DispatchRequest(_message.Message):
    __slots__ = ("coordinator_id", "tasks")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, coordinator_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class DispatchReply(_message.Message):
    __slots__ = ("accepted", "rejected", "capacity", "running", "draining")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedScalarFieldContainer[int]
    rejected: _containers.RepeatedScalarFieldContainer[int]
    capacity: int
    running: int
    draining: bool
    def __init__(self, accepted: _Optional[_Iterable[int]] = ..., rejected: _Optional[_Iterable[int]] = ..., capacity: _Optional[int] = ..., running: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("signalled",)
    SIGNALLED_FIELD_NUMBER: _ClassVar[int]
    signalled: bool
    def __init__(self, signalled: _Optional[bool] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("worker_id", "capacity", "running", "draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    capacity: int
    running: int
    draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., capacity: _Optional[int] = ..., running: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...
