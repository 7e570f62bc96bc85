"""The digitserve client SDK: classify handwritten digits with a digitserve server.

    from digitserve.client import DigitClient

    with DigitClient("localhost:8500") as client:
        prediction = client.classify("seven.png")
        print(prediction.digit, prediction.confidence)

``AsyncDigitClient`` is the asyncio twin. The SDK needs grpcio, protobuf,
numpy and Pillow only; it never imports TensorFlow.
"""

from digitserve.client.async_client import AsyncDigitClient
from digitserve.client.calls import (
    DEFAULT_MAX_IMAGES_PER_REQUEST,
    DEFAULT_STREAM_TIMEOUT,
    DEFAULT_TIMEOUT,
    REQUEST_ID_KEY,
)
from digitserve.client.channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelSettings,
    RetryPolicy,
    channel_options,
    channel_target,
    create_aio_channel,
    create_channel,
    service_config,
)
from digitserve.client.errors import (
    DeadlineExceeded,
    DigitServeError,
    InvalidArgument,
    NotFound,
    ProtocolError,
    ResourceExhausted,
    Unavailable,
)
from digitserve.client.inputs import ImageInput, to_image
from digitserve.client.results import ItemError, ItemResult, Prediction
from digitserve.client.status import ModelStatus, VersionMetadata, VersionState, VersionStatus
from digitserve.client.sync_client import DEFAULT_WINDOW, DigitClient

__all__ = [
    "DEFAULT_MAX_IMAGES_PER_REQUEST",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_STREAM_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "REQUEST_ID_KEY",
    "AsyncDigitClient",
    "ChannelSettings",
    "DeadlineExceeded",
    "DigitClient",
    "DigitServeError",
    "ImageInput",
    "InvalidArgument",
    "ItemError",
    "ItemResult",
    "ModelStatus",
    "NotFound",
    "Prediction",
    "ProtocolError",
    "ResourceExhausted",
    "RetryPolicy",
    "Unavailable",
    "VersionMetadata",
    "VersionState",
    "VersionStatus",
    "channel_options",
    "channel_target",
    "create_aio_channel",
    "create_channel",
    "service_config",
    "to_image",
]
