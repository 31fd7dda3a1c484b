"""A tiny test image for tests that need a real Docker engine (the host's /usr and Python are bind-mounted)."""

from __future__ import annotations

import io
import os
import tarfile

from tests.conftest import skip_or_fail

DOCKER_TEST_IMAGE = "swarm-runner-test:tiny"


def docker_image_or_skip() -> str:
    """An image imported from an empty tar (the usual symlinks and empty dirs); skips without an engine
    (fails in CI)."""
    import docker

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        # docker-py leaks the socket of a failed connect (a ResourceWarning in a later test): look first
        skip_or_fail(f"no Docker engine (no socket at {host})")
    client = None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        if client is not None:
            client.close()  # a client that found no engine still holds its socket
        skip_or_fail(f"no Docker engine ({e})")
        raise AssertionError("unreachable") from e
    try:
        client.images.get(DOCKER_TEST_IMAGE)
    except docker.errors.ImageNotFound:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            for name in ("usr", "tmp", "dev", "proc", "sys", "etc"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        repo, tag = DOCKER_TEST_IMAGE.split(":")
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    client.close()
    return DOCKER_TEST_IMAGE
