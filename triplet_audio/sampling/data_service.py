"""Remote input pipelines: serving the triplet stream from a tf.data service.

The triplet pipeline is CPU-heavy (decode, shuffle, sample: see
benchmarks/bench_pipeline.py) and a GPU or TPU trainer can outrun the cores of
its own host. The tf.data service moves that work to a pool of CPU machines:
a dispatcher (`start_dispatcher`, `bin/data_service --role=dispatcher`)
coordinates workers (`start_worker`, `bin/data_service --role=worker`); the
trainer registers its pipeline with the dispatcher and reads finished batches
over gRPC (`maybe_distribute`, `bin/train --tf_data_service=grpc://host:port`).

Distinct streams, and why the processing mode alone does not give them:

Every service worker runs its own copy of the registered pipeline graph. The
pipeline is seeded (one seed, one sequence of batches: see pipeline.py), so
its seeds are constants of that graph, identical on every worker.

* `parallel_epochs` (ShardingPolicy.OFF): each worker runs the whole pipeline,
  so with a seeded pipeline every worker yields the *same* batches. Measured
  with two workers: 200 served batches held 100 distinct ones.
* `distributed_epoch` (ShardingPolicy.DYNAMIC) over the shard files: the
  dispatcher hands each file to one worker per repetition, but a worker's
  file shuffle buffer holds every shard, so one worker tends to take a whole
  repetition, and a worker's k-th repetition replays the same seeded shuffles
  and sampler draws over the same ordered files as the other's. Measured with
  two workers (noise and mixing samplers, 4, 16 and 64 shards): 400 served
  batches held 200-255 distinct ones.

So each worker needs a seed of its own, and the pipeline's seeds are Python
ints fixed when the graph is built. `independent_streams` builds the pipeline
once per stream seed (`stream_seed(seed, i)`, i < num_streams) and puts a
`Dataset.range(num_streams)` in front of them as the only splittable source:
in `distributed_epoch` mode the dispatcher hands each stream index to exactly
one worker (at most once), and that worker runs stream i, an ordinary seeded
pipeline, for as long as the job lasts. Two workers therefore never serve the
same stream; stream 0 uses `seed` itself, so a single worker serves exactly
the batches a local run would. Costs and limits:

* the pipeline graph is built num_streams times on the trainer when the job
  starts (shard checks included; about 0.6 s per copy of the joint sampler on
  a small corpus), and the registered graph grows with it;
* at most num_streams workers contribute; a worker started after every index
  was handed out (for instance a replacement for a preempted worker, whose
  stream is lost with it) stays idle, so leave headroom for restarts;
* each worker reads the whole corpus (each stream is a full pipeline), so
  workers need the corpus at the same path (a shared or network file system);
* which worker serves which stream, and how the streams interleave at the
  trainer, is not deterministic; each stream on its own is.

A pipeline that took its seed as a tensor could instead mix a per-worker
random value into one graph, lifting the first two limits.
"""

import re
import signal
import socket
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio.config import service as service_config

# Addresses and defaults live in the config home (no TensorFlow), where the
# trainer's config validates them too.
DEFAULT_NUM_STREAMS = service_config.DEFAULT_NUM_STREAMS
PROCESSING_MODES = service_config.PROCESSING_MODES
ROLES = service_config.ROLES
parse_service_address = service_config.parse_service_address
_parse_address = service_config.parse_address


def stream_seed(seed, index):
    """Seed of stream `index` of a job whose pipeline seed is `seed`.

    Stream 0 uses `seed` itself, so a single worker reproduces a local run;
    the others are independent children of it (`SeedSequence` spawn keys).

    Args:
      seed: int, the pipeline seed of the job.
      index: int >= 0, the stream index.

    Returns:
      int in [0, 2**63).
    """
    if index == 0:
        return int(seed)
    state = np.random.SeedSequence(
        int(seed) % 2 ** 64, spawn_key=(int(index),)).generate_state(
            1, np.uint64)
    return int(state[0] >> np.uint64(1))


