# The runner image: what the docker executor runs train.py and the trusted evaluation in.
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

# The harness's own dependencies (prepare.py / train.py); torch comes with the base image.
RUN python -m pip install --no-cache-dir "numpy>=1.26" "tokenizers>=0.20" "pyarrow>=18" "requests>=2.31"

# An unprivileged user for experiments; the runner bind-mounts the job dir at its host path.
RUN useradd --create-home --uid 10001 swarm
USER swarm
WORKDIR /home/swarm

# The pristine harness is bind-mounted per job by the runner (never baked from a hypothesis); a copy
# here only serves `docker run swarm-runner python prepare.py` by hand.
COPY --chown=swarm prepare.py train.py /home/swarm/

CMD ["python", "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"]
