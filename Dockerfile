# The swarm image: the services of compose.yaml (swarm ledger / runner / agent), and what the docker
# executor runs train.py and the trusted evaluation in.
#   docker build -t swarm-runner:latest .
#   swarm runner --executor docker --docker-image swarm-runner:latest --gpu 0
# The runner itself runs on the host (it talks to NATS); each experiment gets a fresh container from
# this image with no network, a read-only root, a tmpfs /tmp, the job's work dir bind-mounted and the
# data mounted read-only (see runner/executors/docker.py). Nothing here needs the network at run time.
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

# The whole project (the `swarm` command: ledger, runner, agents) on top of the base image's torch
# (pyproject asks for torch>=2.5, which the base satisfies, so pip adds no second torch).
COPY --chown=root pyproject.toml README.md prepare.py train.py program.md /opt/swarm/
COPY bus /opt/swarm/bus
COPY ledger /opt/swarm/ledger
COPY runner /opt/swarm/runner
COPY agents /opt/swarm/agents
COPY swarmcli /opt/swarm/swarmcli
RUN python -m pip install --no-cache-dir /opt/swarm

# An unprivileged user for services and experiments; the runner bind-mounts each job dir at its host path.
RUN useradd --create-home --uid 10001 swarm
USER swarm
WORKDIR /home/swarm

ENTRYPOINT []
CMD ["swarm", "--help"]
