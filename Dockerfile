# syntax=docker/dockerfile:1
# stream-monitor worker image: CUDA runtime (torch's cu124 wheels bring their own CUDA/cuDNN
# libraries; the base image supplies the driver hooks of the NVIDIA container toolkit).
#   docker build -t stream-monitor .
#   export STREAM_MONITOR_API_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
#   docker run --gpus all -p 127.0.0.1:8080:8080 -v "$PWD/weights:/weights:ro" -e STREAM_MONITOR_API_TOKEN stream-monitor
# Weights are never baked in: mount them read-only at /weights (weights/README.md says where
# they come from). The API listens on 0.0.0.0:8080, so the monitor refuses to start without a
# strong STREAM_MONITOR_API_TOKEN; it answers the Host names of api.allowed_hosts only
# (deploy/config.container.yaml). SIGTERM stops streams and flushes alerts.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.10 (Ubuntu 22.04's); PyAV and opencv-headless wheels bundle their own FFmpeg.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/stream-monitor
# CUDA builds of torch first (PyPI's default wheels would also work, but pin the CUDA line).
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.4" "torchvision>=0.19"
COPY pyproject.toml README.md ./
COPY models ./models
COPY stream_monitor ./stream_monitor
# As scripts/bootstrap.sh: the project, then facenet-pytorch and insightface without their
# conflicting pins (their real run-time dependencies are in pyproject.toml).
RUN pip install . \
 && pip install --no-deps "facenet-pytorch==2.5.3" "insightface==2.1" \
 && python -c "import stream_monitor.cli, facenet_pytorch, insightface"

# stream_monitor_build_info's "commit" (an image has no .git):
#   docker build --build-arg STREAM_MONITOR_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG STREAM_MONITOR_COMMIT=unknown
ENV STREAM_MONITOR_COMMIT=${STREAM_MONITOR_COMMIT}

# The container's default configuration (compose and Kubernetes mount their own over it).
COPY deploy/config.container.yaml /etc/stream-monitor/config.yaml

# Non-root user; /weights is an empty read-only mount point owned by root. /media is the
# user's: a new named volume mounted there (compose's cpu profile writes its sample video
# into one) takes the ownership of the directory it covers.
RUN groupadd --system --gid 10001 monitor \
 && useradd --system --uid 10001 --gid monitor --home-dir /home/monitor --create-home --shell /usr/sbin/nologin monitor \
 && mkdir -p /weights /media && chmod 0555 /weights && chown monitor:monitor /media
VOLUME ["/weights"]
USER 10001:10001
WORKDIR /home/monitor

# 8080: the API (also /metrics); 9108: the separate metrics listener (metrics.port).
EXPOSE 8080 9108
# /healthcheck is open even when api.token is set; python is the only client in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthcheck', timeout=4).status == 200 else 1)"]
# exec form: the monitor is PID 1 and gets SIGTERM itself (its handler stops streams and
# drains the alert outbox); give it time with `docker stop -t 60` / stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-monitor", "serve"]
CMD ["--config", "/etc/stream-monitor/config.yaml", "--weights-dir", "/weights"]
