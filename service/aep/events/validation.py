"""Checks AdEvents against the configured bounds; a reason always names the field.

Two entry points with one set of rules: `accept` is the hot path (reads every
field once, checks, and builds the stored form in the same pass); when any
check fails it asks `problem` -- the readable rule-by-rule version -- for the
reason. A property test holds the two to the same verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aep.events.event_types import VALID_EVENT_TYPE_NAMES
from aep.events.schema import OPTIONAL_STORED_FIELDS, EventRecord, FieldKind, second_prefix
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings, format_duration

_CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
_OPTIONAL_IDS = tuple(field.name for field in OPTIONAL_STORED_FIELDS if field.kind is FieldKind.ID)


@dataclass(slots=True)
class Verdicts:
    """The outcome of one request's events."""

    records: list[EventRecord]  # the valid events' stored forms, in request order
    rejected: list[tuple[int, str, str]]  # (index in the request, event_id sent, reason)


class EventValidator:
    """Validates events; built once from settings, used for every event."""

    __slots__ = (
        "_max_age",
        "_max_attribute_key",
        "_max_attribute_value",
        "_max_attributes",
        "_max_id",
        "_max_skew",
        "_settings",
    )

    def __init__(self, settings: ValidationSettings) -> None:
        self._settings = settings
        self._max_id = settings.max_id_length
        self._max_attributes = settings.max_attributes
        self._max_attribute_key = settings.max_attribute_key_length
        self._max_attribute_value = settings.max_attribute_value_length
        self._max_age = settings.max_event_age
        self._max_skew = settings.max_clock_skew

    def accept_all(
        self,
        events: Sequence[pb.AdEvent],
        now: float,
        received_at: str,
        new_ids: Callable[[int], list[str]],
        by_type: list[int],
    ) -> Verdicts:
        """Check every event of a request; the stored forms of the valid ones, ids assigned.

        The hot path: one pass reads each field once, checks it and builds the
        stored form. Server ids are made in one call for the whole request
        (`new_ids(count)`). `by_type` counts the events by their EventType
        number (numbers past its length are not counted).
        """
        records: list[EventRecord] = []
        append = records.append
        rejected: list[tuple[int, str, str]] = []
        unnamed: list[EventRecord] = []
        max_id = self._max_id
        oldest = now - self._max_age
        newest = now + self._max_skew
        type_names = VALID_EVENT_TYPE_NAMES
        type_slots = len(by_type)
        currency_ok = _CURRENCY_PATTERN.fullmatch
        prefix_seconds = -1
        prefix = ""
        for index, event in enumerate(events):
            event_type = event.event_type
            if 0 <= event_type < type_slots:
                by_type[event_type] += 1
            event_id = event.event_id
            user_id = event.user_id
            ad_id = event.ad_id
            campaign_id = event.campaign_id
            creative_id = event.creative_id
            placement_id = event.placement_id
            publisher_id = event.publisher_id
            price_micros = event.price_micros
            currency = event.currency
            attributes = event.attributes
            timestamp = event.timestamp
            seconds = timestamp.seconds
            nanos = timestamp.nanos
            type_name = type_names.get(event_type)
            ok = (
                user_id
                and ad_id
                and type_name is not None
                and oldest <= seconds + nanos * 1e-9 <= newest
                and len(user_id) <= max_id
                and len(ad_id) <= max_id
                and len(event_id) <= max_id
                and len(campaign_id) <= max_id
                and len(creative_id) <= max_id
                and len(placement_id) <= max_id
                and len(publisher_id) <= max_id
            )
            if ok and (price_micros or currency):
                ok = price_micros >= 0 and currency_ok(currency) is not None
            attribute_dict: dict[str, str] = {}
            if ok and attributes:
                # Key order, not upb's map order (random per process): the same
                # request is stored the same way by every process and codec.
                attribute_dict = dict(sorted(attributes.items()))
                ok = self._attributes_ok(attribute_dict)
            if not ok:
                rejected.append((index, event_id, self.problem(event, now) or "event: rejected"))
                continue
            if seconds != prefix_seconds:  # a request's events mostly share their second
                prefix_seconds = seconds
                prefix = second_prefix(seconds)
            # STORED_FIELDS in its order, written out for speed (the hot path); a
            # test holds this record to the schema field for field.
            record = {
                "event_id": event_id,
                "user_id": user_id,
                "ad_id": ad_id,
                "event_type": type_name,
                "timestamp": f"{prefix}.{nanos // 1000:06d}Z",
                "received_at": received_at,
                "campaign_id": campaign_id,
                "creative_id": creative_id,
                "placement_id": placement_id,
                "publisher_id": publisher_id,
                "price_micros": price_micros,
                "currency": currency,
                "attributes": attribute_dict,
            }
            append(record)
            if not event_id:
                unnamed.append(record)
        if unnamed:
            for record, server_id in zip(unnamed, new_ids(len(unnamed)), strict=True):
                record["event_id"] = server_id
        return Verdicts(records, rejected)

    def _attributes_ok(self, attributes: dict[str, str]) -> bool:
        if len(attributes) > self._max_attributes:
            return False
        max_key = self._max_attribute_key
        max_value = self._max_attribute_value
        return all(0 < len(k) <= max_key and len(v) <= max_value for k, v in attributes.items())

    def problem(self, event: pb.AdEvent, now: float) -> str | None:
        """None when the event is valid, else `"<field>: <what is wrong>"`."""
        max_id = self._max_id
        if len(event.event_id) > max_id:
            return f"event_id: longer than {max_id} characters"
        user_id = event.user_id
        if not user_id:
            return "user_id: required"
        if len(user_id) > max_id:
            return f"user_id: longer than {max_id} characters"
        ad_id = event.ad_id
        if not ad_id:
            return "ad_id: required"
        if len(ad_id) > max_id:
            return f"ad_id: longer than {max_id} characters"
        event_type = event.event_type
        if event_type not in VALID_EVENT_TYPE_NAMES:
            if event_type == pb.EVENT_TYPE_UNSPECIFIED:
                return "event_type: required (EVENT_TYPE_UNSPECIFIED is not allowed)"
            return f"event_type: unknown value {event_type}"
        if not event.HasField("timestamp"):
            return "timestamp: required"
        timestamp = event.timestamp
        seconds = timestamp.seconds + timestamp.nanos * 1e-9
        if seconds < now - self._max_age:
            return (
                f"timestamp: older than validation.max_event_age ({format_duration(self._max_age)})"
            )
        if seconds > now + self._max_skew:
            return (
                "timestamp: in the future by more than validation.max_clock_skew "
                f"({format_duration(self._max_skew)})"
            )
        return self._optional_problem(event)

    def _optional_problem(self, event: pb.AdEvent) -> str | None:
        max_id = self._max_id
        for name in _OPTIONAL_IDS:
            if len(getattr(event, name)) > max_id:
                return f"{name}: longer than {max_id} characters"
        if event.price_micros < 0:
            return "price_micros: must not be negative"
        currency = event.currency
        if currency and not _CURRENCY_PATTERN.fullmatch(currency):
            return "currency: must be an ISO 4217 code of three upper-case letters"
        if event.price_micros and not currency:
            return "currency: required when price_micros is set"
        attributes = event.attributes
        if attributes:
            if len(attributes) > self._max_attributes:
                return f"attributes: more than {self._max_attributes} entries"
            for key, value in sorted(attributes.items()):  # the smallest bad key is named
                if not key or len(key) > self._max_attribute_key:
                    return (
                        f"attributes: key {key[:32]!r} must have 1 to "
                        f"{self._max_attribute_key} characters"
                    )
                if len(value) > self._max_attribute_value:
                    return (
                        f"attributes[{key}]: value longer than "
                        f"{self._max_attribute_value} characters"
                    )
        return None
