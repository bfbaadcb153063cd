"""Retrain: the embedded tiny model, dataset snapshots, LoRA DPO/KTO training, evaluation and gates."""
