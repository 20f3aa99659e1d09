from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_CURRENT: _ClassVar[ProtocolVersion]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_CURRENT: ProtocolVersion

class Envelope(_message.Message):
    __slots__ = ("hello", "hello_ack", "open_session", "session_opened", "draft", "verdict", "close", "error", "resume", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HELLO_ACK_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_OPENED_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    hello_ack: HelloAck
    open_session: OpenSession
    session_opened: SessionOpened
    draft: Draft
    verdict: Verdict
    close: Close
    error: Error
    resume: Resume
    batch: Batch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., hello_ack: _Optional[_Union[HelloAck, _Mapping]] = ..., open_session: _Optional[_Union[OpenSession, _Mapping]] = ..., session_opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., draft: _Optional[_Union[Draft, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, items: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "node_id", "draft_model_ids", "agent", "features")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    draft_model_ids: _containers.RepeatedScalarFieldContainer[str]
    agent: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., draft_model_ids: _Optional[_Iterable[str]] = ..., agent: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_gamma", "max_top_k", "max_message_bytes", "max_sessions")
    MAX_GAMMA_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    max_gamma: int
    max_top_k: int
    max_message_bytes: int
    max_sessions: int
    def __init__(self, max_gamma: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_sessions: _Optional[int] = ...) -> None: ...

class HelloAck(_message.Message):
    __slots__ = ("protocol_version", "node_id", "target_model_id", "vocab_size", "limits", "features")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    target_model_id: str
    vocab_size: int
    limits: Limits
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., target_model_id: _Optional[str] = ..., vocab_size: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed", "coupled")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COUPLED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    coupled: bool
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., coupled: _Optional[bool] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("protocol_version", "session_id", "prompt_token_ids", "sampling", "draft_model_id", "max_new_tokens")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: Sampling
    draft_model_id: str
    max_new_tokens: int
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., draft_model_id: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("protocol_version", "session_id", "transcript_token_ids", "num_prompt_tokens", "sampling", "draft_model_id", "max_new_tokens")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: int
    transcript_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_prompt_tokens: int
    sampling: Sampling
    draft_model_id: str
    max_new_tokens: int
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[int] = ..., transcript_token_ids: _Optional[_Iterable[int]] = ..., num_prompt_tokens: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., draft_model_id: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class LoadHints(_message.Message):
    __slots__ = ("queue_depth", "active_sessions", "verify_ms", "batch_rows", "batch_width", "forward_cost")
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FORWARD_COST_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    active_sessions: int
    verify_ms: float
    batch_rows: float
    batch_width: float
    forward_cost: ForwardCost
    def __init__(self, queue_depth: _Optional[int] = ..., active_sessions: _Optional[int] = ..., verify_ms: _Optional[float] = ..., batch_rows: _Optional[float] = ..., batch_width: _Optional[float] = ..., forward_cost: _Optional[_Union[ForwardCost, _Mapping]] = ...) -> None: ...

class ForwardCost(_message.Message):
    __slots__ = ("base_us", "per_position_us", "per_row_us")
    BASE_US_FIELD_NUMBER: _ClassVar[int]
    PER_POSITION_US_FIELD_NUMBER: _ClassVar[int]
    PER_ROW_US_FIELD_NUMBER: _ClassVar[int]
    base_us: float
    per_position_us: float
    per_row_us: float
    def __init__(self, base_us: _Optional[float] = ..., per_position_us: _Optional[float] = ..., per_row_us: _Optional[float] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "position", "load")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    position: int
    load: LoadHints
    def __init__(self, session_id: _Optional[int] = ..., position: _Optional[int] = ..., load: _Optional[_Union[LoadHints, _Mapping]] = ...) -> None: ...

class FullQ(_message.Message):
    __slots__ = ("vocab_size", "probs_fp16")
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FP16_FIELD_NUMBER: _ClassVar[int]
    vocab_size: int
    probs_fp16: bytes
    def __init__(self, vocab_size: _Optional[int] = ..., probs_fp16: _Optional[bytes] = ...) -> None: ...

class TopKQ(_message.Message):
    __slots__ = ("k", "ids", "probs_fp16")
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FP16_FIELD_NUMBER: _ClassVar[int]
    k: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs_fp16: bytes
    def __init__(self, k: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., probs_fp16: _Optional[bytes] = ...) -> None: ...

class TokensOnlyQ(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Draft(_message.Message):
    __slots__ = ("session_id", "position", "token_ids", "full", "top_k", "tokens_only")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOKENS_ONLY_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    full: FullQ
    top_k: TopKQ
    tokens_only: TokensOnlyQ
    def __init__(self, session_id: _Optional[int] = ..., position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., full: _Optional[_Union[FullQ, _Mapping]] = ..., top_k: _Optional[_Union[TopKQ, _Mapping]] = ..., tokens_only: _Optional[_Union[TokensOnlyQ, _Mapping]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("session_id", "position", "accepted", "next_token_id", "is_bonus", "load", "timing")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    IS_BONUS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    position: int
    accepted: int
    next_token_id: int
    is_bonus: bool
    load: LoadHints
    timing: RoundTiming
    def __init__(self, session_id: _Optional[int] = ..., position: _Optional[int] = ..., accepted: _Optional[int] = ..., next_token_id: _Optional[int] = ..., is_bonus: _Optional[bool] = ..., load: _Optional[_Union[LoadHints, _Mapping]] = ..., timing: _Optional[_Union[RoundTiming, _Mapping]] = ...) -> None: ...

class RoundTiming(_message.Message):
    __slots__ = ("server_us", "forward_us", "busy_wait_us")
    SERVER_US_FIELD_NUMBER: _ClassVar[int]
    FORWARD_US_FIELD_NUMBER: _ClassVar[int]
    BUSY_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    server_us: int
    forward_us: int
    busy_wait_us: int
    def __init__(self, server_us: _Optional[int] = ..., forward_us: _Optional[int] = ..., busy_wait_us: _Optional[int] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    def __init__(self, session_id: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "session_id", "effect", "retry_after_ms", "field")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSPECIFIED: _ClassVar[Error.Code]
        BAD_MESSAGE: _ClassVar[Error.Code]
        VERSION: _ClassVar[Error.Code]
        UNKNOWN_SESSION: _ClassVar[Error.Code]
        BAD_POSITION: _ClassVar[Error.Code]
        BAD_DRAFT: _ClassVar[Error.Code]
        LIMITS: _ClassVar[Error.Code]
        BUSY: _ClassVar[Error.Code]
        AUTH: _ClassVar[Error.Code]
        INTERNAL: _ClassVar[Error.Code]
    UNSPECIFIED: Error.Code
    BAD_MESSAGE: Error.Code
    VERSION: Error.Code
    UNKNOWN_SESSION: Error.Code
    BAD_POSITION: Error.Code
    BAD_DRAFT: Error.Code
    LIMITS: Error.Code
    BUSY: Error.Code
    AUTH: Error.Code
    INTERNAL: Error.Code
    class Effect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[Error.Effect]
        DRAFT_REJECTED: _ClassVar[Error.Effect]
        SESSION_CLOSED: _ClassVar[Error.Effect]
    NONE: Error.Effect
    DRAFT_REJECTED: Error.Effect
    SESSION_CLOSED: Error.Effect
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: Error.Code
    message: str
    session_id: int
    effect: Error.Effect
    retry_after_ms: int
    field: str
    def __init__(self, code: _Optional[_Union[Error.Code, str]] = ..., message: _Optional[str] = ..., session_id: _Optional[int] = ..., effect: _Optional[_Union[Error.Effect, str]] = ..., retry_after_ms: _Optional[int] = ..., field: _Optional[str] = ...) -> None: ...
