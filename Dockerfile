# The Imagine GPU worker: `imagine worker` with the model's weights baked in, for any host that runs a
# container with a GPU and an HTTP port (Cloud Run GPU, RunPod, Modal, Fly, a GPU box).
#
#   docker build -t imagine-worker .                                  # IMAGINE_MODEL's weights baked in
#   docker build --build-arg IMAGINE_MODEL=tiny -t imagine-worker .   # the offline test model, no download
#   docker run --gpus all -p 8001:8001 -e IMAGINE_BACKEND_API_KEY=s3cret imagine-worker
#
# The key is required: without IMAGINE_BACKEND_API_KEY the worker listens on loopback only and
# refuses the CMD's 0.0.0.0 (exit 2), since an open worker lets anyone spend the GPU.
# At run time nothing is fetched (HF_HUB_OFFLINE=1): the container starts, loads the baked weights
# straight onto the GPU and says READY on /health-check. It listens on $PORT (default 8001).
# The project commands below (`imagine download-model`, `python -m backend.healthcheck`, the CMD)
# are run by tests/test_dockerfile.py outside Docker, so a broken one fails CI, not a deploy.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG IMAGINE_MODEL=CompVis/stable-diffusion-v1-4
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/opt/models/huggingface \
    IMAGINE_CACHE_DIR=/opt/models/imagine \
    IMAGINE_MODEL=${IMAGINE_MODEL} \
    PORT=8001

# 1. Python (Ubuntu 24.04's 3.12), and the user the worker runs as.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin imagine \
    && python3 -m venv /opt/venv

# 2. PyTorch first, in its own layer (the largest and least often changed); PyPI's Linux build
#    carries the CUDA 12 libraries it needs.
RUN pip install "torch>=2.4"

# 3. The project with the backend extra.
WORKDIR /app
COPY . /app
RUN pip install "/app[backend]"

# 4. The weights, fetched now and baked into the image; the compile cache folder is the worker's.
RUN imagine download-model "${IMAGINE_MODEL}" \
    && mkdir -p /opt/models/imagine/torch-compile \
    && chown -R imagine:imagine /opt/models/imagine/torch-compile

# 5. Offline from here on, as the unprivileged user.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER imagine
EXPOSE 8001

# STARTING (loading) counts as unhealthy only after the start period; READY and BUSY are healthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-m", "backend.healthcheck"]

# exec: the worker replaces the shell as PID 1, so SIGTERM reaches it (it finishes what is running).
CMD ["sh", "-c", "exec imagine worker --host 0.0.0.0 --port \"${PORT:-8001}\""]
