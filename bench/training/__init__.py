"""Train-time distillation: priming prompts, aligned KD data, the KD loss, the teacher's top-k cache, LoRA training."""
