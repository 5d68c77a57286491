"""The tf.data service's addresses and defaults (no TensorFlow).

Here so that the trainer's config (`config.training`) and the service
(`sampling.data_service`) validate an address the same way.
"""

import re

DEFAULT_NUM_STREAMS = 8
"""Independent pipeline streams a job offers: the most workers that
contribute to it, restarts included."""

PROCESSING_MODES = ("distributed_epoch", "parallel_epochs")
ROLES = ("dispatcher", "worker", "both")

# A host name, an IPv4 address or a bracketed IPv6 address.
HOST_PATTERN = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+"
# [scheme://]host[:port]; the scheme is parsed so that a wrong one (the
# tf.data service speaks gRPC only) gets its own message.
_ADDRESS = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?P<host>%s)(?::(?P<port>[0-9]+))?$" % HOST_PATTERN)


def parse_address(address, flag, require_scheme):
    """Returns (host, port) of "[grpc://]host:port" or raises naming `flag`."""
    example = "grpc://dispatcher-host:5050"
    if not require_scheme:
        example = "dispatcher-host:5050"
    if not isinstance(address, str) or not address.strip():
        raise ValueError("--%s: expected %s, got %r" %
                         (flag, example, address))
    match = _ADDRESS.match(address.strip())
    if not match:
        raise ValueError("--%s: %r is not an address like %s" %
                         (flag, address, example))
    scheme = match.group("scheme")
    if scheme is None and require_scheme:
        raise ValueError("--%s: %r has no scheme; expected %s" %
                         (flag, address, example))
    if scheme is not None and scheme != "grpc":
        raise ValueError("--%s: %r: the tf.data service speaks grpc://, not "
                         "%s://" % (flag, address, scheme))
    port = match.group("port")
    if port is None or not 0 < int(port) < 65536:
        raise ValueError("--%s: %r needs a port in 1..65535, e.g. %s" %
                         (flag, address, example))
    return match.group("host"), int(port)


def parse_service_address(address):
    """Validates a dispatcher address given to the trainer.

    Args:
      address: "grpc://host:port" (host a name, IPv4 or [IPv6] address).

    Returns:
      The address, stripped of surrounding spaces.

    Raises:
      ValueError: naming --tf_data_service when the address is malformed.
    """
    host, port = parse_address(address, "tf_data_service",
                                require_scheme=True)
    return "grpc://%s:%d" % (host, port)
