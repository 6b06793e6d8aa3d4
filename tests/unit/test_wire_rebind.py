from dcctl import wire


class Echo:
    @wire.expose
    def echo(self, x):
        """Echo."""
        return x


def test_a_stopped_server_frees_its_ipc_path_for_the_next_at_once(tmp_path):
    """Service.stop returns once its ipc:// path is free: a server bound
    there right after never finds it in use (libzmq closes listeners in its
    I/O thread after close() returns; the fleet-view tests that stop and
    serve a fake agent again failed one run in five)."""
    endpoint = f"ipc://{tmp_path}/re.sock"
    for i in range(100):
        svc = wire.Service(Echo(), "rebind", heartbeat_s=1.0)
        svc.bind(endpoint)
        svc.start()
        if i % 10 == 0:
            with wire.connect(endpoint, timeout_s=5) as client:
                assert client.call("echo", i) == i
        svc.stop()


def test_a_stopped_server_leaves_no_descriptor_behind(tmp_path):
    """Each Service has its own ZeroMQ context (an I/O thread, its epoll
    and eventfds): stop terminates it.  Before, 100 services started and
    stopped in one process left 500 descriptors open."""
    import os

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    endpoint = f"ipc://{tmp_path}/fd.sock"
    svc = wire.Service(Echo(), "fds", heartbeat_s=1.0)
    svc.bind(endpoint)
    svc.start()
    svc.stop()
    before = open_fds()
    for i in range(20):
        svc = wire.Service(Echo(), "fds", heartbeat_s=1.0)
        svc.bind(endpoint)
        svc.start()
        with wire.connect(endpoint, timeout_s=5) as client:
            assert client.call("echo", i) == i
        svc.stop()
    assert open_fds() - before < 5
