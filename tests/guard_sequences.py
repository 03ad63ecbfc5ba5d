"""Feeding scripted evaluations to a guard, straight and across a save/load of its state."""

import json

from jaxguard.guards import Evaluation


def feed(guard, sequence, start=0):
    """Feeds `[{metric: value}, ...]` as evaluations from epoch `start`; returns the events."""
    events = []
    for offset, metrics in enumerate(sequence):
        event = guard.on_evaluation(Evaluation(start + offset, metrics))
        if event is not None:
            events.append(event)
    return events


def resumed_events(make, sequence, cut):
    """Events of a guard fed `sequence` with a save/load through JSON at index `cut`."""
    first = make()
    head = feed(first, sequence[:cut])
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    second = make()
    second.load_state_dict(saved)
    return head + feed(second, sequence[cut:], start=cut)


def messages(events):
    return [(event.guard, event.level, event.epoch, event.message) for event in events]
