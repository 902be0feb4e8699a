# Sourced by the entry scripts: offline by construction (no model hub is reachable on these machines; without
# HF_HUB_OFFLINE a pretrained lookup hangs in retries before failing).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