def independent_streams(make_dataset, seed, num_streams=DEFAULT_NUM_STREAMS):
    """A dataset whose only splittable source is the stream index.

    Iterated locally it is stream 0, i.e. `make_dataset(seed)`. Served in
    `distributed_epoch` mode, each worker receives its own stream index and
    runs `make_dataset(stream_seed(seed, i))` (see the module docstring).

    Args:
      make_dataset: function of an int seed returning a tf.data.Dataset; every
        seed must give the same element_spec.
      seed: int, the seed of stream 0.
      num_streams: int >= 1, streams (and so workers) the job can use.

    Returns:
      tf.data.Dataset with make_dataset's element_spec and options.

    Raises:
      ValueError: on num_streams < 1 or streams with different element specs.
    """
    if isinstance(num_streams, bool) or int(num_streams) != num_streams or (
            num_streams < 1):
        raise ValueError("--tf_data_service_streams: must be an integer >= 1, "
                         "got %r" % (num_streams,))
    streams = [make_dataset(stream_seed(seed, i))
               for i in range(int(num_streams))]
    spec = streams[0].element_spec
    for i, stream in enumerate(streams[1:], 1):
        if stream.element_spec != spec:
            raise ValueError("stream %d has element_spec %s, stream 0 %s" %
                             (i, stream.element_spec, spec))

    def pick(index):
        # Only the chosen branch is ever iterated, so a worker holds one
        # pipeline (its buffers and threads), not num_streams of them.
        return tf.switch_case(tf.cast(index, tf.int32),
                              [lambda s=s: s for s in streams])

    # The captured pipelines live inside the function, where the dispatcher
    # does not look for split sources: the range is the job's only one.
    ds = tf.data.Dataset.range(len(streams)).flat_map(pick)
    return ds.with_options(streams[0].options())


def distribute(dataset, service, job_name=None,
               processing_mode="distributed_epoch"):
    """Moves `dataset`'s processing to the tf.data service at `service`.

    A building block: every worker runs the same graph, so a seeded pipeline
    must go through `independent_streams` (or `maybe_distribute`) to avoid
    serving the same batches from every worker.

    Args:
      dataset: tf.data.Dataset; its files must be readable by the workers at
        the same paths.
      service: dispatcher address, "grpc://host:port".
      job_name: optional name; consumers that use the same name and dataset
        share one job (each element goes to one of them). None gives each
        iterator its own job.
      processing_mode: "distributed_epoch" (the dispatcher splits the
        dataset's splittable source among workers) or "parallel_epochs" (every
        worker produces the whole dataset).

    Returns:
      tf.data.Dataset of the same elements, produced by the service.

    Raises:
      ValueError: naming --tf_data_service on a malformed address, or on an
        unknown processing mode or empty job name.
    """
    service = parse_service_address(service)
    if processing_mode not in PROCESSING_MODES:
        raise ValueError("processing_mode must be one of %s, got %r" %
                         (", ".join(PROCESSING_MODES), processing_mode))
    if job_name is not None and (not isinstance(job_name, str) or
                                 not job_name):
        raise ValueError("job_name must be a non-empty string or None, got %r"
                         % (job_name,))
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=processing_mode, service=service, job_name=job_name))


def maybe_distribute(make_dataset, service_address, seed=0, job_name=None,
                     num_streams=DEFAULT_NUM_STREAMS):
    """The training input, local or served by the tf.data service.

    Args:
      make_dataset: function of an int seed returning the input pipeline
        (e.g. a closure over `pipeline.make_triplet_dataset`).
      service_address: "grpc://host:port" of a dispatcher, or None / "" for a
        local pipeline.
      seed: int pipeline seed.
      job_name: optional shared job name (see `distribute`).
      num_streams: independent streams offered to the workers (see
        `independent_streams`); ignored without a service.

    Returns:
      `make_dataset(seed)` when service_address is None, otherwise the served
      `independent_streams` of it.

    Raises:
      ValueError: naming --tf_data_service on a malformed address, or
        --tf_data_service_streams when num_streams < 1.
    """
    if not service_address:
        return make_dataset(seed)
    service = parse_service_address(service_address)
    streams = independent_streams(make_dataset, seed, num_streams)
    logging.info("input pipeline served by the tf.data service at %s: %d "
                 "seeded streams, one per worker", service, num_streams)
    return distribute(streams, service, job_name=job_name,
                      processing_mode="distributed_epoch")


