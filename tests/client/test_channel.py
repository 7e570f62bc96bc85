"""Channel options and service config: round robin, retries of UNAVAILABLE only, limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from digitserve.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelSettings,
    RetryPolicy,
    channel_options,
    channel_target,
    create_channel,
)


def options_dict(settings: ChannelSettings | None = None) -> dict[str, Any]:
    options = channel_options(settings)
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), "an option is set twice"
    return dict(options)


def parsed_service_config(settings: ChannelSettings | None = None) -> dict[str, Any]:
    config = json.loads(options_dict(settings)["grpc.service_config"])
    assert isinstance(config, dict)
    return config


def test_load_balancing_is_round_robin() -> None:
    assert parsed_service_config()["loadBalancingConfig"] == [{"round_robin": {}}]


def test_retries_cover_both_services_and_unavailable_only() -> None:
    (method_config,) = parsed_service_config()["methodConfig"]
    services = {name["service"] for name in method_config["name"]}
    assert services == {"digitserve.v1.DigitClassifier", "grpc.health.v1.Health"}
    retry = method_config["retryPolicy"]
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert retry["maxAttempts"] == 4
    assert retry["initialBackoff"] == "0.1s"
    assert retry["maxBackoff"] == "2s"
    assert retry["backoffMultiplier"] == 2.0


def test_retry_policy_values_are_written_as_configured() -> None:
    settings = ChannelSettings(
        retry=RetryPolicy(
            max_attempts=5, initial_backoff=0.025, max_backoff=1.5, backoff_multiplier=1.6
        )
    )
    retry = parsed_service_config(settings)["methodConfig"][0]["retryPolicy"]
    assert retry == {
        "maxAttempts": 5,
        "initialBackoff": "0.025s",
        "maxBackoff": "1.5s",
        "backoffMultiplier": 1.6,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


def test_retries_are_throttled() -> None:
    throttling = parsed_service_config()["retryThrottling"]
    assert throttling == {"maxTokens": 10, "tokenRatio": 0.1}


def test_one_attempt_means_no_retry_policy_but_still_round_robin() -> None:
    config = parsed_service_config(ChannelSettings(retry=RetryPolicy(max_attempts=1)))
    assert "methodConfig" not in config
    assert "retryThrottling" not in config
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_message_limits_default_to_64_mib_both_ways() -> None:
    options = options_dict()
    assert DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == DEFAULT_MAX_MESSAGE_BYTES
    assert options["grpc.max_receive_message_length"] == DEFAULT_MAX_MESSAGE_BYTES
    smaller = options_dict(ChannelSettings(max_message_bytes=8 * 1024 * 1024))
    assert smaller["grpc.max_receive_message_length"] == 8 * 1024 * 1024


def test_keepalive_pings_only_while_calls_are_open() -> None:
    options = options_dict(ChannelSettings(keepalive_time=45, keepalive_timeout=5))
    assert options["grpc.keepalive_time_ms"] == 45_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.keepalive_permit_without_calls"] == 0


def test_retries_are_enabled_and_dns_cannot_replace_the_service_config() -> None:
    options = options_dict()
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.service_config_disable_resolution"] == 1
    assert str(options["grpc.primary_user_agent"]).startswith("digitserve-client/")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 6}, "max_attempts"),
        ({"initial_backoff": 0}, "initial_backoff"),
        ({"initial_backoff": 3.0, "max_backoff": 2.0}, "max_backoff"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"throttle_token_ratio": 0}, "throttle_token_ratio"),
    ],
)
def test_invalid_retry_policies_are_rejected_up_front(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"keepalive_time": 0.5}, "keepalive_time"),
        ({"keepalive_timeout": 0}, "keepalive_timeout"),
        ({"retry_buffer_bytes": -1}, "retry_buffer_bytes"),
    ],
)
def test_invalid_channel_settings_are_rejected_up_front(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelSettings(**kwargs)


# Targets


@pytest.mark.parametrize(
    "target", ["localhost:8500", "dns:///digitserve.default.svc:8500", "unix:/tmp/ds.sock"]
)
def test_a_target_string_is_used_as_it_is(target: str) -> None:
    assert channel_target(target) == target


def test_a_list_of_ipv4_addresses_becomes_one_ipv4_target() -> None:
    target = channel_target(["127.0.0.1:8500", "10.0.0.7:8501"])
    assert target == "ipv4:127.0.0.1:8500,10.0.0.7:8501"


def test_a_list_of_ipv6_addresses_becomes_one_ipv6_target() -> None:
    assert channel_target(["[::1]:8500", "[fe80::1]:8501"]) == "ipv6:[::1]:8500,[fe80::1]:8501"


def test_a_list_of_one_address_is_that_address() -> None:
    assert channel_target(("digitserve:8500",)) == "digitserve:8500"


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ([], "empty"),
        (["127.0.0.1:8500", "[::1]:8500"], "mix IPv4 and IPv6"),
        (["localhost:8500", "127.0.0.1:8501"], "dns:///"),
        (["127.0.0.1", "127.0.0.2:1"], "ip:port"),
        (["127.0.0.1:0", "127.0.0.2:1"], "port"),
        (["127.0.0.1:http", "127.0.0.2:1"], "port"),
        (["::1:8500", "[::2]:8500"], r"\[ip\]:port"),
    ],
)
def test_lists_that_cannot_be_one_target_are_rejected_saying_why(
    addresses: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(addresses)


def test_an_empty_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        channel_target("  ")


def test_grpc_accepts_the_options_and_a_multi_address_target() -> None:
    channel = create_channel(["127.0.0.1:1", "127.0.0.1:2"])
    channel.close()


def test_client_side_health_checking_is_on_by_default_and_can_be_turned_off() -> None:
    assert parsed_service_config()["healthCheckConfig"] == {"serviceName": ""}
    assert "healthCheckConfig" not in parsed_service_config(ChannelSettings(health_check=False))
