"""Topics between jobs (issue 18, after Strymon's publish-subscribe): a
running job publishes a stream as a named topic (`stream.publish`), other
jobs subscribe to it (`flow.subscribe`) and see its records, event time and
watermarks from the next whole epoch on; a job serves requests under a
name (`flow.serve`) that any job or app calls (`kernel.services`).

Topics are found through the coordinator's catalog (`kernel.system`), by
its request protocol (`_directory.py`); records travel publisher ->
subscriber on websockets authenticated as the cluster links are
(`kernel.net._links`), as the codec's batches (`kernel.net._codec`).

Layer: above `kernel.net` and the operator protocol
(`kernel.dataflow._operator`); the fluent API (`kernel.dataflow._api`)
reaches it lazily; it imports neither `kernel.operators` nor
`kernel.system`.
"""

from kernel.topics._errors import ConnectionLost, PublisherLost, ServiceError, SubscriberTooSlow, TopicError

__all__ = ["ConnectionLost", "PublisherLost", "ServiceError", "SubscriberTooSlow", "TopicError"]
