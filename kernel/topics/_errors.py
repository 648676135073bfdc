"""The errors a topic or a service ends with."""

from __future__ import annotations


class TopicError(Exception):
    """A topic or service that cannot be used: no coordinator, not found in
    time, a record type unlike the subscriber's, a name taken."""


class PublisherLost(TopicError):
    """The publisher of `topic` went away without ending its stream."""

    def __init__(self, topic: str, why: str = "") -> None:
        super().__init__(f"topic {topic!r}: the publisher was lost" + (f" ({why})" if why else "")
                         + "; subscribe with on_lost='wait' to wait for a restarted publisher")
        self.topic = topic
        self.why = why

    def __reduce__(self):
        return type(self), (self.topic, self.why)


class ConnectionLost(TopicError):
    """The connection to the publisher of `topic` broke while the publisher
    still ran (a reset connection, or the subscribing kernel blocked past
    the links' heartbeat), with on_lost="fail": what the publisher sent
    meanwhile is lost to this subscriber, which had handed on part of an
    epoch. (on_lost="wait" reads the publisher again from its next whole
    epoch instead.)"""

    def __init__(self, topic: str, partition: int, why: str = "") -> None:
        super().__init__(f"topic {topic!r} partition {partition}: the connection to the publisher broke"
                         + (f" ({why})" if why else "") + " while the publisher still runs; what it sent "
                         "meanwhile is lost; subscribe with on_lost='wait' to read it again from its next "
                         "whole epoch")
        self.topic = topic
        self.partition = partition
        self.why = why

    def __reduce__(self):
        return type(self), (self.topic, self.partition, self.why)


class SubscriberTooSlow(TopicError):
    """The publisher of `topic` (slow="disconnect") dropped this subscriber:
    it fell more than the publisher's queue behind."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r}: this subscriber was too slow and the publisher "
                         "(slow='disconnect') dropped it")
        self.topic = topic

    def __reduce__(self):
        return type(self), (self.topic,)


class ServiceError(TopicError):
    """A service's handler failed on a request (its error's text), or the
    service could not be reached."""
