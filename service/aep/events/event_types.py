"""The tables of the EventType enum, derived once from its descriptor.

Every module that needs event types by name, by number, the ones an event may
carry or how many numbers there are takes them from here, so a value added to
the proto reaches validation, the stores, the counters and the metrics at once.
"""

from __future__ import annotations

from aep.proto.adevents.v1 import ad_events_pb2 as pb

# Every value, EVENT_TYPE_UNSPECIFIED included: number -> name, name -> number.
EVENT_TYPE_NAMES: dict[int, str] = {
    value.number: value.name for value in pb.EventType.DESCRIPTOR.values
}
EVENT_TYPE_NUMBERS: dict[str, pb.EventType.ValueType] = {
    name: pb.EventType.ValueType(number) for number, name in EVENT_TYPE_NAMES.items()
}

# The values an event may carry (all but EVENT_TYPE_UNSPECIFIED), in number order.
VALID_EVENT_TYPE_NAMES: dict[int, str] = {
    number: name
    for number, name in sorted(EVENT_TYPE_NAMES.items())
    if number != pb.EVENT_TYPE_UNSPECIFIED
}
VALID_EVENT_TYPES: tuple[pb.EventType.ValueType, ...] = tuple(
    EVENT_TYPE_NUMBERS[name] for name in VALID_EVENT_TYPE_NAMES.values()
)

# Short lower-case names of the valid values (`click` for EVENT_TYPE_CLICK): the
# label values of events_received_total{event_type}.
EVENT_TYPE_SHORT_NAMES: dict[int, str] = {
    number: name.removeprefix("EVENT_TYPE_").lower()
    for number, name in VALID_EVENT_TYPE_NAMES.items()
}

# Slots of a list indexed by the EventType number (per-type counters).
EVENT_TYPE_COUNT = max(EVENT_TYPE_NAMES) + 1
