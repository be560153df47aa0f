"""An embedded Milvus standalone server on ports of its own, for the tests and the Milvus benchmark.

The `milvus` package randomises only the proxy's port unless told otherwise, and its embedded etcd
always takes 2379 and 2380: a second server on the same host (another test run, a person's own
Milvus) makes it panic at start. So every port it opens is probed free and written into its
configuration, etcd's through an etcd config file of its own, and all its files live under
`base_dir`.
"""
from __future__ import annotations

from pathlib import Path

from pagekit import free_port  # scripts/ is on the path wherever this module is imported


def etcd_config(path: Path, client: int, peer: int) -> Path:
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    path.write_text(f"name: default\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
                    f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
                    f"initial-cluster: default={peer_url}\n")
    return path


def start_server(base_dir: str | Path, timeout_s: float = 180):
    """Start a Milvus standalone server whose every port is free and whose files are under base_dir;
    returns (server, uri). The caller stops it (server.stop()) when done, whatever happened."""
    from milvus import MilvusServer

    base = Path(base_dir)
    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(str(base))
    ports = [key for key in server.config.configurable_items if key.endswith("_port")]
    for key in ports:
        server.config.set(key, free_port())
    etcd = etcd_config(base / "etcd.yaml", server.config.get("etcd_port"), free_port())
    # The template has no key for etcd's own config file: add it beside the endpoints it already sets.
    server.config.template_text = server.config.template_text.replace(
        "\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)
    server.webservice_port = free_port()  # the health and metrics port; start() probes upward from here
    server.start()
    try:
        server.wait_started(int(timeout_s * 1000))
    except BaseException:
        server.stop()
        raise
    return server, f"http://127.0.0.1:{server.listen_port}"
