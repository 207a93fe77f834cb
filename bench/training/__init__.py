"""Train-time distillation: priming prompts, aligned KD data, the KD loss, the teacher's top-k cache, LoRA training,
and on-policy distillation through TRL (trl_distill.py, the one module that imports TRL)."""
