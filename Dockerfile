# One image for all five services; each compose service runs `python -m services.<name>`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY models ./models
ARG EXTRAS=trainer
RUN pip install --no-cache-dir ".[${EXTRAS}]"
ENV RLIMPACT_DATA_DIR=/data RLIMPACT_METRICS_HOST=0.0.0.0
