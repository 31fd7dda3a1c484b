# The swarm image: the services of compose.yaml and deploy/k8s (swarm ledger / runner / agent), and what the
# docker executor runs train.py and the trusted evaluation in.
#   docker build -t research-swarm:latest .
#   swarm deploy compose --gpus 8 --out compose.yaml     # one runner per GPU (see compose.yaml's header)
# Runners in compose/Kubernetes run experiments in the namespace sandbox inside their container (root,
# CAP_SYS_ADMIN; train.py drops to nobody): it needs util-linux's unshare, setpriv and pivot_root, checked
# below. With the docker executor each experiment gets a fresh container from this image with no network, a
# read-only root, a tmpfs /tmp, the job's work dir bind-mounted and the data mounted read-only (see
# runner/executors/docker.py). Nothing here needs the network at run time.
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

RUN for t in unshare setpriv pivot_root mount; do \
      command -v "$t" >/dev/null || { echo "the namespace sandbox needs $t (util-linux, mount)"; exit 1; }; \
    done

# The whole project (the `swarm` command: ledger, runner, agents; prepare.py and train.py) on top of the base
# image's torch (pyproject asks for torch>=2.5, which the base satisfies, so pip adds no second torch).
# .dockerignore keeps local environments, state and credentials out.
COPY . /opt/swarm
RUN python -m pip install --no-cache-dir /opt/swarm

# An unprivileged user for the ledger and agents (runners run as root: see above); the volumes' mount points
# exist here, owned by it, so named volumes start writable for it.
RUN useradd --create-home --uid 10001 swarm && mkdir -p /ledger /state /cache && chown swarm:swarm /ledger /state /cache
USER swarm
WORKDIR /home/swarm

ENTRYPOINT []
CMD ["swarm", "--help"]