# ------------------------------------------------------------------ servers
def start_dispatcher(port=0, work_dir=None, fault_tolerant=False):
    """Starts an in-process tf.data service dispatcher.

    Args:
      port: port to listen on; 0 picks a free one (see `server_port`).
      work_dir: directory for the dispatcher's state (journal), needed to
        recover from a restart.
      fault_tolerant: journal every state change to work_dir before
        answering, so a restarted dispatcher resumes its jobs.

    Returns:
      The started `tf.data.experimental.service.DispatchServer`.

    Raises:
      ValueError: naming --work_dir when fault_tolerant has no work_dir, or
        --port when it is out of range.
    """
    _check_port(port, "port")
    if fault_tolerant and not work_dir:
        raise ValueError("--work_dir: required with --fault_tolerant (the "
                         "dispatcher journals its state there)")
    config = tf.data.experimental.service.DispatcherConfig(
        port=int(port), work_dir=work_dir or None,
        fault_tolerant_mode=bool(fault_tolerant))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address, port=0, worker_host=None):
    """Starts an in-process tf.data service worker.

    Args:
      dispatcher_address: "host:port" (or "grpc://host:port") of the
        dispatcher.
      port: port to listen on; 0 picks a free one.
      worker_host: host name the dispatcher gives to clients to reach this
        worker; None keeps TensorFlow's default, "localhost", which only
        clients on this machine can reach.

    Returns:
      The started `tf.data.experimental.service.WorkerServer`.

    Raises:
      ValueError: naming --dispatcher on a malformed address, or --port /
        --worker_host on bad values.
    """
    host, dispatcher_port = _parse_address(dispatcher_address, "dispatcher",
                                           require_scheme=False)
    _check_port(port, "port")
    worker_host = worker_host or "localhost"
    if not re.match(r"^(?:%s)$" % service_config.HOST_PATTERN, worker_host):
        raise ValueError("--worker_host: %r is not a host name or address" %
                         worker_host)
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address="%s:%d" % (host, dispatcher_port),
        # %port% / %dts_port% are replaced by the bound ports.
        worker_address="%s:%%port%%" % worker_host,
        data_transfer_address="%s:%%dts_port%%" % worker_host,
        port=int(port))
    return tf.data.experimental.service.WorkerServer(config)


def server_port(server):
    """The port a started DispatchServer or WorkerServer listens on."""
    if isinstance(server, tf.data.experimental.service.DispatchServer):
        return int(server.target.rsplit(":", 1)[1])
    # WorkerServer has no public accessor for the port it bound (port 0).
    return int(server._address.rsplit(":", 1)[1])  # pylint: disable=protected-access


def _check_port(port, flag):
    if isinstance(port, bool) or int(port) != port or not 0 <= port < 65536:
        raise ValueError("--%s: must be an integer in 0..65535, got %r" %
                         (flag, port))


def _wait_for_signal():
    """Blocks until SIGINT or SIGTERM; returns the signal number."""
    received = []
    stop = threading.Event()

    def handle(signum, frame):
        del frame
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A timed wait returns to the interpreter regularly, so the handlers
        # run promptly whatever the platform's lock semantics.
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]


def serve(role, port=0, dispatcher_address=None, worker_port=0,
          worker_host=None, work_dir=None, fault_tolerant=False,
          wait=_wait_for_signal):
    """Runs a dispatcher and/or a worker until `wait` returns.

    Logs the address clients (the dispatcher) or the dispatcher (a worker)
    use to reach each server.

    Args:
      role: "dispatcher", "worker" or "both" (a dispatcher and one worker in
        this process).
      port: port of the dispatcher (dispatcher, both) or of the worker
        (worker); 0 picks a free one.
      dispatcher_address: "host:port" of the dispatcher, for role "worker".
      worker_port: port of the worker with role "both".
      worker_host: host name clients use to reach the worker (default
        "localhost"; bin/data_service passes this machine's name).
      work_dir: dispatcher state directory.
      fault_tolerant: journal the dispatcher's state (needs work_dir).
      wait: function that blocks while the servers should run (default:
        until SIGINT or SIGTERM).

    Raises:
      ValueError: naming the flag on bad arguments.
    """
    if role not in ROLES:
        raise ValueError("--role: must be one of %s, got %r" %
                         (", ".join(ROLES), role))
    if role == "worker" and not dispatcher_address:
        raise ValueError("--dispatcher: required with --role=worker")
    public_host = socket.gethostname()
    servers = []
    try:
        if role in ("dispatcher", "both"):
            dispatcher = start_dispatcher(port, work_dir, fault_tolerant)
            servers.append(dispatcher)
            bound = server_port(dispatcher)
            logging.info(
                "tf.data service dispatcher listening on grpc://%s:%d "
                "(trainers: --tf_data_service=grpc://%s:%d; workers: "
                "--dispatcher=%s:%d)%s", public_host, bound, public_host,
                bound, public_host, bound,
                " with its journal in %s" % work_dir if fault_tolerant else "")
            dispatcher_address = "localhost:%d" % bound
        if role in ("worker", "both"):
            worker = start_worker(dispatcher_address,
                                  port if role == "worker" else worker_port,
                                  worker_host)
            servers.append(worker)
            logging.info("tf.data service worker listening on %s:%d, "
                         "registered with dispatcher %s",
                         worker_host or "localhost", server_port(worker),
                         dispatcher_address)
        signum = wait()
        if signum is not None:
            logging.info("signal %d: stopping", signum)
    finally:
        # Workers first: a dispatcher that disappears first leaves them
        # retrying their heartbeats.
        for server in reversed(servers):
            server.stop()
            server.join()
