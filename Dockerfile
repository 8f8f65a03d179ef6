# One image for all five services; each compose service runs `python -m services.<name>`.
# The native frame extractor (native/: Rust, boxcars + pyo3) is built into a wheel in a
# builder stage, so the runtime image carries no Rust toolchain.
FROM rust:1.95-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir maturin==1.16.0
COPY native /src/native
RUN /opt/build/bin/maturin build --release --manifest-path /src/native/Cargo.toml \
    --interpreter python3 --compatibility linux --out /wheels

FROM python:3.11-slim
WORKDIR /app
COPY --from=native /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY models ./models
ARG EXTRAS=trainer
RUN pip install --no-cache-dir ".[${EXTRAS}]"
ENV RLIMPACT_DATA_DIR=/data RLIMPACT_METRICS_HOST=0.0.0.0
